"""curate's columnar selection engine (``columnar.select_file``, what the stage runs) against the
streaming reference (``select.select_stream``, the rules as first written): the same verdict for
every row, the same SFT examples and pairs, the same counts, on a hand-made table and on random
tables with ties, caps, exact and near duplicates, decontamination, curriculum and CogPO betas."""

from __future__ import annotations

import json
import random

import pytest

from distilflow.components.curate.columnar import mark, scan_fields, select_file
from distilflow.components.curate.config import SelectConfig
from distilflow.components.curate.select import select_stream
from distilflow.errors import RecordError
from distilflow.records import PreferencePair, Problem, Scored, SftExample, read_jsonl, write_jsonl
from tests.components.curate.test_select import LONG, TABLE, TABLE_CONFIG, scored


def read_all(paths: list[str], model) -> list:
    return [row for path in paths for row in read_jsonl(path, model, allow_empty=True)]


def both(rows: list[Scored], c: SelectConfig, tmp_path, seed: int = 7, shard_rows: int | None = None):
    """(engine, reference): each as (scored, sft, pairs, stats), on the same shuffled JSONL file."""
    shuffled = random.Random(seed).sample(rows, len(rows))
    path = tmp_path / f"judged-{seed}.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in shuffled))
    files, stats = select_file(str(path), c, str(tmp_path / f"engine-{seed}"), shard_rows=shard_rows)
    engine = (
        read_all(files.scored, Scored),
        read_all(files.sft, SftExample),
        read_all(files.preference, PreferencePair),
        stats,
    )
    lines = [(f"{path}:{i + 1}", r.model_dump_json()) for i, r in enumerate(shuffled)]
    ref_files, ref_stats = select_stream(lines, c, str(tmp_path / f"ref-{seed}"), size_hint=0, buckets=3)
    reference = (
        read_all(ref_files.scored, Scored),
        read_all(ref_files.sft, SftExample),
        read_all(ref_files.preference, PreferencePair),
        ref_stats,
    )
    return engine, reference, shuffled


def assert_same(engine, reference, shuffled) -> None:
    scored_rows, sft, pairs, stats = engine
    ref_scored, ref_sft, ref_pairs, ref_stats = reference
    # every row once, in the input order, with the reference's verdict and otherwise unchanged
    assert [r.id for r in scored_rows] == [r.id for r in shuffled]
    assert {r.id: r for r in scored_rows} == {r.id: r for r in ref_scored}
    assert all(r.kept == (r.dropped_by is None) for r in scored_rows)
    assert sorted(e.model_dump_json() for e in sft) == sorted(e.model_dump_json() for e in ref_sft)
    assert sorted(p.model_dump_json() for p in pairs) == sorted(p.model_dump_json() for p in ref_pairs)
    stages = [e.curriculum_stage for e in sft]
    assert stages == sorted(stages, key=lambda s: -1 if s is None else s)
    for name in ("rows_in", "kept", "pairs", "sft_rows", "dropped", "answers", "grid_before"):
        assert getattr(stats, name) == getattr(ref_stats, name), name
    assert stats.grid_after == ref_stats.grid_after and stats.stages == ref_stats.stages
    assert stats.contamination_problems == ref_stats.contamination_problems
    assert stats.sum_rv == pytest.approx(ref_stats.sum_rv) and stats.sum_cd == pytest.approx(ref_stats.sum_cd)
    assert len(stats.samples_kept) == min(5, stats.kept)


def test_hand_made_table_keeps_exactly_the_rows_the_rules_say(tmp_path):
    rows = [scored(*args) for args, _ in TABLE]
    expected = {f"{args[0]}/t/{args[1]}": reason for args, reason in TABLE}
    c = SelectConfig.model_validate(TABLE_CONFIG | {"curriculum": True, "pair_beta": 0.1})
    engine, reference, shuffled = both(rows, c, tmp_path)
    assert {r.id: r.dropped_by for r in engine[0]} == expected
    assert_same(engine, reference, shuffled)


def random_rows(seed: int, problems: int = 80, grid: float = 0.5) -> tuple[list[Scored], list[str]]:
    """Random scored rows; scores on a coarse grid so that distances tie and ids must decide."""
    rng = random.Random(seed)
    topics = ["apples", "trains", "primes", "circles"]
    words = LONG.split()
    texts = [
        f"Problem number {i} asks about {rng.choice(topics)}: " + " ".join(rng.choices(words, k=20))
        for i in range(problems)
    ]
    texts[10] = texts[3]  # exact duplicate
    texts[11] = "  " + texts[5].upper() + "!"  # duplicate once normalised
    texts[20] = texts[4] + " now"  # near duplicate
    texts[21] = texts[6].replace("asks", "asked")  # near duplicate
    rows = []
    for i, text in enumerate(texts):
        for s in range(rng.randint(1, 5)):
            rows.append(
                scored(
                    f"p{i:03d}",
                    s,
                    rv=round(rng.randint(0, int(9 / grid)) * grid, 3),
                    cd=round(rng.randint(0, int(9 / grid)) * grid, 3),
                    logic=rng.choice([0.1, 0.5, 0.9, 1.0]),
                    correct=rng.choice([True, True, False, None]),
                    domain=rng.choice(["math", "code", None, "science"]),
                    problem=text,
                )
            )
    return rows, texts


