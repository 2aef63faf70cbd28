"""curate's selection without a judge: hand-made scored tables, the streaming path against the
in-memory reference, dedup/decontamination counts, preference pairs with CogPO's beta, the report."""

from __future__ import annotations

import collections
import json
import os
import random

import pytest

from distilflow.components.curate.config import PRESETS, SelectConfig
from distilflow.components.curate.report import render
from distilflow.components.curate.select import (
    FILTERS,
    Contamination,
    minhash,
    normalise_text,
    select_in_memory,
    select_stream,
)
from distilflow.errors import ConfigError, RecordError
from distilflow.records import PreferencePair, Problem, Scored, SftExample, read_jsonl, write_jsonl

pytestmark = pytest.mark.unit


def scored(pid, sample, rv, cd, logic=0.9, correct=True, domain="math", problem=None) -> Scored:
    return Scored(
        id=f"{pid}/t/{sample}",
        problem_id=pid,
        problem=problem or f"Problem {pid}: how many apples are in basket {pid}?",
        reference=None if correct is None else "1",
        domain=domain,
        teacher="t",
        sample=sample,
        reasoning=f"reasoning {pid} {sample} " * 3,
        content=f"answer {sample}",
        tokens=5,
        finish_reason="stop",
        rv=rv,
        cd=cd,
        logic=logic,
        correct=correct,
        judge="j",
        kept=False,
    )


def read_shards(paths: list[str], model) -> list:
    return [row for path in paths for row in read_jsonl(path, model, allow_empty=True)]


def stream(rows: list[Scored], c: SelectConfig, tmp_path, buckets: int = 3, shard_rows: int | None = None):
    lines = [(f"t:{i}", r.model_dump_json()) for i, r in enumerate(random.Random(7).sample(rows, len(rows)))]
    files, stats = select_stream(
        lines, c, str(tmp_path / "work"), size_hint=0, buckets=buckets, shard_rows=shard_rows
    )
    return (
        read_shards(files.scored, Scored),
        read_shards(files.sft, SftExample),
        read_shards(files.preference, PreferencePair),
        stats,
    )


def verdicts(rows: list[Scored]) -> dict[str, str | None]:
    assert all(r.kept == (r.dropped_by is None) for r in rows)
    return {r.id: r.dropped_by for r in rows}


# (problem, sample, rv, cd, logic, correct, domain) -> the filter that must drop it (None: kept)
TABLE = [
    (("p1", 0, 2.5, 1, 0.9, True, "math"), None),  # easy bin, target 2: distance 0.5
    (("p1", 1, 5.0, 1, 0.9, True, "math"), "per_problem"),  # distance 3: second of p1, k=1
    (("p2", 0, 8.5, 2, 0.9, True, "math"), "rv_range"),  # rv_max 8
    (("p2", 1, 1.0, 2, 0.2, True, "math"), "logic"),
    (("p3", 0, 4.5, 4, 0.9, False, "math"), "incorrect"),
    (("p3", 1, 4.0, 4, 0.9, True, "math"), "per_bin"),  # medium bin (target 4.5), distance 0.5, cap 1
    (("p4", 0, 4.6, 5, 0.9, True, "math"), None),  # distance 0.1 wins the medium bin
    (("p5", 0, 7.0, 7, 0.9, True, "code"), None),  # hard bin, matched target 7.5: distance 0.5
    (("p5", 1, 7.5, 8, 0.9, None, "code"), "unverified"),
    (("p6", 0, 8.0, 7, 0.9, True, "code"), "domain_quota"),  # distance 0.5 ties p5/t/0: id decides
    (("p7", 0, 3.0, 9, 0.9, True, "math"), "cd_range"),  # cd_max 8.5
    (("p8", 0, 2.0, 2, 0.5, True, "math"), None),  # logic exactly min_logic: kept (>=)
]
TABLE_CONFIG = {
    "cd_bins": [0, 3, 6, 9],
    "rv_targets": [2, "medium", "matched"],
    "per_problem": 1,
    "per_bin": [5, 1, 5],
    "domain_quotas": {"code": 1},
    "rv_max": 8,
    "cd_max": 8.5,
    "keep_unverified": False,
}


