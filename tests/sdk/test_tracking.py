"""Experiment tracking (distilflow.tracking): the sft stage tracked in a real MLflow server started on
127.0.0.1 (SQLite store) and read back through MlflowClient; TensorBoard event files in the stage output
and its KFP artifact; the names, params and report_to the trainers get."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from distilflow import tracking
from distilflow import uri as uris
from distilflow.components.sft.config import SftConfig
from distilflow.tracking import TrackingConfig, flat_params, run_name
from tests.components.sft.test_sft import config as sft_config
from tests.components.sft.test_sft import examples
from tests.conftest import curate_output


@pytest.mark.unit
def test_flat_params_dot_nested_keys_and_cut_long_values():
    params = flat_params({"a": {"b": 1, "c": {"d": True}}, "l": [1, 2], "n": None, "s": "x" * 7000, "e": {}})
    assert params["config.a.b"] == "1" and params["config.a.c.d"] == "true"
    assert (params["config.l"], params["config.n"], params["config.e"]) == ("[1, 2]", "null", "{}")
    assert len(params["config.s"]) == tracking.MAX_PARAM_CHARS and params["config.s"].endswith(
        "...(truncated)"
    )


@pytest.mark.unit
def test_runs_are_named_after_the_pipeline_run_and_stage():
    assert (
        run_name(TrackingConfig(pipeline_run="thoughtx-abc"), "sft", "s3://b/runs/r1/sft")
        == "thoughtx-abc/sft"
    )
    assert run_name(TrackingConfig(), "dpo", "s3://b/runs/r1/dpo") == "r1/dpo"  # the run folder when alone
    assert run_name(TrackingConfig(run_name="mine"), "rl", "/x/rl") == "mine"
    with pytest.raises(
        ValueError, match="tracking.uri='http://m' is an MLflow server, but backend='tensorboard'"
    ):
        TrackingConfig(backend="tensorboard", uri="http://m")


def test_the_trainer_reports_to_the_stage_runs_backend(tmp_path):
    from trl import SFTConfig

    from distilflow.training.arguments import training_arguments

    cfg = SftConfig(
        output_uri=str(tmp_path / "r" / "sft"),
        data_uri="d.jsonl",
        model="m",
        tracking={"backend": "tensorboard", "pipeline_run": "p1"},
    )
    assert training_arguments(SFTConfig, cfg, str(tmp_path / "s")).report_to == []
    with tracking.training_run(cfg, "sft", cfg.output_uri) as tracked:
        args = training_arguments(SFTConfig, cfg, str(tmp_path / "s"))
        assert (args.report_to, args.run_name) == (["tensorboard"], "p1/sft")
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == tracked.tensorboard_dir
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ and not os.path.exists(tracked.tensorboard_dir)


def _train(tmp_path, model: str, tracking_block: dict) -> tuple[SftConfig, object]:
    from distilflow.components.sft.run import run

    data = curate_output(str(tmp_path), "sft.jsonl", examples(8))
    cfg = sft_config(model, data, str(tmp_path / "pipe-run" / "sft"), max_steps=4, tracking=tracking_block)
    return cfg, run(cfg)


def test_sft_logs_its_resolved_config_and_curves_to_an_mlflow_server(tmp_path, tiny_qwen3, mlflow_server):
    from mlflow import MlflowClient

    block = {
        "backend": "mlflow",
        "uri": mlflow_server,
        "experiment": "issue20",
        "pipeline_run": "thoughtx-r1",
    }
    cfg, result = _train(tmp_path, tiny_qwen3, block)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("issue20")
    (run,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'thoughtx-r1/sft'")
    assert run.info.run_id == result.tracking_run and run.info.status == "FINISHED"
    params = run.data.params
    assert params["config.learning_rate"] == json.dumps(cfg.learning_rate)
    assert params["config.max_steps"] == "4" and params["config.tracking.backend"] == "mlflow"
    assert params["config.model"] == tiny_qwen3 and params["learning_rate"] == str(cfg.learning_rate)  # TRL's
    losses = [
        m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    ]
    assert len(losses) == 4 and (losses[0], losses[-1]) == pytest.approx(
        (result.first_loss, result.final_loss)
    )
    assert run.data.metrics["rows_used"] == 8 and run.data.metrics["steps"] == 4
    assert (
        run.data.tags["distilflow.stage"] == "sft"
        and run.data.tags["distilflow.pipeline_run"] == "thoughtx-r1"
    )
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, "manifest.json")))
    assert manifest["result"]["tracking_run"] == run.info.run_id


def test_sft_writes_tensorboard_logs_to_its_output_and_artifact(tmp_path, tiny_qwen3):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from distilflow import artifacts

    cfg, result = _train(tmp_path, tiny_qwen3, {"backend": "tensorboard"})
    logs = os.path.join(cfg.output_uri, "tensorboard")
    events = EventAccumulator(logs)
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 4 and (losses[0], losses[-1]) == pytest.approx(
        (result.first_loss, result.final_loss)
    )
    artifact = SimpleNamespace(path=str(tmp_path / "kfp" / "tensorboard"), metadata={})
    assert artifacts.publish_tensorboard(artifact, cfg.output_uri)
    copied = [f for _, _, files in os.walk(artifact.path) for f in files]
    assert any(f.startswith("events.out.tfevents") for f in copied) and artifact.metadata["uri"] == logs
    untracked = SimpleNamespace(path=str(tmp_path / "kfp" / "none"), metadata={})
    (tmp_path / "plain").mkdir()
    plain = curate_output(str(tmp_path / "plain"), "sft.jsonl", examples(2))
    assert not artifacts.publish_tensorboard(untracked, plain)
    assert os.listdir(untracked.path) == ["README.txt"]


def _stage_config(stage: str, tmp_path, model: str, problems: str, block: dict):
    """A two-step run of ``stage`` (dpo, reward or rl) on a tiny model, tracked by ``block``."""
    from tests.components.dpo.test_dpo import config as dpo_config
    from tests.components.dpo.test_dpo import pairs
    from tests.components.reward.test_reward import carry_pairs
    from tests.components.reward.test_reward import config as reward_config

    out = str(tmp_path / "pipe-run" / stage)
    if stage == "dpo":
        data = curate_output(str(tmp_path), "preference.jsonl", pairs(4))
        return dpo_config(model, data, out, max_steps=2, tracking=block)
    if stage == "reward":
        data = curate_output(str(tmp_path), "preference.jsonl", carry_pairs(4))
        return reward_config(
            model, data, out, max_steps=2, heldout_fraction=0.0, min_heldout_accuracy=None, save_steps=0,
            tracking=block,
        )  # fmt: skip
    from distilflow.components.rl.config import RlConfig

    return RlConfig(
        output_uri=out, model=model, problems_uri=problems, num_generations=2, per_device_train_batch_size=2,
        max_completion_length=4, max_steps=2, learning_rate=1e-3, logging_steps=1, save_steps=0,
        tracking=block,
    )  # fmt: skip


@pytest.mark.parametrize("stage", ["dpo", "reward", "rl"])
def test_dpo_reward_and_rl_are_tracked_in_mlflow(stage, tmp_path, tiny_qwen3, problems_file, mlflow_server):
    """Each training stage opens its own run <pipeline run>/<stage> with its resolved config, TRL's
    per-step loss and its result, and names that run in its manifest."""
    import importlib

    from mlflow import MlflowClient

    block = {"backend": "mlflow", "uri": mlflow_server, "experiment": "issue20-stages", "pipeline_run": "p7"}
    cfg = _stage_config(stage, tmp_path, tiny_qwen3, problems_file, block)
    result = importlib.import_module(f"distilflow.components.{stage}.run").run(cfg)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("issue20-stages")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.mlflow.runName = 'p7/{stage}'")
    assert run.info.run_id == result.tracking_run and run.info.status == "FINISHED"
    assert run.data.params["config.max_steps"] == "2" and run.data.params["config.model"] == tiny_qwen3
    assert run.data.tags["distilflow.stage"] == stage and run.data.metrics["steps"] == 2
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2  # TRL's callback, every step
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, "manifest.json")))
    assert manifest["result"]["tracking_run"] == run.info.run_id
