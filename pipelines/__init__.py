"""Pipelines (recipes) composed from the stage components.

``PIPELINES`` is the explicit registry. Each module defines ``pipeline`` (a ``@dsl.pipeline``
function taking ``output_uri`` and ``config``), ``STAGES`` (the stages it runs, in order),
``DEFAULT_CONFIG`` (a YAML file beside it) and optionally ``prepare(config, run_dir)``, which
fills in local assets for a laptop run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PIPELINES: dict[str, str] = {
    "quickstart": "Tiny end-to-end run on a laptop: validate, distill, curate, sft, evaluate, deploy",
}


def load_pipeline(name: str) -> ModuleType:
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; pipelines are: {', '.join(PIPELINES)}")
    return importlib.import_module(f"distilflow.pipelines.{name}")
