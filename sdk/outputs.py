"""Stage outputs: ``config.resolved.yaml``, ``manifest.json`` and, last, a completion marker.

A stage writes everything under its output URI, then the manifest, then the marker. A reader
refuses a folder without the marker, so a crashed or half-written output is never taken as done.
A rerun with the same config returns the finished result instead of doing the work again.

A stage's Result model says which of its fields the manifest lists as counts and which as metrics
(``json_schema_extra=COUNT`` or ``METRIC``); ``StageOutput.finish(result)`` derives both from it, and
the KFP component logs the same numbers as its Metrics (``distilflow.artifacts.log_metrics``).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from typing import Any

from pydantic import BaseModel

from distilflow import __version__
from distilflow import uri as uris
from distilflow.errors import IncompleteOutputError

MARKER = "_COMPLETE"
MANIFEST = "manifest.json"
RESOLVED_CONFIG = "config.resolved.yaml"

COUNT: dict[str, Any] = {"manifest": "count"}
"""``json_schema_extra`` of a Result field the manifest lists under ``counts``. A dict field gives one
entry per key, named ``<field>_<key>`` (or as its ``each`` format says, e.g. ``{"each": "failed_{}"}``)."""

METRIC: dict[str, Any] = {"manifest": "metric"}
"""``json_schema_extra`` of a Result field the manifest lists under ``metrics`` (dicts as for ``COUNT``)."""


def declared(result: BaseModel, role: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``result`` declared with ``role`` (``COUNT`` or ``METRIC``), None values left out."""
    found: dict[str, Any] = {}
    for name, info in type(result).model_fields.items():
        extra = info.json_schema_extra
        if not isinstance(extra, dict) or extra.get("manifest") != role["manifest"]:
            continue
        value = getattr(result, name)
        if isinstance(value, dict):
            each = extra.get("each", f"{name}_{{}}")
            found.update({each.format(key): v for key, v in value.items() if v is not None})
        elif value is not None:
            found[name] = value
    return found


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions(
    names: tuple[str, ...] = ("torch", "transformers", "trl", "peft", "vllm", "kfp"),
) -> dict:
    """Versions of the packages that shape results (only those installed; nothing is imported)."""
    from importlib import metadata

    found = {"python": platform.python_version(), "distilflow": __version__}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


class StageOutput:
    """The output folder of one stage run, e.g. ``s3://bucket/runs/r1/curate``."""

    def __init__(self, uri: str, stage: str):
        self.uri = uri.rstrip("/") if "://" in uri else uri
        self.stage = stage
        self.started_at = _now()

    def path(self, *parts: str) -> str:
        return uris.join(self.uri, *parts)

    def is_complete(self) -> bool:
        return uris.exists(self.path(MARKER))

    def reusable(self, config: Any) -> dict | None:
        """The manifest of a complete earlier run with the same config fingerprint, else None."""
        if not self.is_complete():
            return None
        manifest = json.loads(uris.read_text(self.path(MANIFEST)))
        if manifest.get("config_fingerprint") == config.fingerprint():
            return manifest
        return None

    def begin(self, config: Any) -> None:
        """Start (or restart) the output: drop a stale marker, record the resolved config.

        Refuses first (writing nothing) when a key variable the config needs is unset (``unset_keys``).
        """
        from distilflow.errors import ConfigError
        from distilflow.secrets import unset_keys

        missing = unset_keys(config, self.stage) if isinstance(config, BaseModel) else []
        if missing:
            raise ConfigError(f"[{self.stage}] " + "; ".join(missing))
        if self.is_complete():
            uris.remove(self.path(MARKER))
        uris.write_text(self.path(RESOLVED_CONFIG), config.to_yaml())
        self._fingerprint = config.fingerprint()
        print(f"[{self.stage}] writing to {self.uri}", flush=True)

    def finish(
        self,
        result: BaseModel | dict[str, Any],
        inputs: dict[str, Any] | None = None,
        outputs: dict[str, str] | None = None,
        counts: dict[str, int] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Write ``manifest.json`` and then the completion marker; return the manifest.

        Args:
            result: The stage's Result; its ``COUNT`` and ``METRIC`` fields become the manifest's
                counts and metrics. (A plain dict, for outputs written by hand, declares none.)
            inputs: What the stage read, by name.
            outputs: What it wrote, by name.
            counts: Counts that are no field of the result, added to the declared ones.
            metrics: Metrics computed from several fields (e.g. a rate), added to the declared ones.
        """
        if isinstance(result, BaseModel):
            counts = {**declared(result, COUNT), **(counts or {})}
            metrics = {**declared(result, METRIC), **(metrics or {})}
            result = result.model_dump(mode="json")
        manifest = {
            "stage": self.stage,
            "uri": self.uri,
            "config_fingerprint": getattr(self, "_fingerprint", None),
            "started_at": self.started_at,
            "finished_at": _now(),
            "inputs": inputs or {},
            "outputs": outputs or {},
            "counts": counts or {},
            "metrics": metrics or {},
            "result": result,
            "versions": package_versions(),
            "command": sys.argv[:1],
        }
        uris.write_text(self.path(MANIFEST), json.dumps(manifest, indent=2, default=str))
        uris.write_text(self.path(MARKER), manifest["finished_at"] + "\n")
        print(f"[{self.stage}] complete: {self.uri}", flush=True)
        return manifest


def require_complete(uri: str, what: str = "input") -> dict[str, Any]:
    """Return the manifest of a finished stage output, or raise naming the missing marker."""
    marker = uris.join(uri, MARKER)
    if not uris.exists(marker):
        raise IncompleteOutputError(
            f"{what} {uri} has no completion marker ({MARKER}): the stage that writes it did not finish. "
            "Rerun that stage (it resumes) before this one."
        )
    return json.loads(uris.read_text(uris.join(uri, MANIFEST)))
