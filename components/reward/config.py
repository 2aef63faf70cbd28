"""Configuration and result of the `reward` stage (imports without torch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from distilflow.outputs import COUNT, METRIC
from distilflow.teachers.config import TeacherConfig
from distilflow.training.fields import TokenThroughput, TrainingConfig, TrainingResult
from distilflow.uri import Uri

WIRED = ("output_uri", "data_uri")
"""Fields the pipeline fills in: this stage's output folder and curate's output folder."""


class RewardConfig(TrainingConfig):
    """A Bradley-Terry reward model distilled from preference pairs (TRL ``RewardTrainer``), published only
    after a calibration gate on held-out pairs."""

    output_uri: Uri = Field(
        description="This stage's output folder; the reward model goes to <output_uri>/model"
    )
    data_uri: Uri = Field(
        description="curate's output folder (its preference.jsonl or scored.jsonl is read, see pairs_from; the "
        "_COMPLETE marker is required) or a .jsonl file of PreferencePair (or, with pairs_from=scored, Scored) records"
    )
    model: Uri = Field(
        description="Model folder or URI to start from: a causal LM (a fresh scalar head is added) or a "
        "sequence-classification model with one label"
    )
    pairs_from: Literal["preference", "scored"] = Field(
        "preference",
        description="preference: curate's preference.jsonl (one best-vs-worst pair per problem); scored: pairs "
        "built here from curate's scored.jsonl, up to pairs_per_problem per problem. Either way a pair is ordered "
        "by verified correctness (right > unverified > wrong), then by how close the trace's RV is to the target "
        "for the problem's CD (curate's rule and settings), then by logic; pairs that tie are not made",
    )
    pairs_per_problem: int = Field(
        4,
        ge=1,
        description="With pairs_from=scored: most pairs per problem, those with the widest preference gap first",
    )
    judge: TeacherConfig | None = Field(
        None,
        description="Optional teacher judge of pairwise preferences (any backend of the teacher contract): it sees "
        "both answers of each pair in both orders (to cancel position bias); a pair whose two verdicts disagree is "
        "dropped and counted; null: no judging",
    )
    cache_uri: Uri | None = Field(
        None,
        description="Teacher cache of the judge's verdicts (distilflow.teachers.cache); None: <output_uri>/cache. Share it "
        "with curate's or distill's cache_uri: keys cover the model and the whole request",
    )
    judge_mode: Literal["logprobs", "generate"] = Field(
        "logprobs",
        description="logprobs: the judge answers one digit (1 or 2) and its next-token probabilities are used; "
        "generate: the judge writes <choice>1</choice> or <choice>2</choice> (unparseable verdicts are counted "
        "and the pair dropped)",
    )
    judge_policy: Literal["label", "agree"] = Field(
        "label",
        description="With a judge: label orders each pair by the judge's (consistent) verdict; agree keeps only "
        "the pairs where the judge agrees with curate's order",
    )
    labels_uri: Uri | None = Field(
        None,
        description="Optional held-out teacher/human labels: a .jsonl of PreferencePair records, never trained on; "
        "the reward model's agreement with them is measured (and gated with min_label_agreement)",
    )
    heldout_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Fraction of problems whose pairs are held out (at least one when > 0) to measure pairwise "
        "accuracy; pairs of one problem never straddle the split",
    )
    min_heldout_accuracy: float | None = Field(
        0.6,
        ge=0,
        le=1,
        description="Calibration gate: the stage fails, publishing nothing, when the held-out pairwise accuracy "
        "is below this; null disables the gate",
    )
    min_label_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Calibration gate on labels_uri: the stage fails when the agreement with those labels is "
        "below this; null reports the agreement without gating on it",
    )
    cd_bins: list[float] = Field(
        default_factory=lambda: [0.0, 3.0, 6.0, 9.0],
        description="CD bin edges for the held-out accuracy by cognitive difficulty in the report (bin i is "
        "[edge_i, edge_i+1), the last closed); a pair's CD is its problem's mean judged CD from scored.jsonl",
    )
    num_train_epochs: float = Field(
        1.0, gt=0, description="Passes over the training pairs when max_steps is -1"
    )
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
    lora: bool = Field(
        False,
        description="Train a LoRA adapter (and the scalar head) instead of all weights; merged before saving",
    )
    seed: int = Field(0, description="Seed for the head init, the held-out split and data order")

    @model_validator(mode="after")
    def _check_gates(self) -> RewardConfig:
        problems = []
        if self.min_heldout_accuracy is not None and self.heldout_fraction <= 0:
            problems.append(
                f"min_heldout_accuracy={self.min_heldout_accuracy} gates on held-out pairs but heldout_fraction="
                f"{self.heldout_fraction} holds none out; set heldout_fraction > 0 or min_heldout_accuracy: null"
            )
        if self.min_label_agreement is not None and not self.labels_uri:
            problems.append(
                f"min_label_agreement={self.min_label_agreement} needs labels_uri (held-out labelled pairs)"
            )
        edges = self.cd_bins
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            problems.append(f"cd_bins={edges} must be at least two strictly ascending edges")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RewardResult(TokenThroughput, TrainingResult):
    """What a `reward` run produced (stored in its manifest, returned again on a rerun)."""

    model_uri: str = Field(
        description="Folder of the reward model (sequence classification, one label) and tokenizer"
    )
    train_accuracy_before: float = Field(
        description="Pairwise accuracy on the training pairs before training", json_schema_extra=METRIC
    )
    train_accuracy: float = Field(
        description="Pairwise accuracy on the training pairs after training", json_schema_extra=METRIC
    )
    heldout_accuracy: float | None = Field(
        description="Fraction of held-out pairs scored chosen > rejected; null when nothing was held out",
        json_schema_extra=METRIC,
    )
    rows_used: int = Field(description="Pairs trained on", json_schema_extra=COUNT)
    rows_heldout: int = Field(description="Pairs held out for accuracy", json_schema_extra=COUNT)
    rows_dropped: int = Field(
        description="Pairs dropped for exceeding max_length tokens", json_schema_extra=COUNT
    )
    rows_rejected: int = Field(
        0,
        description="Pairs rejected because their messages hold chat-template control tokens",
        json_schema_extra=COUNT,
    )
    heldout_accuracy_low: float | None = Field(
        None,
        description="Lower end of the 95% Wilson interval of the held-out accuracy",
        json_schema_extra=METRIC,
    )
    heldout_accuracy_by_cd: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Held-out accuracy and pair count per CD bin ('unknown' for pairs without a CD)",
    )
    heldout_accuracy_by_source: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Held-out accuracy and pair count by label source: curate or judge"
    )
    label_agreement: float | None = Field(
        None,
        description="Agreement with the held-out labels of labels_uri; null without them",
        json_schema_extra=METRIC,
    )
    label_pairs: int = Field(0, description="Labelled pairs of labels_uri scored", json_schema_extra=COUNT)
    gate: dict[str, Any] = Field(
        default_factory=dict, description="The calibration gate: thresholds, figures and verdict"
    )
    score_mean: float | None = Field(
        None,
        description="Mean score of the evaluated responses (rl standardises the reward_model term with it)",
        json_schema_extra=METRIC,
    )
    score_std: float | None = Field(
        None, description="Standard deviation of those scores", json_schema_extra=METRIC
    )
    pairs_judged: int = Field(
        0, description="Pairs the judge saw (each in both orders)", json_schema_extra=COUNT
    )
    judge_inconsistent: int = Field(
        0,
        description="Judged pairs dropped because the two orders gave different verdicts (or a tie)",
        json_schema_extra=COUNT,
    )
    judge_unparsed: int = Field(
        0,
        description="Judged pairs dropped for an unparseable verdict (generate mode)",
        json_schema_extra=COUNT,
    )
    judge_disagreed: int = Field(
        0,
        description="Consistently judged pairs whose winner is curate's rejected answer",
        json_schema_extra=COUNT,
    )
    judge_first_rate: float | None = Field(
        None,
        description="Mean probability the judge gave the answer shown first (0.5 = no position bias)",
        json_schema_extra=METRIC,
    )
    seed: int = Field(0, description="The seed used for the head init, split and data order")
