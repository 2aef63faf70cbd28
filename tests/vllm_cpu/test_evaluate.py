"""evaluate with ``backend: vllm``: the pinned protocol, several samples, and seeds honoured."""

from __future__ import annotations

import json

import pytest

from tests.vllm_cpu.conftest import EVAL_BENCHMARKS, EVAL_SAMPLES, job_result

pytestmark = pytest.mark.vllm_cpu


def answers(result: dict) -> dict[tuple, str]:
    with open(result["results_uri"], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {
        (r["benchmark"], r["problem_id"], r["sample"]): r["reasoning"] + "|" + r["response"] for r in rows
    }


def test_evaluate_vllm_backend_records_its_protocol_and_every_sample(offline):
    result = job_result(offline, "evaluate_a")
    config = offline["evaluate_a"]["job"]["config"]
    problems = sum(b["max_problems"] for b in EVAL_BENCHMARKS)
    assert result["problems"] == problems and result["answers"] == problems * EVAL_SAMPLES
    assert result["samples"] == EVAL_SAMPLES and 0 < result["mean_tokens"] <= config["max_new_tokens"]
    assert {r["benchmark"] for r in result["runs"]} == {b["name"] for b in EVAL_BENCHMARKS}
    for run in result["runs"]:
        with open(config["output_uri"] + "/" + run["score_file"], encoding="utf-8") as f:
            protocol = json.load(f)["protocol"]
        assert protocol["backend"] == "vllm" and protocol["samples"] == EVAL_SAMPLES
        assert (protocol["seed"], protocol["temperature"], protocol["max_new_tokens"]) == (0, 1.0, 12)
        assert protocol["n_problems"] == 3 and "{{problem}}" in protocol["prompt_template"]
    got = answers(result)
    assert len(got) == problems * EVAL_SAMPLES
    # Several samples are several draws: most problems get more than one distinct answer.
    per_problem: dict[tuple, set] = {}
    for (bench, pid, _sample), text in got.items():
        per_problem.setdefault((bench, pid), set()).add(text)
    assert sum(len(t) > 1 for t in per_problem.values()) >= problems - 1


def test_evaluate_vllm_backend_same_seed_same_answers(offline):
    """Two runs with seed 0 (each with its own engine) give the same answers; seed 1 gives others."""
    first = answers(job_result(offline, "evaluate_a"))
    again = answers(job_result(offline, "evaluate_b"))
    other = answers(job_result(offline, "evaluate_seed1"))
    assert first == again
    assert first.keys() == other.keys()
    assert sum(first[k] != other[k] for k in first) >= len(first) // 2
