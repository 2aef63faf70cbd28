"""Liger's fused Triton kernels for the student (``use_liger_kernel``), when they apply.

Liger Kernel (LinkedIn, https://github.com/linkedin/Liger-Kernel; Hsu et al. 2024, "Liger Kernel: Efficient
Triton Kernels for LLM Training") replaces a model's RMSNorm, rotary embedding and SwiGLU MLP with fused
Triton kernels; transformers applies them to the loaded model when ``use_liger_kernel`` is set
(``transformers.integrations.liger``). TRL's SFT, DPO and GRPO trainers keep their own fused LM head
(chunked log-probabilities that never build the full logits), so Liger's fused linear cross-entropy stays
off there; the reward model has a scalar head. The kernels need Triton on a CUDA GPU: on a CPU the option
is off and the stage says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from distilflow.errors import ConfigError

LIGER_MODEL_TYPES = ("qwen2", "qwen3", "llama")
"""Student architectures the option is offered for (Liger patches each by its ``model_type``)."""

LIGER_INSTALL = "pip install 'distilflow[liger]' (liger-kernel==0.8.5; the train image has it)"


def model_type(model_path: str) -> str | None:
    """The ``model_type`` in a local model folder's ``config.json`` (None when there is none)."""
    try:
        with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None


def liger_arguments(enabled: bool, model_path: str, stage: str, gpu: bool) -> dict[str, Any]:
    """The ``TrainingArguments`` of ``use_liger_kernel`` for a stage: ``{}`` when off.

    Off on a CPU, with a line saying so. On a GPU, a student that is not Qwen2/Qwen3/Llama or a missing
    ``liger-kernel`` package is a config error (asked for, it would silently train without the kernels).

    Args:
        enabled: The stage config's ``use_liger_kernel``.
        model_path: The local student folder (its ``config.json`` names the architecture).
        stage: The stage name, for the log line and errors.
        gpu: Whether training runs on a CUDA GPU.
    """
    if not enabled:
        return {}
    if not gpu:
        print(
            f"[{stage}] use_liger_kernel: off on a CPU (Liger's kernels are Triton kernels for CUDA GPUs); "
            "training with the model's own layers",
            flush=True,
        )
        return {}
    kind = model_type(model_path)
    if kind not in LIGER_MODEL_TYPES:
        raise ConfigError(
            f"{stage}.use_liger_kernel=true: the student {model_path} is a {kind!r} model; Liger's kernels are "
            f"offered for {', '.join(LIGER_MODEL_TYPES)}. Set {stage}.use_liger_kernel=false"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError(
            f"{stage}.use_liger_kernel=true but liger-kernel is not installed: {LIGER_INSTALL}; or set "
            f"{stage}.use_liger_kernel=false"
        )
    print(f"[{stage}] use_liger_kernel: on (Liger's RMSNorm, RoPE and SwiGLU kernels, {kind})", flush=True)
    # TRL's trainers bring their own fused LM head; the reward model's head is a scalar
    return {"use_liger_kernel": True, "liger_kernel_config": {"fused_linear_cross_entropy": False}}
