"""Configuration and result of the `sft` stage (imports without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilflow.training.fields import RowCounts, TokenThroughput, TrainingConfig, TrainingResult
from distilflow.uri import Uri

WIRED = ("output_uri", "data_uri")
"""Fields the pipeline fills in: this stage's output folder and curate's output folder."""


class SftConfig(TrainingConfig):
    """Supervised fine-tuning of the student on curated reasoning traces (TRL ``SFTTrainer``)."""

    output_uri: Uri = Field(description="This stage's output folder; the model goes to <output_uri>/model")
    data_uri: Uri = Field(
        description="curate's output folder (its sft.jsonl is read; the _COMPLETE marker is required) "
        "or a .jsonl file of SftExample records"
    )
    model: Uri = Field(
        description="The student to fine-tune: a Hugging Face model folder or URI with a chat template"
    )
    num_train_epochs: float = Field(2.0, gt=0, description="Passes over the data when max_steps is -1")
    warmup_steps: float = Field(
        0,
        ge=0,
        description="Linear learning-rate warmup: optimizer steps (>= 1), or a fraction of the run (< 1)",
    )
    max_length: int = Field(
        8192,
        ge=16,
        description="Longest rendered example in tokens; longer rows are dropped and counted, never truncated",
    )
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
        description="Pack rows into max_length-token sequences without padding (TRL best-fit packing): "
        "padding-free batches whose rows are kept apart by their position ids (flash-attention's varlen "
        "kernel when installed on a GPU, else a block-diagonal mask with sdpa)",
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel for from_pretrained, e.g. sdpa, flash_attention_2 or flex_attention; "
        "None uses transformers' default (sdpa), or flash_attention_2 for packing on a GPU with flash-attn",
    )
    if_no_examples: Literal["fail", "skip"] = Field(
        "fail",
        description="When the data holds no example at all (e.g. curate kept no trace with a correct answer): "
        "fail, or skip: train nothing and publish the starting model unchanged as this stage's model, with "
        "trained false and the reason in the result, so a demonstration run (the quickstart) goes on and says "
        "so instead of training on wrong answers",
    )


class SftResult(TokenThroughput, RowCounts, TrainingResult):
    """What an `sft` run produced (stored in its manifest, returned again on a rerun)."""

    trained: bool = Field(
        True,
        description="False when training was skipped (if_no_examples: skip): the model is the starting model",
    )
    skipped: str | None = Field(None, description="Why training was skipped (None: it was not)")