CONFIGS = [
    {"preset": "7b", "per_bin": [12, 9, 8], "domain_quotas": {"code": 4, "none": 3}, "dedup": "near"},
    {"preset": "1.5b", "curriculum": True, "pair_beta": 0.1, "min_logic": 0.2, "keep_unverified": False},
    {"cd_bins": [0, 2, 5, 9], "rv_targets": ["matched", "low", 6], "per_bin": 7, "dedup": "none"},
    {"rv_targets": None, "per_problem": 2, "domain_quotas": {"math": 5}, "rv_max": 8.5, "cd_min": 1},
    {"preset": "32b", "require_correct": False, "pair_beta": 0.2, "pair_beta_scale": 2.0, "dedup": "exact"},
    {"system_prompt": "Think step by step.", "enable_thinking": True, "per_problem": 1, "per_bin": 3},
    # a student prompt with quotes, a backslash, non-ASCII and the problem twice: spliced as raw JSON
    {"prompt_template": 'Q «{{problem}}»\n"again": {{problem}} \\boxed{}', "system_prompt": "Ünï"},
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("case", range(len(CONFIGS)))
def test_random_tables_select_the_same_rows_as_the_reference(tmp_path, seed, case):
    rows, texts = random_rows(seed)
    fields = dict(CONFIGS[case])
    if case in (0, 3):
        evals = str(tmp_path / "eval.jsonl")
        eval_problems = [Problem(id="e", problem=texts[7]), Problem(id="s", problem="number 2 asks")]
        write_jsonl(evals, eval_problems)
        fields["decontaminate_uris"] = [evals]
    c = SelectConfig.model_validate(fields)
    engine, reference, shuffled = both(rows, c, tmp_path, seed=seed, shard_rows=17)
    assert_same(engine, reference, shuffled)
    assert 0 < engine[3].kept < len(rows)


def test_dedup_near_and_decontamination_verdicts(tmp_path):
    rows, texts = random_rows(1)
    evals = str(tmp_path / "eval.jsonl")
    write_jsonl(evals, [Problem(id="e", problem=texts[7])])
    c = SelectConfig.model_validate({"dedup": "near", "decontaminate_uris": [evals]})
    engine, reference, shuffled = both(rows, c, tmp_path)
    by_problem = {r.problem_id: r.dropped_by for r in engine[0]}
    assert by_problem["p010"] == by_problem["p011"] == "duplicate"
    assert sorted([by_problem["p004"], by_problem["p020"]], key=str) == [None, "near_duplicate"]
    assert by_problem["p007"] == "contaminated"
    assert_same(engine, reference, shuffled)


def test_scan_reads_every_scored_field_and_names_a_bad_line(tmp_path):
    assert scan_fields() == set(Scored.model_fields)
    rows = [scored("a", 0, 4, 4).model_dump_json(), json.dumps({"id": "x", "problem": "y"})]
    path = tmp_path / "judged.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(RecordError, match=r"judged\.jsonl:2: not a valid Scored record.*problem_id"):
        select_file(str(path), SelectConfig(), str(tmp_path / "w"))
    bad = json.loads(rows[0]) | {"rv": 12}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"judged\.jsonl:1: .*rv"):
        select_file(str(path), SelectConfig(), str(tmp_path / "w"))


def test_mark_sets_kept_and_dropped_by_and_nothing_else():
    row = scored("a", 0, 4, 4).model_copy(update={"reasoning": 'he said "kept": no', "content": "kept"})
    line = row.model_dump_json().encode()
    out = mark(line, "per_bin")
    assert json.loads(out) == json.loads(line) | {"kept": False, "dropped_by": "per_bin"}
    assert json.loads(mark(out, None)) == json.loads(line) | {"kept": True, "dropped_by": None}
    spaced = json.dumps({k: v for k, v in json.loads(line).items() if k != "dropped_by"}).encode()
    assert json.loads(mark(spaced, "logic")) == json.loads(line) | {"dropped_by": "logic"}


def test_signatures_are_select_minhash_exactly(monkeypatch):
    from distilflow.components.curate import columnar
    from distilflow.components.curate.columnar import _signature_chunk, _signatures
    from distilflow.components.curate.select import minhash, normalise_text

    rows, texts = random_rows(2)
    norms = [normalise_text(t) for t in texts] + ["", "one", "one two", LONG.lower()]
    expected = [minhash(n.split()) for n in norms]
    assert _signature_chunk(norms, chunk=7).tolist() == expected  # chunks smaller than the list
    monkeypatch.setattr(columnar, "PARALLEL_TEXTS", 10)
    assert _signatures(norms, workers=2).tolist() == expected  # in worker processes


def test_empty_file_and_a_last_line_without_newline(tmp_path):
    path = tmp_path / "judged.jsonl"
    path.write_text("\n")
    files, stats = select_file(str(path), SelectConfig(), str(tmp_path / "empty"))
    assert stats.rows_in == 0 and files.scored == files.sft == files.preference == []
    rows = [scored("a", 0, 4, 4), scored("a", 1, 8, 4, correct=False), scored("b", 0, 2, 2)]
    lines = [r.model_dump_json() for r in rows]
    path.write_text(lines[0] + "\n    \n\n" + "\n".join(lines[1:]))  # blank lines; no final newline
    files, stats = select_file(str(path), SelectConfig(), str(tmp_path / "w"), shard_rows=2)
    got = read_all(files.scored, Scored)
    assert [r.id for r in got] == [r.id for r in rows] and stats.kept == 2 and stats.pairs == 1