def test_selection_keeps_exactly_the_rows_the_rules_say(tmp_path):
    rows = [scored(*args) for args, _ in TABLE]
    expected = {f"{args[0]}/t/{args[1]}": reason for args, reason in TABLE}
    c = SelectConfig.model_validate(TABLE_CONFIG)
    reference = select_in_memory(rows, c)
    assert verdicts(reference.scored) == expected
    got, sft, _, stats = stream(rows, c, tmp_path)
    assert verdicts(got) == expected
    assert {e.id for e in sft} == {"p1/t/0", "p4/t/0", "p5/t/0", "p8/t/0"} and stats.kept == 4
    counts = collections.Counter(r for r in expected.values() if r)
    assert stats.dropped == {f: counts.get(f, 0) for f in FILTERS}
    # Without caps, the per-bin and domain losers are kept.
    loose = SelectConfig.model_validate(TABLE_CONFIG | {"per_bin": None, "domain_quotas": None})
    assert {r.id for r in select_in_memory(rows, loose).scored if r.kept} == {
        "p1/t/0",
        "p3/t/1",
        "p4/t/0",
        "p5/t/0",
        "p6/t/0",
        "p8/t/0",
    }


def test_curriculum_order_and_stage(tmp_path):
    rows = [scored(f"q{i}", 0, rv=4, cd=cd) for i, cd in enumerate([8, 1, 5, 2, 7, 4, 0.5])]
    c = SelectConfig.model_validate({"preset": "7b", "curriculum": True})
    _, sft, _, stats = stream(rows, c, tmp_path)
    assert [e.curriculum_stage for e in sft] == [0, 0, 0, 1, 1, 2, 2]
    assert all(e.curriculum_stage == (0 if e.cd < 3 else 1 if e.cd < 6 else 2) for e in sft)
    assert stats.stages == {0: 3, 1: 2, 2: 2}
    plain = SelectConfig.model_validate({"preset": "7b"})
    assert all(e.curriculum_stage is None for e in stream(rows, plain, tmp_path / "plain")[1])


def test_presets_fill_only_unset_fields():
    c = SelectConfig.model_validate({"preset": "1.5b", "per_problem": 3})
    assert c.cd_bins == PRESETS["1.5b"]["cd_bins"] and c.rv_targets == PRESETS["1.5b"]["rv_targets"]
    assert c.per_problem == 3
    for name, preset in PRESETS.items():
        assert SelectConfig.model_validate({"preset": name}).cd_bins == preset["cd_bins"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"curriculum": True}, "curriculum=true needs cd_bins"),
        ({"cd_bins": [0, 3, 9], "rv_targets": [1, 2, 3]}, "rv_targets has 3 values but cd_bins"),
        ({"cd_bins": [0, 5, 4]}, "strictly ascending"),
        ({"rv_targets": [12]}, "outside the RV scale"),
    ],
)
def test_selection_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        SelectConfig.from_dict(fields)


LONG = (
    "A train leaves the station at nine in the morning travelling at sixty miles per hour while a "
    "second train leaves the same station two hours later at eighty miles per hour on the same track"
)


def test_dedup_and_decontamination_counts(tmp_path):
    evals = str(tmp_path / "eval.jsonl")
    write_jsonl(
        evals,
        [
            Problem(
                id="e1", problem="Let x be a real number such that x squared plus four x plus four is zero."
            ),
            Problem(id="e2", problem="Compute 7 times 8."),
        ],
    )
    table = {
        "d1": ("What is the sum of 2 and 3?", 2),
        "d2": ("  what is the SUM of 2 and 3 ", 1),  # exact duplicate of d1 once normalised
        "n1": (LONG + " when does the second train catch up?", 1),
        "n2": (LONG + " when does the second train catch up exactly?", 1),  # near duplicate of n1
        "u1": ("A train leaves at noon; how far has it gone by three at forty miles per hour?", 1),
        "c1": ("Let x be a real number such that x squared plus four x plus four is zero. Find x.", 2),
        "c2": ("compute 7 times 8", 1),  # shorter than n words: matched as a whole
        "ok": ("How many primes are below 20?", 1),
    }
    rows = [scored(pid, s, 4, 4, problem=text) for pid, (text, n) in table.items() for s in range(n)]
    c = SelectConfig.model_validate(
        {"dedup": "near", "near_dup_threshold": 0.7, "decontaminate_uris": [evals]}
    )
    got, _, pairs, stats = stream(rows, c, tmp_path)
    by_problem = {r.problem_id: r.dropped_by for r in got}
    assert stats.dropped["contaminated"] == 3 and {by_problem["c1"], by_problem["c2"]} == {"contaminated"}
    assert stats.dropped["duplicate"] == 1 and by_problem["d2"] == "duplicate" and by_problem["d1"] is None
    assert stats.dropped["near_duplicate"] == 1 and sorted([by_problem["n1"], by_problem["n2"]], key=str) == [
        None,
        "near_duplicate",
    ]
    assert by_problem["u1"] is None and by_problem["ok"] is None and stats.contamination_problems == 2
    assert verdicts(got) == verdicts(select_in_memory(rows, c).scored)
    assert {p.id for p in pairs} == set()  # every problem's traces tie: no pair
    exact = stream(rows, SelectConfig.model_validate({"dedup": "exact"}), tmp_path / "exact")[3]
    assert (
        exact.dropped["near_duplicate"] == 0
        and exact.dropped["duplicate"] == 1
        and exact.kept == len(rows) - 1
    )
    assert stream(rows, SelectConfig(dedup="none"), tmp_path / "none")[3].kept == len(rows)


