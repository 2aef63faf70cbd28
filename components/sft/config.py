"""Configuration and result of the `sft` stage (imports without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distilflow.outputs import COUNT, METRIC
from distilflow.training.fields import LauncherFields, ScaleAndCheckpointFields
from distilflow.uri import Uri

WIRED = ("output_uri", "data_uri")
"""Fields the pipeline fills in: this stage's output folder and curate's output folder."""


class SftConfig(LauncherFields, ScaleAndCheckpointFields):
    """Supervised fine-tuning of the student on curated reasoning traces (TRL ``SFTTrainer``)."""

    output_uri: Uri = Field(description="This stage's output folder; the model goes to <output_uri>/model")
    data_uri: Uri = Field(
        description="curate's output folder (its sft.jsonl is read; the _COMPLETE marker is required) "
        "or a .jsonl file of SftExample records"
    )
    model: Uri = Field(
        description="The student to fine-tune: a Hugging Face model folder or URI with a chat template"
    )
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 trains for num_train_epochs instead")
    num_train_epochs: float = Field(2.0, gt=0, description="Passes over the data when max_steps is -1")
    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate (linear decay)")
    per_device_train_batch_size: int = Field(1, ge=1, description="Examples per device per micro-batch")
    gradient_accumulation_steps: int = Field(
        8, ge=1, description="Micro-batches accumulated per optimizer step"
    )
    max_length: int = Field(
        8192,
        ge=16,
        description="Longest rendered example in tokens; longer rows are dropped and counted, never truncated",
    )
    lora: bool = Field(
        False, description="Train a LoRA adapter on all linear layers and merge it before saving"
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank (with lora=true)")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (with lora=true)")
    assistant_only_loss: bool = Field(
        True,
        description="Loss on assistant tokens only; needs a chat template with {% generation %} markers",
    )
    curriculum: bool = Field(
        False,
        description="Train on the rows in the order of sft.jsonl (curate's curriculum order), without "
        "shuffling; false shuffles them with `seed`",
    )
    packing: bool = Field(
        False,
        description="Pack rows into max_length-token sequences without padding (TRL best-fit packing). "
        "GPU only, with a varlen flash-attention attn_implementation: without it packed rows attend to "
        "each other",
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel for from_pretrained, e.g. flash_attention_2 or "
        "kernels-community/flash-attn2; None uses transformers' default (sdpa)",
    )
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute activations in the backward pass to save memory; None: on a GPU only"
    )
    seed: int = Field(0, description="Seed for weight init (LoRA), data order and dropout")
    logging_steps: int = Field(10, ge=1, description="Log the loss every this many optimizer steps")
    if_no_examples: Literal["fail", "skip"] = Field(
        "fail",
        description="When the data holds no example at all (e.g. curate kept no trace with a correct answer): "
        "fail, or skip: train nothing and publish the starting model unchanged as this stage's model, with "
        "trained false and the reason in the result, so a demonstration run (the quickstart) goes on and says "
        "so instead of training on wrong answers",
    )

    @model_validator(mode="after")
    def _check_steps(self) -> SftConfig:
        if self.max_steps == 0:
            raise ValueError(
                "max_steps=0 trains nothing; use -1 (train num_train_epochs) or a positive count"
            )
        if self.packing and "flash" not in (self.attn_implementation or ""):
            raise ValueError(
                f"packing=true needs a varlen flash-attention kernel, but attn_implementation="
                f"{self.attn_implementation!r}: packed rows would attend to each other. Set "
                "attn_implementation=flash_attention_2 (or kernels-community/flash-attn2) on a GPU, or packing=false"
            )
        return self


class SftResult(BaseModel):
    """What an `sft` run produced (stored in its manifest, returned again on a rerun)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_uri: str = Field(description="Folder of the fine-tuned model and tokenizer (Hugging Face format)")
    first_loss: float | None = Field(
        description="Training loss at the first logged step", json_schema_extra=METRIC
    )
    final_loss: float | None = Field(
        description="Training loss at the last logged step", json_schema_extra=METRIC
    )
    steps: int = Field(description="Optimizer steps taken", json_schema_extra=METRIC)
    rows_read: int = Field(
        0,
        description="Examples read from data_uri (before any was rejected or dropped)",
        json_schema_extra=COUNT,
    )
    rows_used: int = Field(description="Examples trained on", json_schema_extra=COUNT)
    rows_dropped: int = Field(
        description="Examples dropped for exceeding max_length tokens", json_schema_extra=COUNT
    )
    rows_rejected: int = Field(
        0,
        description="Examples rejected because their messages hold chat-template control tokens",
        json_schema_extra=COUNT,
    )
    resumed_from_step: int | None = Field(
        None, description="Step of the checkpoint this run continued from; None when it started at step 0"
    )
    seed: int = Field(
        0, description="The seed used for data order, dropout and LoRA init", json_schema_extra=METRIC
    )
    trained: bool = Field(
        True,
        description="False when training was skipped (if_no_examples: skip): the model is the starting model",
    )
    skipped: str | None = Field(None, description="Why training was skipped (None: it was not)")
