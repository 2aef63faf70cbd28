"""Configuration and result of the `sft` stage (imports without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distilflow.config import BaseConfig
from distilflow.outputs import METRIC
from distilflow.teachers.config import TeacherConfig
from distilflow.training.fields import RowCounts, TokenThroughput, TrainingConfig, TrainingResult
from distilflow.uri import Uri

WIRED = ("output_uri", "data_uri")
"""Fields the pipeline fills in: this stage's output folder and curate's output folder."""


class KdConfig(BaseConfig):
    """White-box knowledge distillation from the teacher's stored top-k log-probabilities (distill's
    ``logits``): the loss mixes cross-entropy on the teacher's tokens with a KL divergence to its
    distribution at every one of them (see ``components/sft/kd_loss.py``)."""

    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of the divergence; 1 - alpha weighs the cross-entropy (0: CE only)",
    )
    divergence: Literal["forward_kl", "reverse_kl", "mix"] = Field(
        "forward_kl",
        description="forward_kl: KL(teacher || student), mode covering; reverse_kl: KL(student || teacher), "
        "mode seeking; mix: (1 - reverse_weight) forward + reverse_weight reverse",
    )
    reverse_weight: float = Field(0.5, ge=0, le=1, description="Share of the reverse KL in divergence=mix")
    temperature: float = Field(
        1.0,
        gt=0,
        description="Softens teacher and student alike over the top-k outcomes (p^(1/T), renormalised); the "
        "divergence is scaled by T^2",
    )
    tail: Literal["bucket", "renormalize"] = Field(
        "bucket",
        description="bucket: the mass outside the teacher's top-k is one more outcome (exact, the student pays "
        "for mass it puts outside); renormalize: both distributions renormalised over the top-k (shape only)",
    )


class GkdConfig(BaseConfig):
    """On-policy distillation (GKD, Agarwal et al. 2024) with TRL's ``GKDTrainer``: with probability
    ``lmbda`` a batch's answers are sampled from the student itself, and the student learns the
    teacher's token distribution on them (generalized JSD with ``beta``)."""

    teacher: TeacherConfig = Field(
        description="The teacher: backend transformers (a model folder, run in-process) or openai (a vLLM "
        "server that scores given tokens with prompt_logprobs; set tokenizer to its tokenizer folder)"
    )
    lmbda: float = Field(
        0.5, ge=0, le=1, description="Fraction of batches whose answers the student samples (on-policy)"
    )
    beta: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Generalized JSD interpolation (TRL): 0 forward KL, 1 reverse KL, between a JSD",
    )
    temperature: float = Field(0.9, gt=0, description="Sampling temperature of the student's answers")
    max_new_tokens: int = Field(128, ge=1, description="Longest answer the student samples, in tokens")
    top_k: int = Field(
        20,
        ge=1,
        le=20,
        description="With a served teacher: log-probabilities per position it returns (the divergence is over "
        "these and the tail)",
    )

    @model_validator(mode="after")
    def _check_teacher(self) -> GkdConfig:
        if self.teacher.backend == "vllm":
            raise ValueError(
                "gkd.teacher.backend='vllm' is not supported in-process beside the student; serve the teacher "
                "with vLLM and use backend='openai' with its base_url, or backend='transformers'"
            )
        return self


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
    kd: KdConfig | None = Field(
        None,
        description="White-box KD: data_uri is a distill output with logits, and the loss mixes CE with a KL "
        "to the teacher's stored top-k (the student must share the teacher's vocabulary); None: plain SFT",
    )
    gkd: GkdConfig | None = Field(
        None,
        description="On-policy distillation (TRL GKDTrainer) with a live teacher, on data_uri's chats; "
        "None: plain SFT",
    )

    @model_validator(mode="after")
    def _check_distillation(self) -> SftConfig:
        if self.kd is not None and self.gkd is not None:
            raise ValueError(
                "kd (stored teacher logits) and gkd (a live teacher) are two losses; set one of them"
            )
        if (self.kd is not None or self.gkd is not None) and self.packing:
            raise ValueError("kd and gkd train on unpacked rows; set packing=false")
        return self

    if_no_examples: Literal["fail", "skip"] = Field(
        "fail",
        description="When the data holds no example at all (e.g. curate kept no trace with a correct answer): "
        "fail, or skip: train nothing and publish the starting model unchanged as this stage's model, with "
        "trained false and the reason in the result, so a demonstration run (the quickstart) goes on and says "
        "so instead of training on wrong answers",
    )


class SftResult(TokenThroughput, RowCounts, TrainingResult):
    """What an `sft` run produced (stored in its manifest, returned again on a rerun)."""

    loss: Literal["ce", "kd", "gkd"] = Field("ce", description="The loss trained with")
    final_ce: float | None = Field(
        None, description="kd: the cross-entropy per token at the last logged step", json_schema_extra=METRIC
    )
    final_divergence: float | None = Field(
        None,
        description="kd: the divergence to the teacher per token (times T^2) at the last logged step",
        json_schema_extra=METRIC,
    )
    trained: bool = Field(
        True,
        description="False when training was skipped (if_no_examples: skip): the model is the starting model",
    )
    skipped: str | None = Field(None, description="Why training was skipped (None: it was not)")
