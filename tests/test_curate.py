"""The curate stage: a real (tiny) judge scores hand-written traces; answers, selection and pairs are checked."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from distilflow import uri as uris
from distilflow.components.curate.config import CurateConfig
from distilflow.components.curate.run import parse_score, run
from distilflow.components.distill.config import DistillConfig
from distilflow.errors import ConfigError, IncompleteOutputError
from distilflow.outputs import MANIFEST, MARKER, StageOutput
from distilflow.records import PreferencePair, Scored, SftExample, Trace, read_jsonl, write_jsonl
from distilflow.teacher import TransformersTeacher

# (problem id, sample, problem, reference, reasoning, answer section, correct?)
TRACES = [
    ("p1", 0, "What is 3 + 4?", "7", "3 plus 4 is 7.", "The answer is \\boxed{7}.", True),
    ("p1", 1, "What is 3 + 4?", "7", "3 plus 4 is 8.", "The answer is \\boxed{8}.", False),
    ("p2", 0, "What is 6 * 7?", "42", "6 times 7 is 42.", "\\boxed{42}", True),
    ("p2", 1, "What is 6 * 7?", "42", "Six sevens: 7, 14, 21, 28, 35, 42.", "So it is \\boxed{42}", True),
    ("p3", 0, "Pick a prime below 6.", None, "2, 3 and 5 are primes.", "\\boxed{5}", None),
    ("p4", 0, "What is 1 / 2 as a fraction?", "\\frac{1}{2}", "Half.", "\\boxed{0.5}", True),
    ("p4", 1, "What is 1 / 2 as a fraction?", "\\frac{1}{2}", "Not sure.", "I cannot tell.", False),
]
EXPECTED = {f"{pid}/t/{s}": ok for pid, s, *_, ok in TRACES}


def write_distill_output(folder: str, complete: bool = True) -> str:
    """A distill output folder holding the hand-written traces (with its marker when ``complete``)."""
    rows = [
        Trace(
            id=f"{pid}/t/{s}",
            problem_id=pid,
            problem=problem,
            reference=ref,
            domain="math",
            teacher="t",
            sample=s,
            reasoning=reasoning,
            content=content,
            tokens=10,
            finish_reason="stop",
        )
        for pid, s, problem, ref, reasoning, content, _ in TRACES
    ]
    config = DistillConfig.from_dict(
        {
            "output_uri": folder,
            "problems_uri": "unused.jsonl",
            "teacher": {"backend": "transformers", "model": "t"},
        }
    )
    out = StageOutput(folder, "distill")
    out.begin(config)
    write_jsonl(out.path("traces.jsonl"), rows)
    if complete:
        out.finish(result={"traces": len(rows)})
    return folder


@pytest.fixture(scope="module")
def distill_dir(tmp_path_factory) -> str:
    return write_distill_output(str(tmp_path_factory.mktemp("run") / "distill"))


def curate_config(out: str, data: str, judge: str, **overrides) -> CurateConfig:
    judge_cfg = {
        "backend": "transformers",
        "model": judge,
        "max_new_tokens": 8,
        "temperature": 0,
        "batch_size": 4,
    }
    return CurateConfig.from_dict(
        {"output_uri": out, "data_uri": data, "judge": judge_cfg, "min_logic": 0} | overrides
    )


def test_curate_scores_verifies_selects_and_pairs(tmp_path, distill_dir, tiny_qwen3):
    out = str(tmp_path / "curate")
    config = curate_config(out, distill_dir, tiny_qwen3, system_prompt="Think first.", enable_thinking=True)
    result = run(config)
    scored = read_jsonl(os.path.join(out, "scored.jsonl"), Scored)
    assert result.traces == result.scored == len(scored) == len(TRACES) and result.judge_failures == 0
    for row in scored:
        assert 0 <= row.rv <= 9 and 0 <= row.cd <= 9 and 0 <= row.logic <= 1
        assert row.judge == os.path.basename(tiny_qwen3)
    assert {r.id: r.correct for r in scored} == EXPECTED
    assert next(r for r in scored if r.id == "p4/t/0").predicted == "0.5"
    # Default policy: wrong answers dropped, unverified kept (logic threshold 0 here).
    kept = {r.id for r in scored if r.kept}
    assert kept == {rid for rid, ok in EXPECTED.items() if ok is not False}
    assert (result.correct, result.incorrect, result.unverified) == (4, 2, 1)
    assert result.mean_rv == pytest.approx(statistics.fmean(r.rv for r in scored), abs=1e-3)

    sft = read_jsonl(os.path.join(out, "sft.jsonl"), SftExample)
    assert {e.id for e in sft} == kept and result.sft_rows == len(sft)
    by_id = {r.id: r for r in scored}
    for example in sft:
        system, user, assistant = example.messages
        assert (system.role, system.content) == ("system", "Think first.")
        assert user.content == by_id[example.id].problem
        assert (
            assistant.reasoning_content == by_id[example.id].reasoning
            and assistant.content == by_id[example.id].content
        )
        assert example.enable_thinking is True and example.rv == by_id[example.id].rv

    pairs = {p.id: p for p in read_jsonl(os.path.join(out, "preference.jsonl"), PreferencePair)}
    assert result.pairs == len(pairs) and {"p1/pair", "p4/pair"} <= set(pairs) and "p3/pair" not in pairs
    assert pairs["p1/pair"].chosen[0].content.endswith("\\boxed{7}.")
    assert pairs["p1/pair"].rejected[0].content.endswith("\\boxed{8}.")
    assert (
        pairs["p4/pair"].chosen[0].content == "\\boxed{0.5}"
        and pairs["p4/pair"].rejected[0].content == "I cannot tell."
    )
    assert pairs["p1/pair"].prompt[-1].content == "What is 3 + 4?" and pairs["p1/pair"].beta is None

    manifest = json.loads(uris.read_text(os.path.join(out, MANIFEST)))
    assert (
        manifest["inputs"]["judge_templates"]
        == "judge_rv_v1,judge_cd_v1,judge_logic_v1,judge_format_logprobs_v1"
    )
    assert os.path.exists(os.path.join(out, MARKER))

    # The scores come from the judge: a narrower RV range keeps exactly the rows inside it.
    cut = statistics.median(r.rv for r in scored)
    narrow = curate_config(
        str(tmp_path / "narrow"),
        distill_dir,
        tiny_qwen3,
        rv_max=cut,
        require_correct=False,
        keep_unverified=False,
    )
    again = {r.id: r for r in read_jsonl(run(narrow).scored_uri, Scored)}
    assert {i: (r.rv, r.cd) for i, r in again.items()} == {r.id: (r.rv, r.cd) for r in scored}
    assert {i for i, r in again.items() if r.kept} == {
        r.id for r in scored if r.rv <= cut and r.correct is not None
    }

    # A rerun of the finished output does not load the judge.
    def no_judge(*args, **kwargs):
        raise AssertionError("the judge was loaded for a finished output")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TransformersTeacher, "__init__", no_judge)
        assert run(config) == result


def test_curate_refuses_data_without_marker(tmp_path, tiny_qwen3):
    data = write_distill_output(str(tmp_path / "distill"), complete=False)
    with pytest.raises(IncompleteOutputError, match="_COMPLETE"):
        run(curate_config(str(tmp_path / "curate"), data, tiny_qwen3))
    assert not os.path.exists(tmp_path / "curate" / MARKER)


def test_curate_generate_mode_counts_unparseable_judgments(tmp_path, distill_dir, tiny_qwen3):
    # A random-weight judge writes no <score> tag: every trace is reported, none is given a score.
    result = run(curate_config(str(tmp_path / "curate"), distill_dir, tiny_qwen3, mode="generate"))
    assert result.judge_failures == len(TRACES) and result.scored == 0 and result.kept == 0
    assert read_jsonl(result.scored_uri, Scored, allow_empty=True) == []
    failures = [json.loads(line) for line in uris.read_text(result.failures_uri).splitlines()]
    assert {f["id"] for f in failures} == set(EXPECTED) and {f["kind"] for f in failures} == {
        "rv",
        "cd",
        "logic",
    }
    assert "judge_format_generate_v1" in result.templates


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("Detailed steps.\n<score>7</score>", "rv", 7.0),
        ("<score>3</score> then reconsidered <SCORE> 6 </SCORE>", "cd", 6.0),
        ("Score: 7", "rv", None),
        ("<score>12</score>", "rv", None),
        ("<score>4.5</score>", "rv", None),
        ("<score>1</score>", "logic", 1.0),
        ("<score>3</score>", "logic", None),
    ],
)
def test_parse_score(text, kind, expected):
    assert parse_score(text, kind) == expected


def test_curate_config_rejects_inverted_ranges():
    with pytest.raises(ConfigError, match=r"rv_min=6.0 is above rv_max=2.0"):
        CurateConfig.from_dict(
            {
                "output_uri": "o",
                "data_uri": "d",
                "judge": {"backend": "transformers", "model": "m"},
                "rv_min": 6,
                "rv_max": 2,
            }
        )


def test_distill_and_curate_components_chain(tmp_path, problems_file, tiny_qwen3):
    from kfp import dsl

    from distilflow.components.curate.component import curate
    from distilflow.components.distill.component import distill

    teacher = {"backend": "transformers", "model": tiny_qwen3, "max_new_tokens": 4, "temperature": 0}
    config = {
        "distill": {"problems_uri": problems_file, "teacher": teacher, "n": 1, "limit": 2},
        "curate": {"judge": teacher, "require_correct": False, "min_logic": 0},
    }
    root = str(tmp_path / "run")
    traces = dsl.Dataset(name="traces", uri=str(tmp_path / "kfp" / "traces"), metadata={})
    distill.python_func(config=config, output_uri=root, traces=traces)
    assert traces.metadata["uri"] == os.path.join(root, "distill") and traces.metadata["traces"] == 2
    curated = dsl.Dataset(name="curated", uri=str(tmp_path / "kfp" / "curated"), metadata={})
    curate.python_func(config=config, output_uri=root, traces=traces, curated=curated)
    assert curated.metadata["uri"] == os.path.join(root, "curate")
    assert len(read_jsonl(os.path.join(root, "curate", "scored.jsonl"), Scored)) == 2
    assert os.path.exists(os.path.join(root, "curate", MARKER))