def test_minhash_estimates_jaccard():
    a, b = normalise_text(LONG + " x").split(), normalise_text(LONG + " y").split()
    same = sum(x == y for x, y in zip(minhash(a), minhash(b), strict=True)) / 64
    other = sum(
        x == y for x, y in zip(minhash(a), minhash(["one", "two", "three", "four", "five"]), strict=True)
    )
    assert same > 0.7 and other <= 2


def test_contamination_reports_bad_eval_file(tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"id": "e1"}\n')
    with pytest.raises(RecordError, match="eval.jsonl"):
        Contamination([str(bad)], 8)


def test_preference_pairs_by_correctness_then_fit_with_beta(tmp_path):
    rows = [
        scored("a", 0, rv=1, cd=5, correct=True),  # far from the target but right: chosen
        scored("a", 1, rv=5, cd=5, correct=False),  # perfect fit, wrong answer: rejected
        scored("b", 0, rv=4, cd=4),  # both right: best fit (target 4) chosen
        scored("b", 1, rv=8, cd=4),  # worst fit rejected
        scored("b", 2, rv=6, cd=4),
        scored("c", 0, rv=3, cd=3, correct=True),
        scored("c", 1, rv=3, cd=3, correct=None),  # right beats unverified
        scored("d", 0, rv=3, cd=3),
        scored("d", 1, rv=3, cd=3),  # indistinguishable: no pair
    ]
    c = SelectConfig.model_validate({"pair_beta": 0.1, "pair_beta_scale": 1.0})
    pairs = {p.id: p for p in stream(rows, c, tmp_path)[2]}
    assert set(pairs) == {"a/pair", "b/pair", "c/pair"}
    assert (pairs["a/pair"].chosen[0].content, pairs["a/pair"].rejected[0].content) == (
        "answer 0",
        "answer 1",
    )
    assert pairs["a/pair"].beta == pytest.approx(0.2)  # correctness gap 1
    assert (pairs["b/pair"].chosen[0].content, pairs["b/pair"].rejected[0].content) == (
        "answer 0",
        "answer 1",
    )
    assert pairs["b/pair"].beta == pytest.approx(0.1 * (1 + 4 / 9), abs=1e-6)  # fit gap 4 of 9
    assert pairs["c/pair"].beta == pytest.approx(0.15)  # one correctness step
    assert pairs["a/pair"].prompt[-1].content == rows[0].problem
    # beta = pair_beta * (1 + pair_beta_scale * gap): the scale multiplies each pair's gap
    c2 = SelectConfig.model_validate({"pair_beta": 0.1, "pair_beta_scale": 2.0})
    scaled = {p.id: p.beta for p in stream(rows, c2, tmp_path / "scaled")[2]}
    assert scaled == pytest.approx({"a/pair": 0.3, "b/pair": 0.1 * (1 + 2 * 4 / 9), "c/pair": 0.2}, abs=1e-6)
    plain = {p.id: p.beta for p in select_in_memory(rows, SelectConfig()).pairs}
    assert plain == {"a/pair": None, "b/pair": None, "c/pair": None}


