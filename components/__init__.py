"""The stages, one folder each: ``config.py`` (the pydantic config), ``run.py`` (``run(config)``,
heavy imports inside it) and ``component.py`` (the thin KFP component).

``STAGES`` is the explicit registry, in lifecycle order.
"""

from __future__ import annotations

import importlib

STAGES: tuple[str, ...] = (
    "validate",
    "distill",
    "curate",
    "sft",
    "dpo",
    "reward",
    "rl",
    "evaluate",
    "deploy",
)

CONFIG_CLASSES = {
    "validate": "ValidateConfig",
    "distill": "DistillConfig",
    "curate": "CurateConfig",
    "sft": "SftConfig",
    "dpo": "DpoConfig",
    "reward": "RewardConfig",
    "rl": "RlConfig",
    "evaluate": "EvaluateConfig",
    "deploy": "DeployConfig",
}


def _check(stage: str) -> None:
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; stages are: {', '.join(STAGES)}")


def load_config_class(stage: str):
    """The ``<Stage>Config`` class of a stage (cheap: no torch)."""
    _check(stage)
    module = importlib.import_module(f"distilflow.components.{stage}.config")
    return getattr(module, CONFIG_CLASSES[stage])


def load_run(stage: str):
    """The ``run(config)`` function of a stage."""
    _check(stage)
    return importlib.import_module(f"distilflow.components.{stage}.run").run


def load_component(stage: str):
    """The KFP component of a stage."""
    _check(stage)
    return getattr(importlib.import_module(f"distilflow.components.{stage}.component"), stage)
