"""Stage outputs (resolved config, manifest, completion marker) and KFP artifact helpers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from pydantic import BaseModel, Field

from distilflow import __version__, artifacts
from distilflow import uri as uris
from distilflow.config import BaseConfig
from distilflow.errors import IncompleteOutputError
from distilflow.outputs import (
    COUNT,
    MANIFEST,
    MARKER,
    METRIC,
    RESOLVED_CONFIG,
    StageOutput,
    declared,
    package_versions,
    require_complete,
)


class ToyConfig(BaseConfig):
    output_uri: str = Field("out", description="Output folder")
    steps: int = Field(3, description="Steps")


def record_writes(monkeypatch) -> list[str]:
    """The URIs written through distilflow.uri, in order."""
    written: list[str] = []
    real = uris.write_bytes

    def spy(uri: str, data: bytes) -> None:
        written.append(uri)
        real(uri, data)

    monkeypatch.setattr(uris, "write_bytes", spy)
    return written


def run_stage(uri: str, config: ToyConfig, result: dict | None = None) -> dict:
    out = StageOutput(uri, "toy")
    out.begin(config)
    uris.write_text(out.path("data.jsonl"), "{}\n")
    return out.finish(
        result=result or {"rows": 1},
        inputs={"data_uri": "s3://b/in"},
        outputs={"data": out.path("data.jsonl")},
        counts={"rows": 1},
        metrics={"accuracy": 0.5},
    )


def check_finished_folder(uri: str, config: ToyConfig, manifest: dict) -> None:
    assert yaml.safe_load(uris.read_text(uris.join(uri, RESOLVED_CONFIG))) == config.to_dict()
    on_disk = json.loads(uris.read_text(uris.join(uri, MANIFEST)))
    assert on_disk == manifest
    assert on_disk["stage"] == "toy"
    assert on_disk["config_fingerprint"] == config.fingerprint()
    assert on_disk["result"] == {"rows": 1}
    assert on_disk["counts"] == {"rows": 1}
    assert on_disk["metrics"] == {"accuracy": 0.5}
    assert on_disk["inputs"] == {"data_uri": "s3://b/in"}
    assert on_disk["outputs"] == {"data": uris.join(uri, "data.jsonl")}
    assert on_disk["versions"]["distilflow"] == __version__
    assert "python" in on_disk["versions"] and "kfp" in on_disk["versions"]
    assert on_disk["started_at"] <= on_disk["finished_at"]
    assert uris.read_text(uris.join(uri, MARKER)).strip() == on_disk["finished_at"]


@pytest.mark.unit
def test_begin_finish_writes_config_manifest_then_marker(tmp_path, monkeypatch):
    uri = str(tmp_path / "toy")
    config = ToyConfig(output_uri=uri)
    written = record_writes(monkeypatch)
    manifest = run_stage(uri, config)
    names = [w.rsplit("/", 1)[-1] for w in written]
    assert names == [RESOLVED_CONFIG, "data.jsonl", MANIFEST, MARKER]  # the marker comes last
    check_finished_folder(uri, config, manifest)
    assert StageOutput(uri, "toy").is_complete()
    assert require_complete(uri) == manifest


@pytest.mark.unit
def test_require_complete_names_uri_and_fix(tmp_path):
    uri = str(tmp_path / "half")
    out = StageOutput(uri, "toy")
    out.begin(ToyConfig())
    assert not out.is_complete()
    with pytest.raises(IncompleteOutputError) as info:
        require_complete(uri, "curate data")
    msg = str(info.value)
    assert f"curate data {uri} has no completion marker ({MARKER})" in msg
    assert "Rerun that stage" in msg
    with pytest.raises(IncompleteOutputError):
        require_complete(str(tmp_path / "never-written"))


@pytest.mark.unit
def test_reusable_only_for_the_same_fingerprint(tmp_path):
    uri = str(tmp_path / "toy")
    config = ToyConfig(output_uri=uri)
    assert StageOutput(uri, "toy").reusable(config) is None  # nothing there yet
    manifest = run_stage(uri, config)
    assert StageOutput(uri, "toy").reusable(ToyConfig(output_uri=uri)) == manifest
    assert StageOutput(uri, "toy").reusable(ToyConfig(output_uri=uri, steps=4)) is None


@pytest.mark.unit
def test_reusable_ignores_an_unfinished_run(tmp_path):
    uri = str(tmp_path / "toy")
    config = ToyConfig(output_uri=uri)
    StageOutput(uri, "toy").begin(config)
    assert StageOutput(uri, "toy").reusable(config) is None


@pytest.mark.unit
def test_begin_on_a_complete_folder_drops_the_stale_marker(tmp_path):
    uri = str(tmp_path / "toy")
    run_stage(uri, ToyConfig(output_uri=uri))
    again = StageOutput(uri, "toy")
    new_config = ToyConfig(output_uri=uri, steps=9)
    again.begin(new_config)
    assert not again.is_complete()
    with pytest.raises(IncompleteOutputError):
        require_complete(uri)
    assert yaml.safe_load(uris.read_text(again.path(RESOLVED_CONFIG)))["steps"] == 9
    manifest = again.finish(result={"rows": 2})
    assert manifest["config_fingerprint"] == new_config.fingerprint()
    assert require_complete(uri)["result"] == {"rows": 2}


@pytest.mark.unit
def test_trailing_slash_and_path(tmp_path):
    out = StageOutput("s3://bucket/runs/r1/toy/", "toy")
    assert out.uri == "s3://bucket/runs/r1/toy"
    assert out.path("a", "b.json") == "s3://bucket/runs/r1/toy/a/b.json"


@pytest.mark.unit
def test_package_versions_lists_only_installed():
    found = package_versions(("kfp", "surely-not-installed-pkg"))
    assert set(found) == {"python", "distilflow", "kfp"}


# --- artifacts -------------------------------------------------------------------------------


def fake_artifact(metadata: dict | None = None):
    return SimpleNamespace(metadata={} if metadata is None else metadata)


class ToyResult(BaseModel):
    """A Result that declares its manifest entries."""

    model_uri: str = Field(description="Not a count, not a metric")
    rows_used: int = Field(description="Rows trained on", json_schema_extra=COUNT)
    dropped: dict[str, int] = Field(description="Rows dropped per filter", json_schema_extra=COUNT)
    final_loss: float | None = Field(description="Last loss", json_schema_extra=METRIC)
    first_loss: float | None = Field(
        None, description="First loss; None is left out", json_schema_extra=METRIC
    )
    by_kind: dict[str, float] = Field(
        description="Errors per kind", json_schema_extra={**METRIC, "each": "errors_{}"}
    )
    passed: bool = Field(description="A verdict (logged as 1/0)", json_schema_extra=METRIC)


TOY = ToyResult(
    model_uri="s3://b/m",
    rows_used=7,
    dropped={"length": 2, "duplicate": 1},
    final_loss=0.25,
    by_kind={"timeout": 3.0},
    passed=True,
)


@pytest.mark.unit
def test_result_declares_its_counts_and_metrics():
    assert declared(TOY, COUNT) == {"rows_used": 7, "dropped_length": 2, "dropped_duplicate": 1}
    assert declared(TOY, METRIC) == {"final_loss": 0.25, "errors_timeout": 3.0, "passed": True}


@pytest.mark.unit
def test_finish_derives_the_manifest_from_the_result_and_adds_extras(tmp_path):
    uri = str(tmp_path / "toy")
    out = StageOutput(uri, "toy")
    out.begin(ToyConfig(output_uri=uri))
    manifest = out.finish(TOY, counts={"shards": 2}, metrics={"rate": 0.5})
    assert manifest["result"] == TOY.model_dump(mode="json")
    assert manifest["counts"] == {"rows_used": 7, "dropped_length": 2, "dropped_duplicate": 1, "shards": 2}
    assert manifest["metrics"] == {"final_loss": 0.25, "errors_timeout": 3.0, "passed": True, "rate": 0.5}
    assert json.loads(uris.read_text(uris.join(uri, MANIFEST))) == manifest


@pytest.mark.unit
def test_log_metrics_logs_the_manifest_numbers_of_a_finished_output(tmp_path):
    uri = str(tmp_path / "toy")
    logged: dict[str, float] = {}
    artifact = SimpleNamespace(log_metric=lambda name, value: logged.__setitem__(name, value))
    with pytest.raises(IncompleteOutputError):
        artifacts.log_metrics(artifact, uri)
    out = StageOutput(uri, "toy")
    out.finish(TOY, metrics={"note": "text is no metric"})
    assert artifacts.log_metrics(artifact, uri) == logged
    assert logged == {
        "rows_used": 7.0,
        "dropped_length": 2.0,
        "dropped_duplicate": 1.0,
        "final_loss": 0.25,
        "errors_timeout": 3.0,
        "passed": 1.0,
    }


@pytest.mark.unit
def test_publish_and_consume(tmp_path):
    stage_uri = str(tmp_path / "curate")
    run_stage(stage_uri, ToyConfig(output_uri=stage_uri))
    art = fake_artifact()
    data_uri = uris.join(stage_uri, "data.jsonl")
    artifacts.publish(art, data_uri, stage_uri=stage_uri, rows=1)
    assert art.metadata == {"uri": data_uri, "stage_uri": stage_uri, "rows": 1}
    assert artifacts.consume(art) == data_uri


@pytest.mark.unit
def test_publish_without_stage_uri_vouches_for_itself(tmp_path):
    art = fake_artifact()
    artifacts.publish(art, "s3://b/model")
    assert art.metadata == {"uri": "s3://b/model", "stage_uri": "s3://b/model"}


@pytest.mark.unit
def test_consume_refuses_an_incomplete_stage(tmp_path):
    stage_uri = str(tmp_path / "sft")
    StageOutput(stage_uri, "sft").begin(ToyConfig())
    art = fake_artifact()
    artifacts.publish(art, uris.join(stage_uri, "model"), stage_uri=stage_uri)
    with pytest.raises(IncompleteOutputError, match=rf"model {stage_uri} has no completion marker"):
        artifacts.consume(art, "model")


@pytest.mark.unit
def test_consume_refuses_an_artifact_without_uri():
    with pytest.raises(ValueError, match="carries no 'uri'"):
        artifacts.consume(fake_artifact(), "data")
    with pytest.raises(ValueError, match="carries no 'uri'"):
        artifacts.consume(SimpleNamespace(metadata=None), "data")


@pytest.mark.unit
def test_section():
    cfg = {"sft": {"max_steps": 3}, "dpo": None}
    part = artifacts.section(cfg, "sft")
    assert part == {"max_steps": 3}
    part["max_steps"] = 99
    assert cfg["sft"]["max_steps"] == 3  # a copy, not the pipeline's dict
    assert artifacts.section(cfg, "dpo") == {}
    assert artifacts.section(cfg, "rl") == {}
    assert artifacts.section({}, "rl") == {}
    with pytest.raises(ValueError, match="'sft' must be a mapping of sft settings"):
        artifacts.section({"sft": [1, 2]}, "sft")


# --- the same on object storage --------------------------------------------------------------


def test_stage_output_and_artifacts_on_s3(s3_bucket):
    uri = f"s3://{s3_bucket}/runs/r1/toy"
    config = ToyConfig(output_uri=uri)
    out = StageOutput(uri, "toy")
    assert out.reusable(config) is None
    with pytest.raises(IncompleteOutputError, match=uri):
        require_complete(uri)
    manifest = run_stage(uri, config)
    check_finished_folder(uri, config, manifest)
    assert StageOutput(uri, "toy").reusable(config) == manifest
    assert StageOutput(uri, "toy").reusable(ToyConfig(output_uri=uri, steps=7)) is None

    art = fake_artifact()
    artifacts.publish(art, out.path("data.jsonl"), stage_uri=uri)
    assert artifacts.consume(art) == f"{uri}/data.jsonl"

    StageOutput(uri, "toy").begin(config)  # a rerun starts: the old marker goes first
    assert not uris.exists(f"{uri}/{MARKER}")
    with pytest.raises(IncompleteOutputError):
        artifacts.consume(art)
