"""Helpers shared by the training stages (sft, dpo, reward, rl); heavy imports stay inside functions.

What lives here is used unchanged by two or more stages: finding a stage's JSONL input, counting the
tokens a chat renders to, TRL argument defaults for CPU and GPU, a progress callback for KFP logs,
checkpoints in object storage and resuming from them, reading losses back from
``trainer.state.log_history``, an HTML report of the curves, and saving the trained model (merged
when LoRA was used) with its tokenizer and a model card to an output URI.

Checkpoints: every process writes its part of ``checkpoint-<step>`` to its node's local scratch folder
every ``save_steps`` optimizer steps (model, optimizer, scheduler, trainer state with the data position
from rank 0; one RNG state per rank; ZeRO or FSDP shards per rank). Every process then uploads its
share of its node's files to ``<output_uri>/checkpoints/checkpoint-<step>/`` (a file named for a rank,
e.g. ``rng_state_3.pth``, by that rank) and writes its done marker ``_ranks/rank-<r>.json``; after a
barrier, rank 0 checks that all ranks' markers are there, writes ``_COMPLETE`` last, then deletes
all but the newest ``save_total_limit`` complete checkpoints. A rerun of an unfinished stage with
the same config downloads the newest complete checkpoint on every node and continues from it, each
rank with its own RNG state; a checkpoint without ``_COMPLETE`` (a process died during the upload)
is never used.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import Field, model_validator

from distilflow import records
from distilflow import uri as uris
from distilflow.config import BaseConfig
from distilflow.dlc import DlcSettings
from distilflow.errors import ConfigError
from distilflow.outputs import require_complete

R = TypeVar("R")


class ScaleAndCheckpointFields(BaseConfig):
    """Config fields shared unchanged by the training stages: processes per node, DeepSpeed or FSDP, and
    checkpoints in object storage. Plain fields and their cross-checks, no behaviour."""

    processes: int | Literal["auto"] = Field(
        "auto",
        description="Training processes on this node: auto = one per visible GPU (1 on a CPU); more than 1 "
        "makes the stage launch itself with torchrun (data parallel, or ZeRO/FSDP sharding)",
    )
    deepspeed: Literal["none", "zero2", "zero3"] = Field(
        "none",
        description="DeepSpeed ZeRO stage for multi-GPU runs (launch with torchrun/accelerate, one process "
        "per GPU): zero2 shards optimizer states and gradients, zero3 also the parameters",
    )
    fsdp: Literal["none", "full_shard", "shard_grad_op"] = Field(
        "none",
        description="PyTorch FSDP2 instead of DeepSpeed (GPU only, one process per GPU): full_shard shards "
        "parameters, gradients and optimizer states and re-gathers parameters for the backward pass "
        "(like ZeRO-3); shard_grad_op keeps them gathered between forward and backward (like ZeRO-2). "
        "Checkpoints are sharded per rank; the final model is gathered into one Hugging Face folder",
    )
    offload: bool = Field(
        False,
        description="With deepspeed: offload optimizer states (and zero3 parameters) to CPU memory; with "
        "fsdp: offload parameters, gradients and optimizer states to CPU memory",
    )
    save_steps: int = Field(
        200,
        ge=0,
        description="Write a checkpoint (model, optimizer, scheduler, RNG states, data position) to "
        "<output_uri>/checkpoints every this many optimizer steps; 0 writes none",
    )
    save_total_limit: int = Field(
        2, ge=1, description="Complete checkpoints kept in <output_uri>/checkpoints"
    )
    resume: bool = Field(
        True,
        description="Continue an unfinished run from its newest complete checkpoint (same config); false "
        "deletes the checkpoints and trains from step 0",
    )

    @model_validator(mode="after")
    def _check_scale(self) -> ScaleAndCheckpointFields:
        if self.deepspeed != "none" and self.fsdp != "none":
            raise ValueError(
                f"deepspeed={self.deepspeed!r} and fsdp={self.fsdp!r} both shard the model; choose one "
                "(set the other to none)"
            )
        if self.offload and self.deepspeed == "none" and self.fsdp == "none":
            raise ValueError(
                f"offload=true needs deepspeed=zero2 or zero3 (or fsdp), but deepspeed={self.deepspeed!r} "
                f"and fsdp={self.fsdp!r}; set one of them or offload=false"
            )
        if isinstance(self.processes, int) and self.processes < 1:
            raise ValueError(f"processes={self.processes} starts no process; use auto or a count >= 1")
        return self


TORCHRUN_ENVS = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
"""Kubeflow Trainer's ``TorchRunReservedEnvNames`` (pkg/constants/constants.go, v2.2-v2.3)."""


class LauncherFields(BaseConfig):
    """Config fields of a training stage that can run elsewhere than in its own pod: a Kubeflow Trainer
    ``TrainJob`` (``distilflow.trainjob``) or an Alibaba Cloud PAI-DLC job (``distilflow.dlc``) of
    ``nodes`` nodes. Plain fields and their checks; the stage's ``run`` dispatches with ``dispatch``."""

    launcher: Literal["local", "trainjob", "dlc"] = Field(
        "local",
        description="local trains in this pod (torchrun on this node when processes > 1); trainjob submits a "
        "Kubeflow Trainer TrainJob of `nodes` nodes (kubeflow SDK), dlc a PAI-DLC job (settings in `dlc`); "
        "either streams node-0's log, waits for the job and returns the result it wrote to output_uri",
    )
    nodes: int = Field(1, ge=1, description="With launcher=trainjob or dlc: training nodes (pods) of the job")
    gpus_per_node: int = Field(
        1,
        ge=0,
        description="With launcher=trainjob or dlc: GPUs requested per node (one training process each)",
    )
    runtime: str = Field(
        "torch-distributed",
        description="With launcher=trainjob: the (Cluster)TrainingRuntime the TrainJob references",
    )
    namespace: str | None = Field(
        None,
        description="With launcher=trainjob: namespace of the TrainJob; None uses the kubeconfig's or this "
        "pod's namespace",
    )
    env: list[str] = Field(
        default_factory=list,
        description="With launcher=trainjob or dlc: names of non-secret environment variables copied from "
        "this process's environment into every node (e.g. DISTILFLOW_S3_ENDPOINT_URL, AWS_DEFAULT_REGION)",
    )
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="With launcher=trainjob: environment variables of every node read from Kubernetes "
        "Secrets, NAME: secret-name/key (e.g. AWS_SECRET_ACCESS_KEY: s3-creds/secret-key); only the "
        "reference goes into the TrainJob (spec.trainer.env[].valueFrom.secretKeyRef), never the value",
    )
    dlc: DlcSettings = Field(
        default_factory=DlcSettings,
        description="With launcher=dlc: where the PAI-DLC job runs (region, workspace, resource group or "
        "instance type, job type); credentials come from the environment, never from the config",
    )

    @model_validator(mode="after")
    def _check_launcher(self) -> LauncherFields:
        bad = {k: v for k, v in self.secret_env.items() if v.count("/") != 1 or "" in v.split("/")}
        if bad:
            raise ValueError(
                f"secret_env values must be secret-name/key, got {bad}; e.g. AWS_SECRET_ACCESS_KEY: s3-creds/secret-key"
            )
        # Kubeflow Trainer's torch plugin refuses these in a TrainJob's env: its torchrun rendezvous sets them.
        reserved = sorted((set(self.env) | set(self.secret_env)) & set(TORCHRUN_ENVS))
        if reserved:
            raise ValueError(
                f"env/secret_env set {reserved}, which torchrun's rendezvous sets on every node; drop them"
            )
        return self


