"""Configuration and result of the `dpo` stage (imports without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distilflow.outputs import COUNT, METRIC
from distilflow.training.fields import LauncherFields, ScaleAndCheckpointFields
from distilflow.uri import Uri

WIRED = ("output_uri", "data_uri", "model")
"""Fields the pipeline fills in: this stage's output folder, curate's output folder, the SFT model."""


class DpoConfig(LauncherFields, ScaleAndCheckpointFields):
    """Preference optimisation of the student (TRL ``DPOTrainer``); CogPO when pairs carry a per-sample beta."""

    output_uri: Uri = Field(description="This stage's output folder; the model goes to <output_uri>/model")
    data_uri: Uri = Field(
        description="curate's output folder (its preference.jsonl is read; the _COMPLETE marker is required) "
        "or a .jsonl file of PreferencePair records"
    )
    model: Uri = Field(description="The policy to start from, usually the sft output model folder or URI")
    ref_model: Uri | None = Field(
        None,
        description="The frozen reference model of the DPO loss; None uses the start model itself (with "
        "lora: the policy with its adapter switched off, so no second copy is loaded)",
    )
    beta: float = Field(
        0.1, gt=0, description="DPO beta (KL strength) for pairs that carry no beta of their own"
    )
    per_sample_beta: bool = Field(
        True, description="Honour a pair's own beta (CogPO); false uses `beta` for every pair"
    )
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="DPO loss: sigmoid (DPO), ipo or hinge"
    )
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 trains for num_train_epochs instead")
    num_train_epochs: float = Field(1.0, gt=0, description="Passes over the pairs when max_steps is -1")
    learning_rate: float = Field(5e-7, gt=0, description="Peak AdamW learning rate (linear decay)")
    per_device_train_batch_size: int = Field(1, ge=1, description="Pairs per device per micro-batch")
    gradient_accumulation_steps: int = Field(
        8, ge=1, description="Micro-batches accumulated per optimizer step"
    )
    max_length: int = Field(
        8192,
        ge=16,
        description="Longest prompt+response in tokens; pairs with a longer side are dropped and counted, never truncated",
    )
    lora: bool = Field(
        False, description="Train a LoRA adapter (the reference is the base without it) and merge it"
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank (with lora=true)")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (with lora=true)")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute activations in the backward pass to save memory; None: on a GPU only"
    )
    seed: int = Field(0, description="Seed for data order, dropout and LoRA init")
    logging_steps: int = Field(10, ge=1, description="Log the loss every this many optimizer steps")

    @model_validator(mode="after")
    def _check_steps(self) -> DpoConfig:
        if self.max_steps == 0:
            raise ValueError(
                "max_steps=0 trains nothing; use -1 (train num_train_epochs) or a positive count"
            )
        return self


class DpoResult(BaseModel):
    """What a `dpo` run produced (stored in its manifest, returned again on a rerun)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_uri: str = Field(description="Folder of the optimised model and tokenizer (Hugging Face format)")
    first_loss: float | None = Field(
        description="DPO loss at the first logged step", json_schema_extra=METRIC
    )
    final_loss: float | None = Field(description="DPO loss at the last logged step", json_schema_extra=METRIC)
    final_reward_accuracy: float | None = Field(
        description="Fraction of pairs in the last logged step whose implicit reward prefers the chosen answer",
        json_schema_extra=METRIC,
    )
    steps: int = Field(description="Optimizer steps taken", json_schema_extra=METRIC)
    rows_read: int = Field(
        0,
        description="Pairs read from data_uri (before any was rejected or dropped)",
        json_schema_extra=COUNT,
    )
    rows_used: int = Field(description="Pairs trained on", json_schema_extra=COUNT)
    rows_dropped: int = Field(
        description="Pairs dropped for exceeding max_length tokens", json_schema_extra=COUNT
    )
    rows_rejected: int = Field(
        0,
        description="Pairs rejected because their messages hold chat-template control tokens",
        json_schema_extra=COUNT,
    )
    per_sample_beta: bool = Field(description="Whether per-pair betas (CogPO) were applied")
    final_reward_margin: float | None = Field(
        None,
        description="Mean implicit reward of chosen minus rejected at the last logged step",
        json_schema_extra=METRIC,
    )
    resumed_from_step: int | None = Field(
        None, description="Step of the checkpoint this run continued from; None when it started at step 0"
    )
    seed: int = Field(
        0, description="The seed used for data order, dropout and LoRA init", json_schema_extra=METRIC
    )
