"""Configuration and result of the `dpo` stage (imports without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilflow.config import BaseConfig
from distilflow.outputs import COUNT, METRIC
from distilflow.training.fields import RowCounts, TokenThroughput, TrainingConfig, TrainingResult
from distilflow.uri import Uri

WIRED = ("output_uri", "data_uri", "model")
"""Fields the pipeline fills in: this stage's output folder, curate's output folder, the SFT model."""


class RankConfig(BaseConfig):
    """Rank-DPO: the pairs are built here, the teacher's curated answer chosen over the current
    student's own answer to the same prompt (EasyDistill's rank-DPO; DPO, Rafailov et al. 2023)."""

    max_new_tokens: int = Field(1024, ge=1, description="Longest answer the student writes, in tokens")
    temperature: float = Field(0.7, ge=0, le=2, description="The student's sampling temperature (0 = greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="The student's nucleus sampling threshold")
    seed: int | None = Field(0, description="Sampling seed of the student's answers")
    batch_size: int = Field(8, ge=1, description="Prompts the student answers per generate() call")
    pair_beta: float | None = Field(
        None,
        gt=0,
        description="Per-pair beta as in CogPO: pair_beta * (1 + pair_beta_scale * gap), gap in [0, 1] from "
        "the answer checks (teacher right, student wrong: 1); null: no per-pair beta (dpo.beta)",
    )
    pair_beta_scale: float = Field(1.0, ge=0, description="How much beta grows with the gap")


class DpoConfig(TrainingConfig):
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
    learning_rate: float = Field(5e-7, gt=0, description="Peak AdamW learning rate (linear decay)")
    max_length: int = Field(
        8192,
        ge=16,
        description="Longest prompt+response in tokens; pairs with a longer side are dropped and counted, never truncated",
    )
    lora: bool = Field(
        False, description="Train a LoRA adapter (the reference is the base without it) and merge it"
    )
    rank: RankConfig | None = Field(
        None,
        description="Rank-DPO: read curate's SFT examples instead of its pairs; the start model answers each "
        "prompt and its answer is rejected against the teacher's; None: curate's preference pairs",
    )


class DpoResult(TokenThroughput, RowCounts, TrainingResult):
    """What a `dpo` run produced (stored in its manifest, returned again on a rerun)."""

    final_reward_accuracy: float | None = Field(
        description="Fraction of pairs in the last logged step whose implicit reward prefers the chosen answer",
        json_schema_extra=METRIC,
    )
    per_sample_beta: bool = Field(description="Whether per-pair betas (CogPO) were applied")
    final_reward_margin: float | None = Field(
        None,
        description="Mean implicit reward of chosen minus rejected at the last logged step",
        json_schema_extra=METRIC,
    )
    rank_pairs: int = Field(
        0, description="Rank-DPO: pairs built from the student's own answers", json_schema_extra=COUNT
    )
    rank_ties: int = Field(
        0,
        description="Rank-DPO: prompts left out because the student answered exactly as the teacher",
        json_schema_extra=COUNT,
    )
    student_accuracy: float | None = Field(
        None,
        description="Rank-DPO: share of the student's answers that state the reference (prompts with one)",
        json_schema_extra=METRIC,
    )