def dispatch(stage: str, config: Any) -> dict[str, Any] | None:
    """The stage's result when ``config.launcher`` runs it elsewhere (trainjob, dlc), else None.

    The launcher module is imported only when used; it submits a job whose nodes run the same stage
    with ``launcher: local`` and returns the result the job wrote to ``config.output_uri``.
    """
    launcher = getattr(config, "launcher", "local")
    if launcher == "trainjob":  # many nodes: a Kubeflow TrainJob trains, this process waits
        from distilflow import trainjob

        return trainjob.launch(stage, config)
    if launcher == "dlc":  # many nodes on Alibaba Cloud PAI-DLC
        from distilflow import dlc

        return dlc.launch(stage, config)
    return None


def resolve_data(data_uri: str, default_name: str, what: str) -> tuple[str, dict[str, Any] | None]:
    """The JSONL file a stage reads, and the upstream manifest when it came from a stage output.

    Args:
        data_uri: An upstream stage output folder (its completion marker is required) or a ``.jsonl``
            file used as is.
        default_name: File to read inside a stage output folder, e.g. ``sft.jsonl``.
        what: How error messages name this input, e.g. ``"sft data"``.

    Returns:
        ``(file_uri, manifest)``; ``manifest`` is None for a direct JSONL file.

    Raises:
        IncompleteOutputError: The folder has no completion marker.
        ConfigError: The folder is complete but holds no ``default_name``.
    """
    if data_uri.rstrip("/").endswith(".jsonl"):
        return data_uri, None
    manifest = require_complete(data_uri, what)
    file_uri = uris.join(data_uri, default_name)
    if not uris.exists(file_uri):
        raise ConfigError(
            f"{what}: {data_uri} is a finished stage output but has no {default_name}; point data_uri at the "
            f"output of the stage that writes {default_name} (or at a .jsonl file)"
        )
    return file_uri, manifest


def read_rows(data_uri: str, kind: str, model: type[R], what: str) -> list[R]:
    """All ``kind`` rows (e.g. ``sft``) of an upstream stage output (the shards its manifest lists, or
    its ``<kind>.jsonl``) or of a ``.jsonl`` file; an unfinished output or no rows at all is an error."""
    try:
        rows = list(records.iter_output_rows(data_uri, kind, model))
    except ConfigError as exc:  # name the setting to change
        raise ConfigError(f"{what}: data_uri {exc}") from None
    if not rows:
        raise records.RecordError(f"{what}: {data_uri} holds no {kind} rows; nothing to train on")
    return rows


def without_template_tokens(rows: list[R], stage: str) -> tuple[list[R], int]:
    """``rows`` (SftExample or PreferencePair) less those whose messages hold chat-template control
    tokens (``<|im_end|>``, ``</think>``, ...), and how many were rejected. As training text such a
    token would become the special token and change the example's structure (hostile or broken data)."""
    kept = [r for r in rows if not records.template_tokens(r.model_dump_json(include=_MESSAGE_FIELDS))]
    rejected = len(rows) - len(kept)
    if rejected:
        print(
            f"[{stage}] {rejected} rows rejected: their messages hold chat-template control tokens",
            flush=True,
        )
    return kept, rejected


_MESSAGE_FIELDS = {"messages", "prompt", "chosen", "rejected"}


def renders_reasoning(chat_template: str | None) -> bool:
    """Whether a chat template places ``reasoning_content`` itself (Qwen3, QwQ) or ignores it (Qwen2.5)."""
    return "reasoning_content" in (chat_template or "")


def message_dicts(
    messages: Sequence[Any], fold_reasoning: bool = False, drop_reasoning: bool = False
) -> list[dict[str, Any]]:
    """Chat messages as plain dicts for ``datasets``/chat templates; ``reasoning_content`` only where set.

    Args:
        messages: ``Message`` records.
        fold_reasoning: Put the reasoning into the content as ``<think>\nR\n</think>\n\nC`` (how
            DeepSeek-R1 distilled Qwen2.5 students write it) for templates that ignore
            ``reasoning_content`` and would otherwise drop it silently.
        drop_reasoning: Leave the reasoning out (an example trained with thinking off).
    """
    out = []
    for m in messages:
        d = {"role": m.role, "content": m.content}
        if m.reasoning_content is not None and not drop_reasoning:
            if fold_reasoning:
                d["content"] = f"<think>\n{m.reasoning_content.strip()}\n</think>\n\n{m.content.lstrip()}"
            else:
                d["reasoning_content"] = m.reasoning_content
        out.append(d)
    return out


