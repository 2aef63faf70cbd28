"""evaluate's hand-off: scores logged to the experiment of a real MLflow server (127.0.0.1, SQLite), the
student registered in its model registry with the scores, the protocol hash and its training run as
tags, and the KFP Model artifact carrying the same metadata."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from distilflow.components.evaluate import registry
from distilflow.components.evaluate.config import EvaluateConfig
from distilflow.components.evaluate.run import run
from distilflow.errors import ConfigError
from distilflow.outputs import StageOutput


def _trained_by_sft(tmp_path, tiny_qwen3: str, training_run: str) -> str:
    """A finished sft output holding the tiny model, as if that MLflow run had trained it."""
    out = StageOutput(str(tmp_path / "pipe" / "sft"), "sft")
    shutil.copytree(tiny_qwen3, out.path("model"))
    out.finish(
        result={"model_uri": out.path("model"), "tracking_run": training_run}, inputs={"data": "curate/"}
    )
    return out.path("model")


def test_evaluate_logs_scores_and_registers_the_student(tmp_path, tiny_qwen3, problems_file, mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.create_experiment("issue20-registry")
    training_run = client.create_run(experiment, run_name="p7/sft").info.run_id
    model = _trained_by_sft(tmp_path, tiny_qwen3, training_run)
    tracking = {
        "backend": "mlflow",
        "uri": mlflow_server,
        "experiment": "issue20-registry",
        "pipeline_run": "p7",
    }
    config = EvaluateConfig.from_dict(
        {
            "output_uri": str(tmp_path / "pipe" / "evaluate"),
            "model": model,
            "problems_uri": problems_file,
            "samples": 1,
            "temperature": 0.0,
            "max_new_tokens": 8,
            "tracking": tracking,
            "registry": {"model_name": "distilled-student"},
        }
    )
    result = run(config)
    (logged,) = client.search_runs([experiment], "tags.mlflow.runName = 'p7/evaluate'")
    assert logged.info.run_id == result.tracking_run
    assert logged.data.metrics["accuracy"] == pytest.approx(result.accuracy)
    assert logged.data.metrics["mean_tokens"] == pytest.approx(result.mean_tokens)
    assert logged.data.params["config.max_new_tokens"] == "8"
    with open(os.path.join(config.output_uri, "metrics.json")) as f:
        protocol = json.load(f)["protocol"]
    canonical = json.dumps(protocol, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected_hash = hashlib.sha256(canonical.encode()).hexdigest()
    assert result.protocol_sha256 == expected_hash

    version = client.get_model_version("distilled-student", result.registered_version)
    assert (result.registered_model, version.version) == ("distilled-student", "1")
    assert version.source == f"runs:/{result.tracking_run}/model" and version.run_id == result.tracking_run
    tags = version.tags
    assert tags["distilflow.accuracy"] == str(result.accuracy)
    assert tags["distilflow.protocol_sha256"] == expected_hash
    assert tags["distilflow.training_run"] == training_run and tags["distilflow.model_uri"] == model
    assert "config.json" in {
        os.path.basename(a.path) for a in client.list_artifacts(result.tracking_run, "model")
    }

    metadata = registry.artifact_metadata(config, result)
    assert {f"distilflow.{k}": str(v) for k, v in metadata.items() if f"distilflow.{k}" in tags} == {
        k: v for k, v in tags.items() if k.startswith("distilflow.")
    }
    assert (metadata["registered_version"], metadata["mlflow_run"]) == ("1", result.tracking_run)

    again = run(config.model_copy(update={"output_uri": str(tmp_path / "pipe" / "evaluate-2")}))
    assert again.registered_version == "2" and again.protocol_sha256 == expected_hash  # same measurement


@pytest.mark.unit
def test_registry_needs_mlflow_tracking():
    with pytest.raises(ConfigError, match=r"registry.model_name='s' registers in MLflow's model registry"):
        EvaluateConfig.from_dict(
            {"output_uri": "o", "model": "m", "problems_uri": "p.jsonl", "registry": {"model_name": "s"}}
        )


@pytest.mark.unit
def test_protocol_hash_changes_with_the_protocol():
    base = {"benchmark": "math500", "temperature": 0.6, "samples": 4}
    assert registry.protocol_sha256(base) == registry.protocol_sha256(dict(reversed(list(base.items()))))
    assert registry.protocol_sha256(base) != registry.protocol_sha256({**base, "temperature": 0.7})
