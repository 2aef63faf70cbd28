"""The stages, one folder each: ``config.py`` (the pydantic config), ``run.py`` (``run(config)``,
heavy imports inside it) and ``component.py`` (the thin KFP component).

``STAGES`` is the explicit registry, in lifecycle order; ``iter_config_classes`` walks every config
class the stages use.
"""

from __future__ import annotations

import importlib
import typing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distilflow.config import BaseConfig

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


def iter_config_classes() -> list[type[BaseConfig]]:
    """Every config class the project ships: the teacher's, each stage's and every config nested in
    them (the documentation test walks them all)."""
    from distilflow.teachers.config import TeacherConfig

    classes: list[type[BaseConfig]] = [TeacherConfig]
    for stage in STAGES:
        classes.append(load_config_class(stage))
    seen: list[type[BaseConfig]] = []
    stack = list(classes)
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for field in cls.model_fields.values():
            stack.extend(_nested_models(field.annotation))
    return seen


def _nested_models(annotation: Any) -> list[type[BaseConfig]]:
    from distilflow.config import BaseConfig

    found = []
    if isinstance(annotation, type) and issubclass(annotation, BaseConfig):
        found.append(annotation)
    for arg in typing.get_args(annotation):
        found.extend(_nested_models(arg))
    return found