def chat_length(tokenizer: Any, messages: list[dict[str, Any]], **template_kwargs: Any) -> int:
    """Number of tokens ``messages`` render to with the tokenizer's chat template (as TRL tokenizes them)."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **template_kwargs)[
        "input_ids"
    ]
    return len(ids)


def preference_rows(
    pairs: Sequence[Any], tokenizer: Any, max_length: int
) -> tuple[list[tuple[Any, dict[str, Any]]], int]:
    """Conversational prompt/chosen/rejected rows for TRL and how many pairs were too long.

    A pair is dropped when prompt+chosen or prompt+rejected renders to more than ``max_length``
    tokens: TRL would truncate (DPO) or silently filter (reward) it. Reasoning goes into the content
    (``<think>`` block) when the tokenizer's chat template ignores ``reasoning_content``.

    Returns:
        ``([(pair, row), ...], dropped)``, keeping each source ``PreferencePair`` beside its row.
    """
    kept = []
    dropped = 0
    fold = not renders_reasoning(tokenizer.chat_template)
    for pair in pairs:
        prompt, chosen, rejected = (message_dicts(m, fold) for m in (pair.prompt, pair.chosen, pair.rejected))
        if (
            max(chat_length(tokenizer, prompt + chosen), chat_length(tokenizer, prompt + rejected))
            > max_length
        ):
            dropped += 1
            continue
        kept.append((pair, {"prompt": prompt, "chosen": chosen, "rejected": rejected}))
    return kept, dropped


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def process_count(config: Any) -> int:
    """Training processes for one launch: ``config.processes``, where ``"auto"`` is one per visible GPU
    (1 on a CPU)."""
    wanted = getattr(config, "processes", 1)
    if wanted != "auto":
        return int(wanted)
    import torch

    return max(torch.cuda.device_count(), 1)


def needs_launch(config: Any) -> bool:
    """Whether ``run`` must start ``torchrun`` itself: more than one process wanted (or DeepSpeed or FSDP,
    which need a launcher's environment even for one: without it accelerate trains unsharded), and this
    process is not already one of a distributed launch (torchrun, accelerate and a Kubeflow TrainJob set
    LOCAL_RANK)."""
    if "LOCAL_RANK" in os.environ:
        return False
    sharded = getattr(config, "deepspeed", "none") != "none" or getattr(config, "fsdp", "none") != "none"
    return process_count(config) > 1 or sharded


def launch(stage: str, config: Any) -> dict[str, Any]:
    """Run the stage as ``torchrun --standalone --nproc_per_node N -m distilflow.cli stage STAGE``.

    The processes inherit this one's stdout/stderr (so their progress reaches the KFP log); the result
    is read back from the finished output's manifest.

    Returns:
        The stage's result, as stored in its manifest.

    Raises:
        DistilflowError: A training process failed (torchrun's exit code; the cause is in the log above).
    """
    import subprocess
    import sys

    from distilflow.errors import DistilflowError

    n = process_count(config)
    with tempfile.TemporaryDirectory(prefix=f"distilflow-{stage}-launch-") as tmp:
        path = os.path.join(tmp, f"{stage}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config.to_yaml())
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        command += ["-m", "distilflow.cli", "stage", stage, "--config", path]
        print(f"[{stage}] launching {n} processes: torchrun --nproc_per_node={n}", flush=True)
        code = subprocess.call(command)
    if code != 0:
        raise DistilflowError(
            f"{stage}: torchrun with {n} processes exited with code {code}; the failing rank's traceback is "
            "in the log above. A rerun resumes from the newest complete checkpoint"
        )
    return require_complete(config.output_uri, f"{stage} output")["result"]


def training_arguments(cls: type, config: Any, output_dir: str, **extra: Any) -> Any:
    """A TRL ``*Config`` (``cls``) filled from a stage config's common fields, with CPU-safe defaults.

    bf16 mixed precision only on a GPU: TRL defaults ``bf16=True``, which raises on a CPU without bf16.
    Gradient checkpointing follows ``config.gradient_checkpointing`` when the stage has that field and
    it is set, else it is on on a GPU only (it only costs time on small CPU runs; under FSDP it becomes
    FSDP's own activation checkpointing). Checkpoints are
    written every ``config.save_steps`` steps when the stage has that field and it is positive (see
    ``train_resumable``, which uploads them); otherwise none (``save_strategy="no"``): the stage saves
    the final model itself. ``config.deepspeed`` (``zero2``/``zero3``, with ``config.offload``) adds a
    ``deepspeed_config``, ``config.fsdp`` (``full_shard``/``shard_grad_op``) ``fsdp=True`` with an
    ``fsdp_config`` (the stage must then run under torchrun/accelerate, one process per GPU).

    Args:
        cls: ``trl.SFTConfig``, ``trl.DPOConfig``, ``trl.RewardConfig`` or ``trl.GRPOConfig``.
        config: The stage config; reads max_steps, num_train_epochs, learning_rate,
            per_device_train_batch_size, gradient_accumulation_steps, logging_steps and seed.
        output_dir: A local scratch folder for the trainer (``save_trained`` removes it).
        **extra: Stage-specific arguments (override the defaults).
    """
    gpu = on_gpu()
    if getattr(config, "fsdp", "none") != "none" and not gpu:
        # accelerate applies FSDP to GPU processes only: on a CPU it would silently train unsharded (DDP)
        raise ConfigError(
            f"fsdp={config.fsdp!r} needs GPUs (FSDP shards across CUDA devices; on a CPU accelerate ignores "
            "it); set fsdp=none on a CPU"
        )
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": config.max_steps,
        "num_train_epochs": config.num_train_epochs,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": gpu,
        "gradient_checkpointing": gpu
        if getattr(config, "gradient_checkpointing", None) is None
        else config.gradient_checkpointing,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": gpu,
        # without it accelerate ignores torchrun's process group on a CPU and every rank trains alone
        "use_cpu": not gpu,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        # fp32 master weights everywhere; on a GPU bf16 comes from autocast (mixed precision), as TRL intends
        "model_init_kwargs": {"dtype": "float32"},
    }
    if getattr(config, "deepspeed", "none") != "none":
        kwargs["deepspeed"] = deepspeed_config(config.deepspeed, config.offload)
    if getattr(config, "fsdp", "none") != "none":
        # FSDP recomputes activations per wrapped layer itself; the model's own gradient checkpointing
        # would add a redundant all-gather in the backward pass
        kwargs.update(
            fsdp=True,
            fsdp_config=fsdp_config(config.fsdp, config.offload, kwargs["gradient_checkpointing"]),
            gradient_checkpointing=False,
        )
    if getattr(config, "save_steps", 0) > 0:
        # full checkpoints (optimizer, scheduler, RNG) so a rerun resumes exactly; the local copies are
        # scratch: train_resumable uploads each and keeps save_total_limit of them in object storage
        kwargs.update(
            save_strategy="steps", save_steps=config.save_steps, save_total_limit=1, save_only_model=False
        )
    kwargs.update(extra)
    return cls(**kwargs)


def deepspeed_config(zero: str, offload: bool = False) -> dict[str, Any]:
    """A DeepSpeed config for the transformers Trainer: ZeRO stage 2 or 3, optionally offloaded to CPU.

    Batch sizes, accumulation, clipping and precision are ``"auto"``: the Trainer fills them from its
    own arguments, so they cannot disagree. ZeRO-3 gathers full 16-bit weights when the model is saved
    (else ``save_pretrained`` writes empty shards); offload moves optimizer states (ZeRO-2/3) and
    parameters (ZeRO-3) to CPU memory, trading step time for GPU memory.

    Args:
        zero: ``"zero2"`` or ``"zero3"``.
        offload: Offload to CPU memory.
    """
    if zero not in ("zero2", "zero3"):
        raise ValueError(f"zero must be 'zero2' or 'zero3', got {zero!r}")
    stage = 2 if zero == "zero2" else 3
    zero_opt: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        zero_opt.update(allgather_partitions=True, reduce_scatter=True, allgather_bucket_size=5e8)
    else:
        zero_opt.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload:
        zero_opt["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero_opt["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero_opt,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000,  # the progress callback logs; DeepSpeed's own lines are noise in KFP logs
        "wall_clock_breakdown": False,
    }


def fsdp_config(mode: str, offload: bool = False, activation_checkpointing: bool = False) -> dict[str, Any]:
    """The ``fsdp_config`` of ``TrainingArguments`` (with ``fsdp=True``) for PyTorch FSDP2.

    Every decoder layer is wrapped (the model's ``_no_split_modules``). ``full_shard`` re-shards
    parameters after the forward pass (least memory, like ZeRO-3); ``shard_grad_op`` keeps them gathered
    until the backward pass (one all-gather less per step, like ZeRO-2). Checkpoints are sharded (each
    rank writes its own part, which the checkpoint upload collects from every node); ``save_trained``
    gathers the full state dict for the final model. Mixed precision follows the Trainer's bf16.

    Args:
        mode: ``"full_shard"`` or ``"shard_grad_op"``.
        offload: Keep parameters, gradients and optimizer states in CPU memory between uses.
        activation_checkpointing: Recompute each layer's activations in the backward pass.
    """
    if mode not in ("full_shard", "shard_grad_op"):
        raise ValueError(f"mode must be 'full_shard' or 'shard_grad_op', got {mode!r}")
    return {
        "version": 2,
        "reshard_after_forward": mode == "full_shard",
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_offload": offload,
        "activation_checkpointing": activation_checkpointing,
    }


def uses_fsdp(trainer: Any) -> bool:
    return getattr(trainer, "is_fsdp_enabled", False)


def params_sharded(trainer: Any) -> bool:
    """Whether each process holds only a shard of the parameters (DeepSpeed ZeRO-3 or FSDP)."""
    if uses_fsdp(trainer):
        return True
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


LOGGED_KEYS = ("loss", "reward", "reward_std", "rewards/accuracies", "accuracy", "kl", "learning_rate")
"""Logged values worth a line in KFP logs (TRL logs many more; they stay in ``log_history``)."""


def _duration(seconds: float) -> str:
    """``1:02:03`` (or ``?`` when unknown) for progress lines."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(stage: str, step: int, total: int, start_step: int, elapsed: float) -> str:
    """``[stage] step 30/100 (30%) 1.50 steps/s ETA 0:00:47``.

    The rate counts the steps taken by this process only, so a run resumed at step 20 does not show
    the checkpoint's 20 steps as done in no time (which would make the ETA far too short).
    """
    taken = step - start_step
    rate = taken / elapsed if elapsed > 0 and taken > 0 else 0.0
    left = (total - step) / rate if rate > 0 else float("inf")
    pct = 100.0 * step / total if total else 100.0
    return f"[{stage}] step {step}/{total} ({pct:.0f}%) {rate:.2f} steps/s ETA {_duration(left)}"


def progress_callback(stage: str) -> Any:
    """A ``TrainerCallback`` printing step, rate, ETA and the latest logged values, for KFP logs."""
    import time

    from transformers import TrainerCallback

    class _ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            # called after a resumed trainer loaded the checkpoint's state: global_step is where it goes on
            self.start_step, self.start = state.global_step, time.monotonic()
            if state.is_world_process_zero and state.global_step:
                print(f"[{stage}] continuing at step {state.global_step}/{state.max_steps}", flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:  # one line per step in a multi-process run
                return
            shown = {k: v for k, v in (logs or {}).items() if k in LOGGED_KEYS}
            values = " ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, (int, float)))
            if not values:  # the end-of-training summary: the stage prints its own result
                return
            line = progress_line(
                stage, state.global_step, state.max_steps, self.start_step, time.monotonic() - self.start
            )
            print(f"{line} {values}", flush=True)

    return _ProgressCallback()


def lora_config(config: Any, task_type: str = "CAUSAL_LM") -> Any:
    """peft's LoRA settings of a training stage (``lora``, ``lora_r``, ``lora_alpha``; every linear
    layer), or None for full fine-tuning. ``SEQ_CLS`` (reward) trains and saves the new scalar head
    beside the adapter."""
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type=task_type
    )


def quiet_trainer(trainer: Any, stage: str) -> Any:
    """Swap the trainer's raw log-dict printer for the progress callback; return the trainer."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_callback(stage))
    return trainer


# ---- checkpoints in object storage ----

CHECKPOINTS = "checkpoints"
"""Folder under a stage's output URI holding ``checkpoint-<step>/`` folders."""

CHECKPOINT_MARKER = "_COMPLETE"
"""Written last into an uploaded checkpoint folder; a folder without it is never resumed from."""

RESUME_NEUTRAL = (
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "resume",
    # where and how a job is submitted, not what it trains (nodes and GPUs do change the world size)
    "launcher",
    "runtime",
    "namespace",
    "env",
    "secret_env",
    "dlc",
)
"""Config fields that do not change what is trained: changing them does not prevent resuming."""


class Checkpoint(NamedTuple):
    step: int
    uri: str
    marker: dict[str, Any] | None
    """The parsed completion marker, None when the folder has none (an interrupted upload)."""


def checkpoint_config(config: Any) -> dict[str, Any]:
    """The config fields that shape training (all but ``RESUME_NEUTRAL``), as checkpoints record them."""
    return {k: v for k, v in config.to_dict().items() if k not in RESUME_NEUTRAL}


def checkpoint_fingerprint(config: Any) -> str:
    import hashlib

    blob = json.dumps(checkpoint_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_checkpoints(output_uri: str) -> list[Checkpoint]:
    """The ``checkpoint-<step>`` folders under ``<output_uri>/checkpoints``, oldest first."""
    root = uris.join(output_uri, CHECKPOINTS)
    fs, path = uris.filesystem(root)
    if not uris.is_local(root):
        fs.invalidate_cache(path)  # another pod (the killed run) wrote here
    if not fs.exists(path):
        return []
    found = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if not match:
            continue
        uri = uris.join(root, name)
        marker_uri = uris.join(uri, CHECKPOINT_MARKER)
        marker = json.loads(uris.read_text(marker_uri)) if uris.exists(marker_uri) else None
        found.append(Checkpoint(int(match.group(1)), uri, marker))
    return sorted(found)


def _download_dir(uri: str, local: str) -> str:
    if uris.is_local(uri):
        shutil.copytree(uris.local_path(uri), local, dirs_exist_ok=True)
        return local
    fs, path = uris.filesystem(uri)
    os.makedirs(local, exist_ok=True)
    fs.get(path.rstrip("/") + "/", local.rstrip("/") + "/", recursive=True)
    return local


def _remove_checkpoint(ckpt: Checkpoint) -> None:
    # the marker goes first: a folder half deleted by a crash is then incomplete, never resumed from
    with contextlib.suppress(FileNotFoundError):  # another process got there first
        uris.remove(uris.join(ckpt.uri, CHECKPOINT_MARKER))
        uris.remove(ckpt.uri, recursive=True)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def resume_point(output_uri: str, config: Any, stage: str, was_complete: bool) -> Checkpoint | None:
    """The checkpoint a (re)run continues from, after clearing checkpoints that must not be used.

    - ``config.resume`` false: every checkpoint is deleted; training starts at step 0.
    - Folders without a completion marker are deleted (an interrupted upload; never resumed from).
    - Complete checkpoints written with a config that trains differently (fields other than
      ``RESUME_NEUTRAL`` differ): deleted when the previous run finished (``was_complete``: a new config
      means new training, as for any stage); refused with a ``ConfigError`` naming the differing fields
      when it did not (a preempted run whose config was changed: resuming would mix two recipes, and
      starting over would throw away its progress without being asked).
    - Otherwise the newest complete checkpoint, or None when there is none.
    """
    found = list_checkpoints(output_uri)
    if not found:
        return None
    if not getattr(config, "resume", True):
        print(
            f"[{stage}] resume=false: deleting {len(found)} checkpoint(s); training from step 0", flush=True
        )
        for ckpt in found:
            _remove_checkpoint(ckpt)
        return None
    for ckpt in found:
        if ckpt.marker is None:
            print(
                f"[{stage}] ignoring incomplete checkpoint {ckpt.uri} (no {CHECKPOINT_MARKER}); deleting it",
                flush=True,
            )
            _remove_checkpoint(ckpt)
    complete = [c for c in found if c.marker is not None]
    fingerprint = checkpoint_fingerprint(config)
    other = [c for c in complete if c.marker.get("config_fingerprint") != fingerprint]
    if other and was_complete:
        print(
            f"[{stage}] the finished run's {len(other)} checkpoint(s) used another config; deleting them",
            flush=True,
        )
        for ckpt in other:
            _remove_checkpoint(ckpt)
    elif other:
        newest = other[-1]
        raise ConfigError(
            f"{stage}: {newest.uri} was written by an unfinished run with a different config "
            f"({_differences(newest.marker.get('config', {}), checkpoint_config(config))}). Rerun with the "
            f"same config to resume from step {newest.step}, or set {stage}.resume=false to delete the "
            f"checkpoints under {uris.join(output_uri, CHECKPOINTS)} and train from step 0"
        )
    same = [c for c in complete if c not in other]
    return same[-1] if same else None


RANK_MARKERS = "_ranks"
"""Folder inside an uploaded checkpoint: one done marker per training process, ``rank-<r>.json``."""

_RANK_FILE = re.compile(
    r"(?:^|/)(?:rng_state_(\d+)\.pth|(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_\w+\.pt|__(\d+)_\d+\.distcp)$"
)
"""Checkpoint files written by one rank: the Trainer's RNG states, DeepSpeed ZeRO shards,
torch.distributed.checkpoint (FSDP) shards."""


def rank_of_file(path: str) -> int | None:
    """The rank that wrote a checkpoint file when its name says so (``rng_state_3.pth``: 3), else None."""
    match = _RANK_FILE.search(path)
    if not match:
        return None
    return int(next(g for g in match.groups() if g is not None))


def local_files(folder: str) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``folder`` (empty when it does not exist)."""
    found: dict[str, int] = {}
    for top, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(top, name)
            found[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    return found


def assign_uploads(listings: dict[int, tuple[str, dict[str, int]]]) -> dict[int, list[str]]:
    """Which process uploads which file of a checkpoint, so that every file goes up exactly once.

    Args:
        listings: For every rank, ``(node, {path: size})``: the node it runs on (processes that see
            the same scratch folder) and the files of the checkpoint there.

    Returns:
        For every rank, the paths it uploads. A file named for a rank (``rng_state_<r>.pth``, a ZeRO or
        FSDP shard of rank r) goes to that rank when its node holds it. Any other file goes to a process
        on the node of the lowest rank holding it (rank 0's node for the model, optimizer and trainer
        state), spread over that node's processes by size so that large checkpoints upload in parallel.
    """
    holders: dict[str, list[int]] = {}
    size: dict[str, int] = {}
    for rank, (_, files) in sorted(listings.items()):
        for path, n in files.items():
            holders.setdefault(path, []).append(rank)
            size[path] = n
    plan: dict[int, list[str]] = {rank: [] for rank in listings}
    load = dict.fromkeys(listings, 0)
    shared = []
    for path, ranks in holders.items():
        owner = rank_of_file(path)
        if owner is not None and owner in ranks:
            plan[owner].append(path)
            load[owner] += size[path]
        else:
            shared.append(path)
    for path in sorted(shared, key=lambda p: (-size[p], p)):
        ranks = holders[path]
        node = listings[min(ranks)][0]
        candidates = [r for r in ranks if listings[r][0] == node]
        rank = min(candidates, key=lambda r: (load[r], r))
        plan[rank].append(path)
        load[rank] += size[path]
    return {rank: sorted(paths) for rank, paths in plan.items()}


def _upload_files(local_dir: str, paths: list[str], dest: str) -> None:
    """Copy ``local_dir/<path>`` to ``dest/<path>`` for every path (object stores: concurrently)."""
    if not paths:
        return
    if uris.is_local(dest):
        for path in paths:
            source, target = os.path.join(local_dir, path), uris.local_path(uris.join(dest, path))
            if os.path.abspath(source) != os.path.abspath(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
        return
    fs, root = uris.filesystem(dest)
    fs.put([os.path.join(local_dir, p) for p in paths], [f"{root.rstrip('/')}/{p}" for p in paths])


def _all_gather(obj: Any) -> list[Any]:
    """``obj`` from every process, in rank order (just ``[obj]`` without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_markers(checkpoint_uri: str) -> set[int]:
    """The ranks whose done marker is in an uploaded checkpoint folder."""
    root = uris.join(checkpoint_uri, RANK_MARKERS)
    fs, path = uris.filesystem(root)
    if not uris.is_local(root):
        fs.invalidate_cache(path)
    if not fs.exists(path):
        return set()
    found = set()
    for entry in fs.ls(path, detail=False):
        match = re.fullmatch(r"rank-(\d+)\.json", entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            found.add(int(match.group(1)))
    return found


def upload_checkpoint(
    local: str, dest: str, rank: int, world_size: int, node: str, marker: dict[str, Any]
) -> dict[int, tuple[str, dict[str, int]]]:
    """Upload one checkpoint from every process's node and mark it complete; called by every process.

    The protocol (every step but the uploads is collective, so all processes call it together):

    1. rank 0 removes what an interrupted upload of the same step left at ``dest``; every process
       lists its node's ``local`` folder and all lists are exchanged (which also waits for rank 0);
    2. each process uploads its share (``assign_uploads``), then writes ``_ranks/rank-<r>.json``;
    3. after a barrier rank 0 checks that every rank's marker is there and writes ``_COMPLETE``
       (``marker`` plus the world size and the file list) last. A process that dies before its marker
       leaves the checkpoint incomplete: the job fails at the barrier and the folder is never resumed from.

    Returns:
        Every rank's ``(node, files)``, for the caller to tidy local copies.
    """
    from distilflow.errors import DistilflowError

    if rank == 0:
        uris.remove(dest, recursive=True)  # leftovers of an earlier, interrupted upload
    listings = dict(enumerate(_all_gather((node, local_files(local)))))
    mine = assign_uploads(listings)[rank]
    _upload_files(local, mine, dest)
    done = {
        "rank": rank,
        "node": node,
        "files": mine,
        "bytes": sum(listings[rank][1][p] for p in mine),
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    uris.write_text(uris.join(dest, RANK_MARKERS, f"rank-{rank:05d}.json"), json.dumps(done, indent=2))
    _barrier()
    if rank == 0:
        missing = sorted(set(range(world_size)) - rank_markers(dest))
        if missing:
            raise DistilflowError(
                f"checkpoint {dest}: ranks {missing} wrote no done marker to {RANK_MARKERS}/ although every "
                "process passed the barrier after uploading; the checkpoint is left incomplete"
            )
        files = sorted({p for _, found in listings.values() for p in found})
        complete = {**marker, "world_size": world_size, "files": files}
        uris.write_text(uris.join(dest, CHECKPOINT_MARKER), json.dumps(complete, indent=2))
    _barrier()
    return listings


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def node_name(scratch: str) -> str:
    """Names the node a process runs on: processes that see the same scratch folder share a node."""
    import socket

    return f"{socket.gethostname()}:{os.path.realpath(scratch)}"


def checkpoint_callback(output_uri: str, config: Any, stage: str) -> Any:
    """A ``TrainerCallback`` that uploads each checkpoint the trainer saves from every node, marks it
    complete once every rank has uploaded its part (``upload_checkpoint``) and keeps the newest
    ``config.save_total_limit`` complete ones under ``<output_uri>/checkpoints``.

    Only steps on the ``save_steps`` grid are saved: the trainer also saves after the last step,
    which would upload the optimizer state once more just before the final model is written.
    """
    from transformers import TrainerCallback

    root = uris.join(output_uri, CHECKPOINTS)
    recipe = checkpoint_config(config)
    fingerprint = checkpoint_fingerprint(config)

    class _UploadCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and state.global_step % config.save_steps:
                control.should_save = False
            return control

        def on_save(self, args, state, control, **kwargs):
            from accelerate import PartialState

            process = PartialState()
            process.wait_for_everyone()  # every rank has written its part of the checkpoint
            name = f"checkpoint-{state.global_step}"
            local, dest = os.path.join(args.output_dir, name), uris.join(root, name)
            marker = {
                "step": state.global_step,
                "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "config_fingerprint": fingerprint,
                "config": recipe,
            }
            node = node_name(args.output_dir)
            listings = upload_checkpoint(
                local, dest, process.process_index, process.num_processes, node, marker
            )
            if state.is_world_process_zero:
                print(f"[{stage}] checkpoint step {state.global_step} -> {dest}", flush=True)
                complete = [c for c in list_checkpoints(output_uri) if c.marker is not None]
                for old in complete[: -config.save_total_limit]:
                    _remove_checkpoint(old)
            if node != listings[0][0] and process.is_local_main_process:
                # only rank 0's trainer rotates its local copies; other nodes' copies are uploaded now
                shutil.rmtree(local, ignore_errors=True)
            process.wait_for_everyone()
            return control

    return _UploadCheckpoints()


def _load_optimizer_on_cpu(trainer: Any) -> None:
    """Work around a transformers/torch mismatch that breaks resuming a multi-process CPU run.

    With several processes the Trainer loads ``optimizer.pt`` with ``map_location=args.device``, which
    is ``cpu:0`` on a CPU; torch 2.13 cannot restore storages to ``cpu:0`` (only to ``cpu``). GPU runs
    are not affected. Patched on this trainer instance only, for the duration of the load.
    """
    import torch

    load_state = trainer._load_optimizer_and_scheduler

    def load_on_cpu(checkpoint: Any) -> Any:
        real_load = torch.load

        def cpu_load(*args: Any, **kwargs: Any) -> Any:
            where = kwargs.get("map_location")
            if isinstance(where, torch.device) and where.type == "cpu":
                kwargs["map_location"] = "cpu"
            return real_load(*args, **kwargs)

        torch.load = cpu_load
        try:
            return load_state(checkpoint)
        finally:
            torch.load = real_load

    trainer._load_optimizer_and_scheduler = load_on_cpu


def train_resumable(trainer: Any, output_uri: str, config: Any, stage: str, was_complete: bool) -> int:
    """``trainer.train()``, continuing from the newest usable checkpoint under ``output_uri``.

    With ``config.save_steps > 0`` each checkpoint is uploaded as the trainer writes it (see
    ``checkpoint_callback``). The checkpoint carries model, optimizer, scheduler and RNG states and the
    trainer state, so the step counter, learning rate schedule and data position continue where they
    stopped (the trainer skips the batches already seen in the current epoch). Every node downloads the
    checkpoint into its own scratch folder, so each rank finds its RNG state (and ZeRO/FSDP shard).

    Args:
        trainer: A transformers/TRL trainer built with ``training_arguments``.
        output_uri: The stage's output folder.
        config: The stage config (``save_steps``, ``save_total_limit``, ``resume``).
        stage: The stage name, for logs and errors.
        was_complete: Whether the output held a finished run before this one began.

    Returns:
        The trainer's step counter when training began: the checkpoint's step on a resume, else 0.
    """
    from transformers import TrainerCallback

    class _StartStep(TrainerCallback):
        step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            _StartStep.step = state.global_step  # after the trainer loaded the checkpoint's state

    start, local = None, None
    if config.save_steps > 0:
        # the main process clears unusable checkpoints first; the others then find the same newest one
        with trainer.args.main_process_first(local=False, desc="checkpoint selection"):
            start = resume_point(output_uri, config, stage, was_complete)
    if start is not None:
        saved_by = start.marker.get("world_size", 1)
        if saved_by != trainer.args.world_size and trainer.is_world_process_zero():
            print(
                f"[{stage}] warning: {start.uri} was written by {saved_by} process(es), this run has "
                f"{trainer.args.world_size}: ranks without an RNG state of their own start from fresh RNG "
                "states, and DeepSpeed/FSDP shards only load with the same number of processes",
                flush=True,
            )
        local = os.path.join(trainer.args.output_dir, f"checkpoint-{start.step}")
        with trainer.args.main_process_first(local=True, desc="checkpoint download"):
            if not os.path.exists(os.path.join(local, CHECKPOINT_MARKER)):  # one download per node
                print(f"[{stage}] resuming from {start.uri} (step {start.step})", flush=True)
                _download_dir(start.uri, local)
    if config.save_steps > 0:
        trainer.add_callback(checkpoint_callback(output_uri, config, stage))
    trainer.add_callback(_StartStep())
    if local is not None and trainer.args.device.type == "cpu" and trainer.args.world_size > 1:
        _load_optimizer_on_cpu(trainer)
    trainer.train(resume_from_checkpoint=local)
    return _StartStep.step


def logged(log_history: list[dict[str, Any]], key: str) -> list[float]:
    """Values of ``key`` in training logs, in step order (the end-of-training summary has other keys)."""
    return [float(entry[key]) for entry in log_history if key in entry]


def first_last(values: list[float]) -> tuple[float | None, float | None]:
    return (values[0], values[-1]) if values else (None, None)


# ---- report ----

REPORT = "report.html"


def _svg_plot(points: list[tuple[float, float]], title: str, width: int = 560, height: int = 220) -> str:
    """One line plot (steps on x) as inline SVG: the curve, its range on both axes, the title."""
    pad_l, pad_r, pad_t, pad_b = 64, 16, 24, 32
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    xr, yr = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    coords = [(pad_l + (x - x0) / xr * plot_w, pad_t + (1 - (y - y0) / yr) * plot_h) for x, y in points]
    line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    dots = "".join(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2"/>' for cx, cy in coords)
    esc = html.escape
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{esc(title)}" font-family="sans-serif" font-size="11">'
        f'<text x="{pad_l}" y="14" font-size="13" font-weight="bold">{esc(title)}</text>'
        f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end">{y1:.4g}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end">{y0:.4g}</text>'
        f'<text x="{pad_l}" y="{height - 12}">{x0:g}</text>'
        f'<text x="{pad_l + plot_w}" y="{height - 12}" text-anchor="end">{x1:g}</text>'
        f'<text x="{pad_l + plot_w / 2}" y="{height - 4}" text-anchor="middle">step</text>'
        f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>'
        f'<g fill="#1f77b4">{dots}</g></svg>'
    )


def curves(log_history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """``(step, value)`` for every training log entry holding ``key``."""
    import math

    return [
        (float(e["step"]), float(e[key]))
        for e in log_history
        if key in e and "step" in e and isinstance(e[key], (int, float)) and math.isfinite(e[key])
    ]


def report_html(
    stage: str, log_history: list[dict[str, Any]], keys: Sequence[str], summary: dict[str, Any]
) -> str:
    """A self-contained HTML page: the run's summary table and one SVG plot per logged key."""
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in summary.items())
    plots = []
    for key in keys:
        points = curves(log_history, key)
        if points:
            plots.append(f"<figure>{_svg_plot(points, key)}</figure>")
    body = "".join(plots) or "<p>No training values were logged.</p>"
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>distilflow {esc(stage)} report</title>'
        "<style>body{font-family:sans-serif;margin:1em}th{text-align:left;padding-right:1em}"
        "figure{display:inline-block;margin:0.5em}</style></head>"
        f"<body><h1>distilflow <code>{esc(stage)}</code></h1><table>{rows}</table>{body}</body></html>\n"
    )


def write_report(
    output_uri: str,
    stage: str,
    log_history: list[dict[str, Any]],
    keys: Sequence[str],
    summary: dict[str, Any],
) -> str:
    """Write ``report_html`` to ``<output_uri>/report.html``; return its URI."""
    uri = uris.join(output_uri, REPORT)
    uris.write_text(uri, report_html(stage, log_history, keys, summary))
    return uri


def lineage(data_uri: str) -> dict[str, Any]:
    """Where a training stage's data came from, read from the upstream outputs' manifests and configs.

    Best effort: a ``.jsonl`` file given directly, or outputs written by hand, yield less (never an
    error). Keys, when found: ``curate`` (its output URI), ``curate_recipe`` (curate's resolved config,
    the selection recipe), ``curate_counts``, ``distill`` (the traces' output URI) and ``teachers``
    (``name: model`` of every teacher in distill's resolved config).
    """
    from distilflow.config import load_yaml
    from distilflow.outputs import MANIFEST, RESOLVED_CONFIG

    found: dict[str, Any] = {}
    if data_uri.rstrip("/").endswith(".jsonl"):
        return found
    try:
        manifest = json.loads(uris.read_text(uris.join(data_uri, MANIFEST)))
        found["curate"] = data_uri
        found["curate_counts"] = manifest.get("counts", {})
        if uris.exists(uris.join(data_uri, RESOLVED_CONFIG)):
            recipe = load_yaml(uris.read_text(uris.join(data_uri, RESOLVED_CONFIG))) or {}
            found["curate_recipe"] = {k: v for k, v in recipe.items() if k not in ("output_uri", "data_uri")}
        traces = (manifest.get("inputs") or {}).get("traces")
        if traces:
            distill = traces.rsplit("/", 1)[0] if traces.endswith(".jsonl") else traces
            found["distill"] = distill
            resolved = uris.join(distill, RESOLVED_CONFIG)
            if uris.exists(resolved):
                cfg = load_yaml(uris.read_text(resolved)) or {}
                teachers = [cfg["teacher"]] if cfg.get("teacher") else list(cfg.get("teachers") or [])
                found["teachers"] = {
                    t.get("name") or str(t.get("model", "?")).rstrip("/").split("/")[-1]: t.get("model")
                    for t in teachers
                    if isinstance(t, dict)
                }
    except Exception as exc:  # a model card never fails a finished training run
        found["lineage_error"] = f"{type(exc).__name__}: {exc}"
    return found


def model_card(
    stage: str,
    base_model: str,
    data: str,
    result: dict[str, Any],
    config: dict[str, Any],
    auto_class: str = "AutoModelForCausalLM",
    origin: dict[str, Any] | None = None,
) -> str:
    """A README.md: what the model is, its data and teacher(s), the recipe, the metrics, how to load it.

    Args:
        stage: The training stage.
        base_model: The model training started from.
        data: The JSONL file trained on.
        result: The stage's result (losses, steps, rows used and dropped, ...): the metrics section.
        config: The stage's config: the training recipe.
        auto_class: The transformers class that loads the model.
        origin: ``lineage(config["data_uri"])``: upstream curate output, its recipe and counts, teachers.
    """
    origin = origin or {}
    teachers = origin.get("teachers") or {}
    front = (
        f"---\nlibrary_name: transformers\ntags:\n- distilflow\n- {stage}\n"
        f"base_model: {json.dumps(base_model)}\n---\n"
    )
    lines = [
        front,
        f"# distilflow `{stage}` model\n",
        f"Trained by the distilflow `{stage}` stage from `{base_model}` on `{data}`.\n",
        "## Data\n",
        f"- file: `{data}`",
        f"- rows used: {result.get('rows_used', '?')}, dropped for length: {result.get('rows_dropped', '?')}"
        f" (max_length {config.get('max_length', '?')} tokens; longer rows are dropped, never truncated)",
    ]
    if origin.get("curate"):
        lines.append(f"- curated by: `{origin['curate']}`")
    if origin.get("curate_counts"):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(origin["curate_counts"].items()))
        lines.append(f"- curate counts: {counts}")
    if origin.get("distill"):
        lines.append(f"- traces from: `{origin['distill']}`")
    lines.append("\n## Teacher\n")
    if teachers:
        lines += [f"- {name}: `{model}`" for name, model in sorted(teachers.items())]
    else:
        lines.append("- not recorded (the data was not read from a distill -> curate output)")
    lines += [
        "\n## Metrics\n",
        *(f"- {k}: {v}" for k, v in result.items()),
        "\n## Recipe\n",
        f"`{stage}` config:\n",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```\n",
    ]
    if origin.get("curate_recipe"):
        lines += [
            "`curate` config (data selection):\n",
            "```json",
            json.dumps(origin["curate_recipe"], indent=2, sort_keys=True, default=str),
            "```\n",
        ]
    lines += [
        "## Use\n",
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer",
        f'model = {auto_class}.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")  # the chat template is included',
        "```",
    ]
    return "\n".join(lines) + "\n"


def merge_lora(adapter_dir: str, out_dir: str, base_model: str, model_class: type, dtype: Any = None) -> Any:
    """Load ``base_model``, apply the saved LoRA adapter, merge it into the weights and save the result.

    This is how a LoRA model trained with sharded parameters (DeepSpeed ZeRO-3, FSDP) is merged: no
    process holds the whole model during training, so the Trainer gathers the adapter (``save_model``)
    and one process merges it into a fresh copy of the base on the CPU. Merged weights are
    ``W + (lora_alpha / r) * B @ A`` for every adapted layer (peft's ``merge_and_unload``).

    Args:
        adapter_dir: A folder written by ``PeftModel.save_pretrained`` (adapter_config.json + weights).
        out_dir: Where the merged model goes (Hugging Face format, no tokenizer).
        base_model: The local folder of the model the adapter was trained on.
        model_class: The transformers class of the base (e.g. ``Qwen3ForCausalLM``).
        dtype: Weights' dtype while merging and saving (default float32, as the stages train).

    Returns:
        The merged model (on the CPU).
    """
    import torch
    from peft import PeftModel

    with _zero3_off():  # else from_pretrained would partition the copy across processes that are not there
        base = model_class.from_pretrained(base_model, dtype=dtype or torch.float32)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(out_dir)
    return merged


@contextlib.contextmanager
def _zero3_off():
    """Hide the Trainer's DeepSpeed ZeRO-3 config from transformers/peft for a moment (one process works
    alone on a plain CPU model)."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover - transformers without the integration
        yield
        return
    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = ref


def _lora_base(model: Any) -> str:
    config = next(iter(model.peft_config.values()))
    base = getattr(config, "base_model_name_or_path", None)
    if not base or not os.path.isdir(base):
        raise ConfigError(
            f"cannot merge the LoRA adapter: its base model folder {base!r} is not on this node "
            "(train from a local folder or a URI distilflow materializes)"
        )
    return base


def save_trained(trainer: Any, uri: str, card: str) -> str:
    """Save the trained model and tokenizer in Hugging Face format, plus ``README.md``, to ``uri``.

    A LoRA model is merged into its base first, so downstream stages load a plain model: in place on
    the main process when every process holds the full model; with sharded parameters (ZeRO-3, FSDP)
    the Trainer gathers the adapter to the main process, which merges it into a fresh CPU copy of the
    base (``merge_lora``). A full model trained under ZeRO-3 or FSDP is gathered by the Trainer
    (ZeRO-3: ``stage3_gather_16bit_weights_on_model_save``; FSDP: a full state dict). Object storage
    gets a local copy uploaded in one go; only the main process writes and uploads. Every process
    must call it (gathering is collective).

    Returns:
        ``uri``.
    """
    from peft import PeftModel

    main = trainer.is_world_process_zero()
    local = uris.local_path(uri) if uris.is_local(uri) else tempfile.mkdtemp(prefix="distilflow-model-")
    if uses_fsdp(trainer):  # checkpoints are sharded per rank; the final model is one full state dict
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel) and params_sharded(trainer):
        adapter = tempfile.mkdtemp(prefix="distilflow-adapter-")
        trainer.save_model(adapter)  # collective: gathers the trainable (adapter) weights to the main process
        if main:
            merge_lora(adapter, local, _lora_base(model), type(model.get_base_model()))
            trainer.processing_class.save_pretrained(local)
        shutil.rmtree(adapter, ignore_errors=True)
    elif isinstance(model, PeftModel):
        # save_model would write the adapter only; downstream stages expect full weights
        if main:
            model.merge_and_unload().save_pretrained(local)
            trainer.processing_class.save_pretrained(local)
    else:
        trainer.save_model(local)
    if main:
        with open(os.path.join(local, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        for stale in ("training_args.bin",):  # pickled TrainingArguments: not needed to load, not portable
            path = os.path.join(local, stale)
            if os.path.exists(path):
                os.remove(path)
        uris.upload_dir(local, uri)
    # no process may finish the stage (write its completion marker) before the model is uploaded
    trainer.accelerator.wait_for_everyone()
    if not uris.is_local(uri):
        shutil.rmtree(local, ignore_errors=True)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # the trainer's scratch folder
    return uri


def scratch_dir(stage: str, output_uri: str) -> str:
    """A local folder for the trainer's own files (checkpoints before upload), shared by the processes
    of one launch on a node: each rank writes its RNG state (and ZeRO shards) into the same
    ``checkpoint-<step>`` folder that the main process uploads."""
    import hashlib

    # torchrun gives every rank of a launch the same run id; a single process gets its own folder
    launch = os.environ.get("TORCHELASTIC_RUN_ID") or str(os.getpid())
    key = hashlib.sha256(f"{output_uri}|{launch}".encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"distilflow-{stage}-{key}")
    os.makedirs(path, exist_ok=True)
    return path
