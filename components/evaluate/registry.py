"""Hand-off of the evaluated model: its scores to the tracking experiment, the model to MLflow's model
registry, and the metadata of the KFP ``Model`` artifact the component emits.

The registered version's tags, the evaluate run's tags and the artifact's metadata are one set (see
``model_metadata``): the headline scores (accuracy, pass@k, mean tokens, on the first benchmark), the
protocol hash (sha256 of the headline run's canonical protocol JSON: two versions were measured the
same way exactly when it matches), the model's URI and content hash, the training data and the MLflow
run of the stage that trained it. A model in object storage is registered by its URI (MLflow takes
``s3://``, ``gs://``, ...); a local model folder is logged as an artifact of the evaluate run and
registered as ``runs:/<run>/model`` (MLflow refuses bare local paths).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from distilflow import uri as uris
from distilflow.components.evaluate.config import EvaluateConfig

SCORES = ("accuracy", "pass_at_k", "mean_tokens", "truncated")


def protocol_sha256(protocol: dict[str, Any]) -> str:
    """sha256 of a protocol's canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(protocol, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def training_lineage(model_uri: str | None) -> dict[str, str]:
    """The stage that trained the model (its folder holds the model): its output, MLflow run and data."""
    if not model_uri:
        return {}
    stage_uri = model_uri.rstrip("/").rsplit("/", 1)[0]
    try:
        manifest = json.loads(uris.read_text(uris.join(stage_uri, "manifest.json")))
    except (OSError, ValueError):  # a model that did not come from a distilflow stage
        return {}
    found = {
        "trained_by": str(manifest.get("stage", "")),
        "training_output": str(manifest.get("uri", stage_uri)),
    }
    run = (manifest.get("result") or {}).get("tracking_run")
    data = (manifest.get("inputs") or {}).get("data")
    return found | ({"training_run": run} if run else {}) | ({"training_data": str(data)} if data else {})


def model_metadata(config: EvaluateConfig, result: Any) -> dict[str, Any]:
    """What the registry version, the evaluate run and the KFP Model artifact all carry."""
    head = result.protocol
    return {
        **{name: getattr(result, name) for name in SCORES},
        "benchmark": str(head.get("benchmark", "")),
        "samples": result.samples,
        "protocol_sha256": result.protocol_sha256,
        "model_uri": str(config.model or result.model_id.get("uri", "")),
        "model_sha256": str(
            result.model_id.get("content_sha256") or result.model_id.get("files_sha256") or ""
        ),
        **training_lineage(config.model),
    }


def _tags(metadata: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    return {f"distilflow.{k}": str(v) for k, v in metadata.items()} | extra


def hand_off(config: EvaluateConfig, result: Any) -> None:
    """Log the scores to the experiment and register the model, as ``config`` asks; fill the result's
    ``tracking_run``, ``registered_model`` and ``registered_version``."""
    from distilflow import tracking

    metadata = model_metadata(config, result)
    numbers = {**{k: v for k, v in metadata.items() if k in SCORES}, **_run_metrics(result)}
    result.tracking_run = tracking.log_evaluation(
        config.tracking, config.output_uri, config, numbers, _tags(metadata, config.tracking.tags)
    )
    if config.registry.model_name and result.tracking_run:
        result.registered_model, result.registered_version = register(config, result, metadata)


def artifact_metadata(config: EvaluateConfig, result: Any) -> dict[str, Any]:
    """The KFP Model artifact's metadata: ``model_metadata`` plus the MLflow run and registry version."""
    extra = {"mlflow_run": result.tracking_run} if result.tracking_run else {}
    if result.registered_version:
        extra |= {
            "registered_model": result.registered_model,
            "registered_version": result.registered_version,
        }
    return model_metadata(config, result) | extra


def _run_metrics(result: Any) -> dict[str, float]:
    """Every (model, benchmark) run's metrics as ``<model>/<benchmark>/<metric>``."""
    return {
        f"{r['model']}/{r['benchmark']}/{k}": v
        for r in result.runs
        for k, v in r.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def register(config: EvaluateConfig, result: Any, metadata: dict[str, Any]) -> tuple[str, str]:
    """A new version of ``registry.model_name`` for the evaluated model; returns (name, version)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=config.tracking.uri) if config.tracking.uri else MlflowClient()
    name = str(config.registry.model_name)
    try:
        client.create_registered_model(name, description="Students trained and evaluated by distilflow")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model = str(config.model)
    if uris.is_local(model):  # MLflow takes no bare local path: the folder goes into the run's artifacts
        client.log_artifacts(result.tracking_run, uris.local_path(model), "model")
        source = f"runs:/{result.tracking_run}/model"
    else:
        source = model
    version = client.create_model_version(
        name,
        source=source,
        run_id=result.tracking_run,
        tags=_tags(metadata, config.registry.tags),
        description=f"accuracy {result.accuracy:.4f} on {metadata['benchmark']} (protocol {result.protocol_sha256[:12]})",
    )
    print(f"[evaluate] registered {name} version {version.version} ({source})", flush=True)
    return name, str(version.version)
