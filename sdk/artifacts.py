"""How stage outputs travel through KFP: an artifact carries its object-storage URI in metadata.

``metadata["uri"]`` is the thing itself (a dataset folder, a model folder); ``metadata["stage_uri"]``
is the stage output folder whose completion marker vouches for it. Its counts and metrics become the
step's KFP Metrics. Used inside component bodies.
"""

from __future__ import annotations

from typing import Any

from distilflow.outputs import require_complete


def publish(artifact: Any, uri: str, stage_uri: str | None = None, **extra: Any) -> None:
    """Record where a stage wrote its output on a KFP output artifact."""
    artifact.metadata["uri"] = uri
    artifact.metadata["stage_uri"] = stage_uri or uri
    for key, value in extra.items():
        artifact.metadata[key] = value


def consume(artifact: Any, what: str = "input") -> str:
    """The URI an upstream artifact carries, after checking its stage finished."""
    meta = artifact.metadata or {}
    if "uri" not in meta:
        raise ValueError(
            f"{what}: upstream artifact carries no 'uri' in its metadata; was it made by distilflow?"
        )
    require_complete(meta.get("stage_uri", meta["uri"]), what)
    return meta["uri"]


def section(config: dict, stage: str) -> dict:
    """A stage's own section of a pipeline config (an empty dict when absent)."""
    value = (config or {}).get(stage) or {}
    if not isinstance(value, dict):
        raise ValueError(
            f"pipeline config key {stage!r} must be a mapping of {stage} settings, got {value!r}"
        )
    return dict(value)


def log_metrics(artifact: Any, stage_uri: str) -> dict[str, float]:
    """Log the counts and metrics of a finished stage output's manifest (what its Result declares) as
    KFP Metrics; numbers only (true/false as 1/0). Returns what was logged."""
    manifest = require_complete(stage_uri, "stage output")
    logged = {}
    for name, value in {**manifest.get("counts", {}), **manifest.get("metrics", {})}.items():
        if isinstance(value, (bool, int, float)):
            logged[name] = float(value)
            artifact.log_metric(name, logged[name])
    return logged


def publish_tensorboard(artifact: Any, stage_uri: str) -> bool:
    """Expose a finished stage's TensorBoard event files (its manifest's ``tensorboard`` output) as a KFP
    artifact: copied into the artifact's folder, which KFP stores under the pipeline root, with their
    object-storage URI in its metadata. Without logs (tracking.backend is not tensorboard) the folder
    holds a note saying so. Returns whether there were logs."""
    import os

    from distilflow import uri as uris

    manifest = require_complete(stage_uri, "stage output")
    logs = (manifest.get("outputs") or {}).get("tensorboard")
    os.makedirs(artifact.path, exist_ok=True)
    artifact.metadata["stage_uri"] = stage_uri
    if not logs:
        with open(os.path.join(artifact.path, "README.txt"), "w", encoding="utf-8") as f:
            f.write("No TensorBoard logs: this stage ran with tracking.backend other than tensorboard.\n")
        return False
    fs, path = uris.filesystem(logs)
    fs.get(path.rstrip("/") + "/", artifact.path.rstrip("/") + "/", recursive=True)
    publish(artifact, uri=logs, stage_uri=stage_uri)
    return True
