"""Configuration and result of the `rl` stage (imports without torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distilflow.config import BaseConfig
from distilflow.uri import Uri

WIRED = ("output_uri", "model")
"""Fields the pipeline fills in: this stage's output folder and the policy to start from (sft/dpo output)."""

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class RlConfig(BaseConfig):
    """GRPO on the student with a verifiable-correctness reward (TRL ``GRPOTrainer``)."""

    output_uri: Uri = Field(description="This stage's output folder; the model goes to <output_uri>/model")
    model: Uri = Field(description="The policy to start from: the sft or dpo output model folder or URI")
    problems_uri: Uri = Field(
        description="Problems with reference answers: a .jsonl file of Problem records or a finished stage "
        "output folder holding problems.jsonl; problems without an answer are skipped"
    )
    system_prompt: str | None = Field(
        DEFAULT_SYSTEM_PROMPT, description="System message before each problem; null sends the problem alone"
    )
    num_generations: int = Field(8, ge=2, description="Completions sampled per problem (the GRPO group size)")
    max_completion_length: int = Field(1024, ge=1, description="Most tokens generated per completion")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for the completions")
    beta: float = Field(
        0.0, ge=0, description="KL penalty towards the start model (0 = none, no reference model)"
    )
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 trains for num_train_epochs instead")
    num_train_epochs: float = Field(1.0, gt=0, description="Passes over the problems when max_steps is -1")
    learning_rate: float = Field(1e-6, gt=0, description="Peak AdamW learning rate (linear decay)")
    per_device_train_batch_size: int = Field(
        8,
        ge=1,
        description="Completions per device per micro-batch; with the accumulation steps, a multiple of num_generations",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches accumulated per optimizer step"
    )
    seed: int = Field(0, description="Seed for sampling and data order")
    logging_steps: int = Field(1, ge=1, description="Log loss and reward every this many optimizer steps")

    @model_validator(mode="after")
    def _check(self) -> RlConfig:
        if self.max_steps == 0:
            raise ValueError(
                "max_steps=0 trains nothing; use -1 (train num_train_epochs) or a positive count"
            )
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size * gradient_accumulation_steps ({self.per_device_train_batch_size} * "
                f"{self.gradient_accumulation_steps} = {batch}) must be a multiple of num_generations "
                f"({self.num_generations}), so every problem's group of completions is scored together"
            )
        return self


class RlResult(BaseModel):
    """What an `rl` run produced (stored in its manifest, returned again on a rerun)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_uri: str = Field(description="Folder of the trained policy and tokenizer (Hugging Face format)")
    first_reward: float | None = Field(description="Mean correctness reward at the first logged step")
    final_reward: float | None = Field(description="Mean correctness reward at the last logged step")
    first_loss: float | None = Field(description="GRPO loss at the first logged step")
    final_loss: float | None = Field(description="GRPO loss at the last logged step")
    steps: int = Field(description="Optimizer steps taken")
    problems_used: int = Field(description="Problems with a reference answer trained on")
    problems_skipped: int = Field(description="Problems skipped for having no reference answer")
