"""Config and result fields shared by the training stages (sft, dpo, reward, rl): plain pydantic fields
and their cross-checks, no behaviour. This is the only module of ``distilflow.training`` a config
module imports.

``TrainingConfig`` is the base of the four stage configs (as TRL's ``*Config`` classes inherit
``TrainingArguments``): the optimisation settings every stage has, plus processes, sharding and
checkpoints (``ScaleAndCheckpointFields``) and where the training runs (``LauncherFields``). A stage
config redeclares a field only where its default or meaning differs. Fields that do not change what
is trained (how often to log or checkpoint, where a job is submitted) say so with
``json_schema_extra=RESUME_NEUTRAL``: changing them does not prevent resuming from a checkpoint.

``TrainingResult`` is the base of their results (the model, the losses, steps, resume step, seed),
``RowCounts`` what sft and dpo did with the rows they read and ``TokenThroughput`` the tokens sft, dpo
and reward trained on (padding share, tokens/s).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distilflow.config import BaseConfig
from distilflow.launch.dlc import DlcSettings
from distilflow.outputs import COUNT, METRIC
from distilflow.secrets import EnvName, EnvNameMap
from distilflow.tracking import TRACKING_FIELD, TrackingConfig

RESUME_NEUTRAL: dict[str, Any] = {"resume_neutral": True}
"""``json_schema_extra`` of a field that does not change what is trained (see ``resume_neutral``)."""


def resume_neutral(config: BaseConfig) -> set[str]:
    """The names of ``config``'s fields declared ``RESUME_NEUTRAL``."""
    return {
        name
        for name, info in type(config).model_fields.items()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("resume_neutral")
    }


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
        json_schema_extra=RESUME_NEUTRAL,
    )
    save_total_limit: int = Field(
        2,
        ge=1,
        description="Complete checkpoints kept in <output_uri>/checkpoints",
        json_schema_extra=RESUME_NEUTRAL,
    )
    resume: bool = Field(
        True,
        description="Continue an unfinished run from its newest complete checkpoint (same config); false "
        "deletes the checkpoints and trains from step 0",
        json_schema_extra=RESUME_NEUTRAL,
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
    ``TrainJob`` (``distilflow.launch.trainjob``) or an Alibaba Cloud PAI-DLC job (``distilflow.launch.dlc``) of
    ``nodes`` nodes. Plain fields and their checks; the stage's ``run`` dispatches with ``dispatch``."""

    launcher: Literal["local", "trainjob", "dlc"] = Field(
        "local",
        description="local trains in this pod (torchrun on this node when processes > 1); trainjob submits a "
        "Kubeflow Trainer TrainJob of `nodes` nodes (kubeflow SDK), dlc a PAI-DLC job (settings in `dlc`); "
        "either streams node-0's log, waits for the job and returns the result it wrote to output_uri",
        json_schema_extra=RESUME_NEUTRAL,
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
        json_schema_extra=RESUME_NEUTRAL,
    )
    namespace: str | None = Field(
        None,
        description="With launcher=trainjob: namespace of the TrainJob; None uses the kubeconfig's or this "
        "pod's namespace",
        json_schema_extra=RESUME_NEUTRAL,
    )
    env: list[EnvName] = Field(
        default_factory=list,
        description="With launcher=trainjob or dlc: names of non-secret environment variables copied from "
        "this process's environment into every node (e.g. DISTILFLOW_S3_ENDPOINT_URL, AWS_DEFAULT_REGION)",
        json_schema_extra=RESUME_NEUTRAL,
    )
    secret_env: EnvNameMap = Field(
        default_factory=dict,
        description="With launcher=trainjob: environment variables of every node read from Kubernetes "
        "Secrets, NAME: secret-name/key (e.g. AWS_SECRET_ACCESS_KEY: s3-creds/secret-key); only the "
        "reference goes into the TrainJob (spec.trainer.env[].valueFrom.secretKeyRef), never the value",
        json_schema_extra=RESUME_NEUTRAL,
    )
    dlc: DlcSettings = Field(
        default_factory=DlcSettings,
        description="With launcher=dlc: where the PAI-DLC job runs (region, workspace, resource group or "
        "instance type, job type); credentials come from the environment, never from the config",
        json_schema_extra=RESUME_NEUTRAL,
    )

    @model_validator(mode="after")
    def _check_launcher(self) -> LauncherFields:
        bad = sorted(k for k, v in self.secret_env.items() if v.count("/") != 1 or "" in v.split("/"))
        if bad:
            # the values are not shown: a key pasted there must not reach a terminal or a log
            raise ValueError(
                f"secret_env values must be secret-name/key, not {bad}'s (not shown); e.g. "
                "AWS_SECRET_ACCESS_KEY: s3-creds/secret-key"
            )
        # Kubeflow Trainer's torch plugin refuses these in a TrainJob's env: its torchrun rendezvous sets them.
        reserved = sorted((set(self.env) | set(self.secret_env)) & set(TORCHRUN_ENVS))
        if reserved:
            raise ValueError(
                f"env/secret_env set {reserved}, which torchrun's rendezvous sets on every node; drop them"
            )
        return self


class TrainingConfig(LauncherFields, ScaleAndCheckpointFields):
    """The base of the training stage configs: the optimisation settings every stage has. A stage
    redeclares a field only where its default or meaning differs (its ``learning_rate``, say)."""

    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 trains for num_train_epochs instead")
    num_train_epochs: float = Field(
        1.0, gt=0, description="Passes over the training rows when max_steps is -1"
    )
    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate (linear decay)")
    per_device_train_batch_size: int = Field(1, ge=1, description="Rows per device per micro-batch")
    gradient_accumulation_steps: int = Field(
        8, ge=1, description="Micro-batches accumulated per optimizer step"
    )
    lora: bool = Field(
        False, description="Train a LoRA adapter on all linear layers and merge it before saving"
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank (with lora=true)")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (with lora=true)")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute activations in the backward pass to save memory; None: on a GPU only"
    )
    use_liger_kernel: bool = Field(
        False,
        description="Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU) in a Qwen2/Qwen3/Llama student: less "
        "memory and time per step on a CUDA GPU; off (and said so) on a CPU; needs distilflow[liger]",
        json_schema_extra=RESUME_NEUTRAL,
    )
    seed: int = Field(0, description="Seed for weight init (LoRA), data order and dropout")
    logging_steps: int = Field(
        10,
        ge=1,
        description="Log the loss every this many optimizer steps",
        json_schema_extra=RESUME_NEUTRAL,
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Experiment tracking: {backend: mlflow | tensorboard | wandb | none, uri, experiment, "
        "run_name, ...} (TRL's report_to; distilflow.tracking); not part of the fingerprint",
        json_schema_extra=TRACKING_FIELD,
    )

    @model_validator(mode="after")
    def _check_steps(self) -> TrainingConfig:
        if self.max_steps == 0:
            raise ValueError(
                "max_steps=0 trains nothing; use -1 (train num_train_epochs) or a positive count"
            )
        return self


class TrainingResult(BaseModel):
    """The base of the training stages' results (stored in the manifest, returned again on a rerun)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_uri: str = Field(description="Folder of the trained model and tokenizer (Hugging Face format)")
    first_loss: float | None = Field(
        description="The stage's training loss at the first logged step", json_schema_extra=METRIC
    )
    final_loss: float | None = Field(
        description="The stage's training loss at the last logged step", json_schema_extra=METRIC
    )
    steps: int = Field(description="Optimizer steps taken", json_schema_extra=METRIC)
    resumed_from_step: int | None = Field(
        None, description="Step of the checkpoint this run continued from; None when it started at step 0"
    )
    seed: int = Field(0, description="The seed the run used", json_schema_extra=METRIC)
    tracking_run: str | None = Field(
        None, description="The MLflow run id of this stage run (tracking.backend mlflow); None otherwise"
    )


class RowCounts(BaseModel):
    """What a stage did with the rows (examples, pairs) it read: a block of its result."""

    rows_read: int = Field(
        0, description="Rows read from data_uri (before any was rejected or dropped)", json_schema_extra=COUNT
    )
    rows_used: int = Field(description="Rows trained on", json_schema_extra=COUNT)
    rows_dropped: int = Field(
        description="Rows dropped for exceeding max_length tokens", json_schema_extra=COUNT
    )
    rows_rejected: int = Field(
        0,
        description="Rows rejected because their messages hold chat-template control tokens",
        json_schema_extra=COUNT,
    )


class TokenThroughput(BaseModel):
    """The tokens a stage trained on, counted from the batches its trainer saw: a block of the results of
    sft, dpo and reward (``distilflow.training.throughput``)."""

    tokens_trained: int | None = Field(
        None,
        description="Real (non-padding) tokens in the batches this run trained on, counted on the device",
        json_schema_extra=COUNT,
    )
    padding_share: float | None = Field(
        None,
        description="Padding tokens / all token slots of the batches trained on (0 for padding-free batches)",
        json_schema_extra=METRIC,
    )
    tokens_per_second: float | None = Field(
        None,
        description="tokens_trained / seconds from the first to the last training step of this run",
        json_schema_extra=METRIC,
    )