def test_stream_matches_in_memory_reference(tmp_path):
    rng = random.Random(0)
    texts = [
        f"Problem number {i} asks about {rng.choice(['apples', 'trains', 'primes'])} and x{i}"
        for i in range(60)
    ]
    texts[10] = texts[3]  # exact duplicate
    texts[20] = texts[4] + " now"  # near duplicate candidate
    rows = []
    for i, text in enumerate(texts):
        for s in range(rng.randint(1, 4)):
            rows.append(
                scored(
                    f"p{i:02d}",
                    s,
                    rv=round(rng.uniform(0, 9), 2),
                    cd=round(rng.uniform(0, 9), 2),
                    logic=round(rng.random(), 2),
                    correct=rng.choice([True, False, None]),
                    domain=rng.choice(["math", "code", None]),
                    problem=text,
                )
            )
    evals = str(tmp_path / "eval.jsonl")
    write_jsonl(evals, [Problem(id="e", problem=texts[7])])
    c = SelectConfig.model_validate(
        {
            "preset": "7b",
            "per_bin": [12, 9, 8],
            "domain_quotas": {"code": 4, "none": 3},
            "dedup": "near",
            "decontaminate_uris": [evals],
            "min_logic": 0.2,
            "keep_unverified": False,
            "rv_max": 8.5,
            "curriculum": True,
            "pair_beta": 0.1,
        }
    )
    ref = select_in_memory(rows, c)
    got, sft, pairs, stats = stream(rows, c, tmp_path, buckets=4)
    assert verdicts(got) == verdicts(ref.scored)
    assert sorted(e.model_dump_json() for e in sft) == sorted(e.model_dump_json() for e in ref.sft)
    assert sorted(p.model_dump_json() for p in pairs) == sorted(p.model_dump_json() for p in ref.pairs)
    assert stats.dropped == ref.stats.dropped and stats.grid_after == ref.stats.grid_after
    assert 0 < stats.kept < len(rows) and sum(stats.dropped.values()) + stats.kept == len(rows)
    # every rule takes part (cd_range aside: the table's CDs all lie in 0-9)
    assert [f for f, n in stats.dropped.items() if n == 0] == ["cd_range"], stats.dropped
    assert [e.curriculum_stage for e in sft] == sorted(e.curriculum_stage for e in sft)


def test_stream_reports_bad_line(tmp_path):
    with pytest.raises(RecordError, match="f.jsonl:2"):
        select_stream([("f.jsonl:2", '{"problem": "x"}')], SelectConfig(), str(tmp_path / "w"), 0)


def test_report_has_charts_and_counts(tmp_path):
    rows = [scored(*args) for args, _ in TABLE]
    stats = select_in_memory(rows, SelectConfig.model_validate(TABLE_CONFIG)).stats
    page = render(stats.to_dict() | {"traces": 12, "judge_failures": 1})
    for chart in (
        "hist-rv-before",
        "hist-cd-before",
        "heat-before",
        "hist-rv-after",
        "hist-cd-after",
        "heat-after",
    ):
        assert f'id="{chart}"' in page
    assert page.count('class="cell"') == 200
    # rows in, dropped, rows out of the per_bin filter (domain quotas come after it)
    out = stats.kept + stats.dropped["domain_quota"]
    num = '<td class="num">{}</td>'.format
    assert f"<td>per_bin</td>{num(out + 1)}{num(1)}{num(out)}" in page
    assert f"<th>traces left unscored (unreadable judgment)</th>{num(1)}" in page and "p1/t/0" in page
    json.dumps(stats.to_dict())  # selection.json is plain JSON
    assert os.path.basename(__file__) == "test_select.py"


def test_stream_writes_bounded_shards_in_order(tmp_path):
    rows = [scored(*args) for args, _ in TABLE]
    c = SelectConfig.model_validate(TABLE_CONFIG | {"curriculum": True, "pair_beta": 0.1})
    whole = stream(rows, c, tmp_path / "whole")
    lines = [(f"t:{i}", r.model_dump_json()) for i, r in enumerate(random.Random(7).sample(rows, len(rows)))]
    files, _ = select_stream(lines, c, str(tmp_path / "sharded"), size_hint=0, buckets=3, shard_rows=4)
    assert len(files.scored) == -(-len(rows) // 4) and all(p.endswith(".jsonl") for p in files.scored)
    for paths in (files.scored, files.sft, files.preference):
        for path in paths:
            with open(path, encoding="utf-8") as f:
                assert 0 < len(f.read().splitlines()) <= 4
    # the shards, one after the other, are the unsharded output (curriculum order included)
    assert read_shards(files.scored, Scored) == whole[0]
    assert read_shards(files.sft, SftExample) == whole[1]
    assert read_shards(files.preference, PreferencePair) == whole[2]
