"""Every container image reference lives here, tagged with the package version.

Images come in three families (Dockerfiles under ``containers/``): ``base`` (the SDK only),
``train`` (torch, TRL, PEFT, DeepSpeed) and ``vllm`` (vLLM, transformers, math-verify, and TRL + DeepSpeed
for ``rl``, whose GRPO rollouts run on vLLM).
Set ``DISTILFLOW_IMAGE_REGISTRY`` at compile time to use a private registry.
"""

from __future__ import annotations

import os

from distilflow import __version__

DEFAULT_REGISTRY = "ghcr.io/distilflow"

STAGE_IMAGE_FAMILY = {
    "validate": "base",
    "distill": "vllm",
    "curate": "vllm",
    "sft": "train",
    "dpo": "train",
    "reward": "train",
    "rl": "vllm",  # GRPO rollouts on vLLM (TRL use_vllm); TRL and DeepSpeed are in this image too
    "evaluate": "vllm",
    "deploy": "vllm",
}


FAMILIES = ("base", "train", "vllm")
"""The image families; each has ``containers/<family>/Dockerfile``."""


def image(family: str, version: str = __version__) -> str:
    """The full image reference of an image family, e.g. ``ghcr.io/distilflow/distilflow-train:0.1.0``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown image family {family!r}; known: {', '.join(FAMILIES)}")
    registry = os.environ.get("DISTILFLOW_IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
    return f"{registry}/distilflow-{family}:{version}"


def stage_image(stage: str) -> str:
    """The image a stage's component runs in."""
    if stage not in STAGE_IMAGE_FAMILY:
        raise KeyError(f"no image for stage {stage!r}; stages with images: {', '.join(STAGE_IMAGE_FAMILY)}")
    return image(STAGE_IMAGE_FAMILY[stage])
