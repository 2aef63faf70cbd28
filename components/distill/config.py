"""Configuration of the ``distill`` stage (cheap to import: no torch, no transformers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distilflow.config import BaseConfig
from distilflow.sources import Source
from distilflow.teachers.config import TeacherConfig
from distilflow.uri import Uri

# Fields the pipeline fills in; problems_uri comes from the user's distill section.
WIRED = ("output_uri",)

# Prompt layout -> versioned template under distilflow/templates (None: no system prompt).
PROMPT_TEMPLATES: dict[str, str | None] = {
    "thought_solution": "cot_thought_solution_v1",
    "native": None,
}


class LogitsConfig(BaseConfig):
    """White-box distillation data: the teacher's top-k token log-probabilities at every position of
    every answer, stored as Parquet shards beside the traces (``logits/``)."""

    top_k: int = Field(
        20,
        ge=1,
        le=128,
        description="Log-probabilities kept per position: the teacher's k likeliest next tokens (20 is the "
        "most an OpenAI-compatible endpoint or vLLM's default max_logprobs returns)",
    )
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="Storage type of the top-k log-probabilities; float16 halves their bytes"
    )
    answers_uri: Uri | None = Field(
        None,
        description="Score these answers instead of generating: a distill output folder or traces.jsonl "
        "(Trace records, e.g. from an endpoint without logprobs); the teacher gives its top-k over each "
        "answer as its chat template renders it. None: the teacher generates and scores its own answers",
    )


class DistillConfig(BaseConfig):
    """A teacher answers every problem with a chain of thought, ``n`` samples each."""

    output_uri: Uri = Field(
        description="Folder or URI this stage writes traces.jsonl, manifest and marker to"
    )
    problems_uri: Source = Field(
        description="Problems: a .jsonl/.parquet file of {id, problem, answer?, domain?} records (local, object "
        "storage or hf://datasets/...), or a source mapping {uri, preset | columns, ...} (distilflow.sources)"
    )
    teacher: TeacherConfig | None = Field(
        None, description="The model that writes the chains of thought, and how it samples (or use teachers)"
    )
    teachers: list[TeacherConfig] | None = Field(
        None,
        description="Several teachers instead of one: each (problem, sample) goes to one of them, drawn by a "
        "hash of the problem id and sample index in proportion to shares (stable across reruns); each "
        "trace records its teacher",
    )
    shares: list[float] | None = Field(
        None, description="Relative share of rows per entry of teachers (None: equal shares)"
    )
    n: int = Field(1, ge=1, description="Samples (traces) per problem")
    prompt: Literal["thought_solution", "native"] = Field(
        "thought_solution",
        description="thought_solution: a system prompt asking for step-by-step reasoning in <think> and the "
        "final answer in \\boxed{} (the DeepSeek-R1/QwQ distillation prompt); native: no system prompt, "
        "the model's own thinking format (reasoning models)",
    )
    prompts: dict[str, Literal["thought_solution", "native"]] = Field(
        default_factory=dict,
        description="Prompt layout per teacher, by teacher name (e.g. native for a reasoning model beside a "
        "thought_solution chat model); teachers not named here use prompt",
    )
    limit: int | None = Field(None, ge=1, description="Answer only the first N problems (None: all)")
    batch_size: int = Field(
        16,
        ge=1,
        description="Problems per generate() call of an in-process (transformers) teacher; each finished "
        "batch is saved. Endpoint teachers keep teacher.concurrency requests in flight instead",
    )
    cache_uri: Uri | None = Field(
        None,
        description="Folder or URI of the content-addressed teacher cache (None: <output_uri>/cache). Point "
        "several runs or pipelines at one shared cache so that none re-sends a request another answered",
    )
    shard_size: int = Field(
        256, ge=1, description="Traces per output shard; a shard is written once full (or after flush_s)"
    )
    flush_s: float = Field(
        30.0, gt=0, description="Longest time answered traces wait before they are written as a shard"
    )
    num_shards: int = Field(
        1, ge=1, description="Split the problems into this many contiguous shards (a fan-out writes one each)"
    )
    shard_index: int = Field(0, ge=0, description="The shard this run answers, 0 <= shard_index < num_shards")
    logits: LogitsConfig | None = Field(
        None,
        description="Also store the teacher's top-k log-probabilities of every answer token (white-box "
        "distillation data for sft.kd); None: text only",
    )
    min_success_ratio: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Fail the stage when fewer than this fraction of (problem, sample) requests succeed "
        "after retries (it stops as soon as the ratio can no longer be met); failed rows go to failures.jsonl",
    )

    @model_validator(mode="after")
    def _check_teachers(self) -> DistillConfig:
        if (self.teacher is None) == (self.teachers is None):
            raise ValueError(
                "give exactly one of teacher (one model) or teachers (a list with optional shares)"
            )
        if self.teachers is not None:
            if not self.teachers:
                raise ValueError("teachers is empty; list at least one teacher")
            names = [t.display_name for t in self.teachers]
            if len(set(names)) != len(names):
                raise ValueError(
                    f"teachers have the same name {names}; set teachers[i].name to tell them apart"
                )
            if self.shares is not None and (len(self.shares) != len(self.teachers) or min(self.shares) <= 0):
                raise ValueError(
                    f"shares={self.shares} must hold one positive number per teacher ({len(self.teachers)})"
                )
        elif self.shares is not None:
            raise ValueError(f"shares={self.shares} needs teachers (a list), not teacher")
        known = [t.display_name for t in self.teacher_list]
        unknown = sorted(set(self.prompts) - set(known))
        if unknown:
            raise ValueError(
                f"prompts names teachers {unknown} that are not in this stage; teachers are {known}"
            )
        if self.logits is not None:
            bad = [
                t.display_name for t in self.teacher_list if t.backend == "openai" and self.logits.top_k > 20
            ]
            if bad:
                raise ValueError(
                    f"logits.top_k={self.logits.top_k} is above 20, the most an OpenAI-compatible endpoint "
                    f"returns (teachers {bad}); lower logits.top_k or use backend vllm/transformers"
                )
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index={self.shard_index} must be below num_shards={self.num_shards}")
        return self

    @property
    def teacher_list(self) -> list[TeacherConfig]:
        """The teachers, one or several."""
        return [self.teacher] if self.teacher is not None else list(self.teachers or [])
