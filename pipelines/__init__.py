"""Pipelines (recipes) composed from the stage components.

``PIPELINES`` is the explicit registry. Each module defines ``pipeline`` (a ``@dsl.pipeline``
function taking at least ``output_uri`` and ``config``), ``STAGES`` (the stages it runs, in order),
``DEFAULT_CONFIG`` (a YAML file beside it) and optionally ``prepare(config, run_dir)``, which
fills in local assets for a laptop run. The recipes (all but ``quickstart``) also take the console
parameters documented in ``common.py``; see ``README.md`` in this folder.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PIPELINES: dict[str, str] = {
    "quickstart": "Tiny end-to-end run on a laptop: validate, distill, curate, sft, evaluate, deploy",
    "slow_thinking": "DistilQwen2.5-R1: distill, curate (judge + CRV), sft, dpo (CogPO), evaluate, deploy",
    "thoughtx": "ThoughtX: multi-teacher distill, RV/CD curriculum mix, curriculum sft, evaluate",
    "thoughty": "ThoughtY: thoughtx for Qwen3 students, thinking on and off, evaluated in both modes",
    "reward_rl": "Distilled reward model, calibration gate, GRPO, evaluate",
    "lifecycle": "Every stage, with switches for dpo, reward + rl and deploy",
    "whitebox": "White-box distillation: teacher top-k logprobs, KD sft (CE + KL), evaluate",
}


def load_pipeline(name: str) -> ModuleType:
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; pipelines are: {', '.join(PIPELINES)}")
    return importlib.import_module(f"distilflow.pipelines.{name}")
