"""Configuration and result of the `reward` stage (imports without torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distilflow.config import BaseConfig
from distilflow.uri import Uri

WIRED = ("output_uri", "data_uri")
"""Fields the pipeline fills in: this stage's output folder and curate's output folder."""


class RewardConfig(BaseConfig):
    """A Bradley-Terry reward model distilled from preference pairs (TRL ``RewardTrainer``), checked on held-out pairs."""

    output_uri: Uri = Field(
        description="This stage's output folder; the reward model goes to <output_uri>/model"
    )
    data_uri: Uri = Field(
        description="curate's output folder (its preference.jsonl is read; the _COMPLETE marker is required) "
        "or a .jsonl file of PreferencePair records"
    )
    model: Uri = Field(
        description="Model folder or URI to start from: a causal LM (a fresh scalar head is added) or a "
        "sequence-classification model with one label"
    )
    heldout_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Fraction of pairs held out (at least one when > 0) to measure pairwise accuracy",
    )
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 trains for num_train_epochs instead")
    num_train_epochs: float = Field(
        1.0, gt=0, description="Passes over the training pairs when max_steps is -1"
    )
    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate (linear decay)")
    per_device_train_batch_size: int = Field(4, ge=1, description="Pairs per device per micro-batch")
    gradient_accumulation_steps: int = Field(
        2, ge=1, description="Micro-batches accumulated per optimizer step"
    )
    max_length: int = Field(
        8192,
        ge=16,
        description="Longest prompt+response in tokens; pairs with a longer side are dropped and counted, never truncated",
    )
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Weight of the term that keeps rewards centred on zero; null disables it"
    )
    seed: int = Field(0, description="Seed for the head init, the held-out split and data order")
    logging_steps: int = Field(10, ge=1, description="Log the loss every this many optimizer steps")

    @model_validator(mode="after")
    def _check_steps(self) -> RewardConfig:
        if self.max_steps == 0:
            raise ValueError(
                "max_steps=0 trains nothing; use -1 (train num_train_epochs) or a positive count"
            )
        return self


class RewardResult(BaseModel):
    """What a `reward` run produced (stored in its manifest, returned again on a rerun)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_uri: str = Field(
        description="Folder of the reward model (sequence classification, one label) and tokenizer"
    )
    first_loss: float | None = Field(description="Pairwise loss at the first logged step")
    final_loss: float | None = Field(description="Pairwise loss at the last logged step")
    train_accuracy_before: float = Field(
        description="Pairwise accuracy on the training pairs before training"
    )
    train_accuracy: float = Field(description="Pairwise accuracy on the training pairs after training")
    heldout_accuracy: float | None = Field(
        description="Fraction of held-out pairs scored chosen > rejected; null when nothing was held out"
    )
    steps: int = Field(description="Optimizer steps taken")
    rows_used: int = Field(description="Pairs trained on")
    rows_heldout: int = Field(description="Pairs held out for accuracy")
    rows_dropped: int = Field(description="Pairs dropped for exceeding max_length tokens")
