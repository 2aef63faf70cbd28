"""Configuration and result of the `rl` stage (imports without torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distilflow.outputs import COUNT, METRIC
from distilflow.sources import Source
from distilflow.training.fields import RESUME_NEUTRAL, TrainingConfig, TrainingResult
from distilflow.uri import Uri

WIRED = ("output_uri", "model", "reward_model_uri", "difficulty_uri")
"""Fields the pipeline fills in: this stage's output folder, the policy to start from (sft/dpo output),
the reward stage's output folder (for the ``reward_model`` term) and curate's output folder (per-problem CD
for the ``length`` term). The last two are optional inputs: a recipe without a reward or curate stage
leaves them unset."""

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

REWARD_TERMS = ("correctness", "reward_model", "format", "length")
"""Names of the reward terms (see ``distilflow.components.rl.rewards``)."""


class RlConfig(TrainingConfig):
    """GRPO on the student (TRL ``GRPOTrainer``) with a weighted sum of named reward terms."""

    output_uri: Uri = Field(description="This stage's output folder; the model goes to <output_uri>/model")
    model: Uri = Field(description="The policy to start from: the sft or dpo output model folder or URI")
    problems_uri: Source = Field(
        description="Problems with reference answers: a .jsonl/.parquet file of Problem records, a source "
        "mapping {uri, preset | columns} (distilflow.sources) or a finished stage output folder holding "
        "problems.jsonl; problems without an answer are skipped"
    )
    system_prompt: str | None = Field(
        DEFAULT_SYSTEM_PROMPT, description="System message before each problem; null sends the problem alone"
    )
    rewards: dict[str, float] = Field(
        default_factory=lambda: {"correctness": 1.0},
        description="Reward terms and their weights, summed into the GRPO reward: correctness (math-verify "
        "against the reference, 0/1), reward_model (the reward stage's model score, standardised and squashed "
        "into 0-1), format (a <think> block then a boxed answer: 1, unboxed answer: 0.5, else 0) and length "
        "(0 within the CD-dependent token budget, down to -1 beyond it). Each term is logged as "
        "rewards/<name>/mean; correctness is always computed (weight 0 when not listed) as the accuracy curve",
    )
    reward_model_uri: Uri | None = Field(
        None,
        description="The reward stage's output folder (its _COMPLETE marker, i.e. a passed calibration gate, is "
        "required; the model is <uri>/model) or a reward model folder; needed when rewards.reward_model is set",
    )
    reward_model_normalize: bool = Field(
        True,
        description="Standardise reward-model scores with the score mean/std the reward stage measured and "
        "squash them with a sigmoid into 0-1; false uses the raw scores",
    )
    difficulty_uri: Uri | None = Field(
        None,
        description="curate's output folder (its scored.jsonl) or a scored .jsonl file: each problem's CD is "
        "the mean CD its traces were judged to have (matched by problem id, else by text); used by the length "
        "term. null: every problem has default_cd",
    )
    default_cd: float = Field(
        4.5, ge=0, le=9, description="Cognitive difficulty assumed for problems without a judged CD"
    )
    length_budget_min: int = Field(
        256, ge=1, description="length term: completion tokens a problem of CD 0 warrants"
    )
    length_budget_max: int | None = Field(
        None,
        ge=1,
        description="length term: completion tokens a problem of CD 9 warrants (linear in between); "
        "null: max_completion_length",
    )
    length_slack: float = Field(
        0.5,
        gt=0,
        description="length term: the penalty falls linearly from 0 at the budget to -1 at (1 + slack) x budget",
    )
    num_generations: int = Field(8, ge=2, description="Completions sampled per problem (the GRPO group size)")
    max_completion_length: int = Field(1024, ge=1, description="Most tokens generated per completion")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the completions")
    beta: float = Field(
        0.0,
        ge=0,
        description="KL coefficient towards the start model (0 = none, and no reference model is loaded; "
        "DeepSeek-R1 used 0.001)",
    )
    epsilon: float = Field(
        0.2, gt=0, description="Clipping range of the policy ratio: [1 - epsilon, 1 + epsilon_high]"
    )
    epsilon_high: float | None = Field(
        None, gt=0, description="Upper clipping range (DAPO's clip-higher, e.g. 0.28); null: epsilon"
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        "dapo",
        description="How token losses are aggregated (TRL): dapo normalises by the active tokens of the batch "
        "(no length bias); grpo by each sequence's length; dr_grpo by max_completion_length; bnpo per local batch",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Divide advantages by the reward std of the group (GRPO), of the batch, or not at all "
        "(Dr. GRPO)",
    )
    rollouts: Literal["auto", "vllm", "transformers"] = Field(
        "auto",
        description="Who generates the completions: vllm (GPU only; TRL use_vllm), transformers "
        "(model.generate, any device), auto (vllm on a GPU when it is installed, else transformers)",
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate",
        description="With vllm rollouts: colocate runs vLLM inside each training process on its GPU; server "
        "sends requests to a running `trl vllm-serve` at vllm_server_base_url (weights synced after each step)",
    )
    vllm_server_base_url: str | None = Field(
        None, description="With vllm_mode=server: the trl vllm-serve URL, e.g. http://vllm-rollout:8000"
    )
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="With vllm_mode=colocate: fraction of each GPU's memory vLLM may take"
    )
    vllm_tensor_parallel_size: int = Field(
        1, ge=1, description="With vllm_mode=colocate: GPUs one vLLM engine spans"
    )
    learning_rate: float = Field(1e-6, gt=0, description="Peak AdamW learning rate (linear decay)")
    per_device_train_batch_size: int = Field(
        8,
        ge=1,
        description="Completions per device per micro-batch; with the accumulation steps, a multiple of num_generations",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches accumulated per optimizer step"
    )
    lora: bool = Field(
        False,
        description="Train a LoRA adapter on all linear layers (the KL reference is the base without it) and "
        "merge it before saving",
    )
    seed: int = Field(0, description="Seed for sampling and data order")
    logging_steps: int = Field(
        1,
        ge=1,
        description="Log loss and rewards every this many optimizer steps",
        json_schema_extra=RESUME_NEUTRAL,
    )

    @model_validator(mode="after")
    def _check(self) -> RlConfig:
        problems = []
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            problems.append(
                f"per_device_train_batch_size * gradient_accumulation_steps ({self.per_device_train_batch_size} * "
                f"{self.gradient_accumulation_steps} = {batch}) must be a multiple of num_generations "
                f"({self.num_generations}), so every problem's group of completions is scored together"
            )
        unknown = sorted(set(self.rewards) - set(REWARD_TERMS))
        if unknown:
            problems.append(
                f"rewards names unknown term(s) {unknown}; the terms are {', '.join(REWARD_TERMS)}"
            )
        if not any(self.rewards.values()):
            problems.append(f"rewards={self.rewards} gives every term weight 0; give at least one a weight")
        if self.rewards.get("reward_model") and not self.reward_model_uri:
            problems.append(
                f"rewards.reward_model={self.rewards['reward_model']} needs reward_model_uri (the reward stage's "
                "output folder); set it, or drop the reward_model term"
            )
        top = self.length_budget_max or self.max_completion_length
        if self.rewards.get("length") and top < self.length_budget_min:
            problems.append(
                f"length_budget_min={self.length_budget_min} is above the CD-9 budget {top} "
                "(length_budget_max, or max_completion_length when null); lower it"
            )
        if self.vllm_mode == "server" and self.rollouts != "transformers" and not self.vllm_server_base_url:
            problems.append(
                "vllm_mode=server needs vllm_server_base_url (where `trl vllm-serve` listens); or use colocate"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def weights(self) -> dict[str, float]:
        """Every term that is computed, with its weight: the configured ones, plus correctness (weight 0
        when not configured: it is the accuracy curve)."""
        found = {name: w for name, w in self.rewards.items() if w}
        found.setdefault("correctness", 0.0)
        return {name: found[name] for name in REWARD_TERMS if name in found}


class RlResult(TrainingResult):
    """What an `rl` run produced (stored in its manifest, returned again on a rerun)."""

    model_uri: str = Field(description="Folder of the trained policy and tokenizer (Hugging Face format)")
    first_reward: float | None = Field(
        description="Mean total (weighted) reward at the first logged step", json_schema_extra=METRIC
    )
    final_reward: float | None = Field(
        description="Mean total (weighted) reward at the last logged step", json_schema_extra=METRIC
    )
    first_loss: float | None = Field(
        description="GRPO loss at the first logged step", json_schema_extra=METRIC
    )
    final_loss: float | None = Field(
        description="GRPO loss at the last logged step", json_schema_extra=METRIC
    )
    problems_used: int = Field(
        description="Problems with a reference answer trained on", json_schema_extra=COUNT
    )
    problems_skipped: int = Field(
        description="Problems skipped for having no reference answer", json_schema_extra=COUNT
    )
    problems_read: int = Field(0, description="Problems read from problems_uri", json_schema_extra=COUNT)
    first_accuracy: float | None = Field(
        None,
        description="Mean correctness of the completions at the first logged step",
        json_schema_extra=METRIC,
    )
    final_accuracy: float | None = Field(
        None,
        description="Mean correctness of the completions at the last logged step",
        json_schema_extra=METRIC,
    )
    final_terms: dict[str, float] = Field(
        default_factory=dict,
        description="Mean of each reward term (unweighted) at the last logged step",
        json_schema_extra={**METRIC, "each": "final_reward_{}"},
    )
    weights: dict[str, float] = Field(default_factory=dict, description="The weight of each computed term")
    final_kl: float | None = Field(
        None, description="KL to the start model at the last logged step (beta > 0)", json_schema_extra=METRIC
    )
    final_completion_length: float | None = Field(
        None, description="Mean completion length in tokens at the last logged step", json_schema_extra=METRIC
    )
    problems_with_cd: int = Field(
        0, description="Problems whose CD came from difficulty_uri", json_schema_extra=COUNT
    )
    rollouts: str = Field("transformers", description="What generated the completions: vllm or transformers")
    seed: int = Field(0, description="The seed used for sampling and data order", json_schema_extra=METRIC)
