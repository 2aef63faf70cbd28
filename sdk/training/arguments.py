"""TRL/transformers training arguments from a stage config: CPU-safe defaults, bf16 on a GPU, DeepSpeed
ZeRO and FSDP configs, checkpoint cadence, and peft's LoRA settings."""

from __future__ import annotations

from typing import Any

from distilflow.errors import ConfigError
from distilflow.training.fields import TrainingConfig
from distilflow.training.lean import lean_arguments


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def training_arguments(cls: type, config: TrainingConfig, output_dir: str, **extra: Any) -> Any:
    """A TRL ``*Config`` (``cls``) filled from a stage config's common fields, with CPU-safe defaults.

    bf16 mixed precision only on a GPU: TRL defaults ``bf16=True``, which raises on a CPU without bf16.
    Gradient checkpointing follows ``config.gradient_checkpointing`` when it is set, else it is on on a
    GPU only (it only costs time on small CPU runs; under FSDP it becomes FSDP's own activation
    checkpointing). Checkpoints are written every ``config.save_steps`` steps when it is positive (see
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
    from distilflow import tracking

    gpu = on_gpu()
    tracked = tracking.current()  # the stage's training_run: TRL's callbacks log to its backend
    if config.fsdp != "none" and not gpu:
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
        if config.gradient_checkpointing is None
        else config.gradient_checkpointing,
        "dataloader_num_workers": 0,
        # without it accelerate ignores torchrun's process group on a CPU and every rank trains alone
        "use_cpu": not gpu,
        "report_to": tracked.report_to if tracked else "none",
        **({"run_name": tracked.run_name} if tracked else {}),
        "save_strategy": "no",
        "disable_tqdm": True,
        # fp32 master weights everywhere; on a GPU bf16 comes from autocast (mixed precision), as TRL intends
        "model_init_kwargs": {"dtype": "float32"},
        # no host sync in a step that does not log; batches prepared beside the step on a GPU
        **lean_arguments(gpu),
    }
    if config.deepspeed != "none":
        kwargs["deepspeed"] = deepspeed_config(config.deepspeed, config.offload)
    if config.fsdp != "none":
        # FSDP recomputes activations per wrapped layer itself; the model's own gradient checkpointing
        # would add a redundant all-gather in the backward pass
        kwargs.update(
            fsdp=True,
            fsdp_config=fsdp_config(config.fsdp, config.offload, kwargs["gradient_checkpointing"]),
            gradient_checkpointing=False,
        )
    if config.save_steps > 0:
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


def lora_config(config: TrainingConfig, task_type: str = "CAUSAL_LM") -> Any:
    """peft's LoRA settings of a training stage (``lora``, ``lora_r``, ``lora_alpha``; every linear
    layer), or None for full fine-tuning. ``SEQ_CLS`` (reward) trains and saves the new scalar head
    beside the adapter."""
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type=task_type
    )
