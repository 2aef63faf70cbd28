"""Configuration of the ``distill`` stage (cheap to import: no torch, no transformers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilflow.config import BaseConfig
from distilflow.teacher import TeacherConfig
from distilflow.uri import Uri

# Fields the pipeline fills in; problems_uri comes from the user's distill section.
WIRED = ("output_uri",)

# Prompt layout -> versioned template under distilflow/templates (None: no system prompt).
PROMPT_TEMPLATES: dict[str, str | None] = {
    "thought_solution": "cot_thought_solution_v1",
    "native": None,
}


class DistillConfig(BaseConfig):
    """A teacher answers every problem with a chain of thought, ``n`` samples each."""

    output_uri: Uri = Field(
        description="Folder or URI this stage writes traces.jsonl, manifest and marker to"
    )
    problems_uri: Uri = Field(description="JSONL of problems: {id, problem, answer?, domain?} per line")
    teacher: TeacherConfig = Field(
        description="The model that writes the chains of thought, and how it samples"
    )
    n: int = Field(1, ge=1, description="Samples (traces) per problem")
    prompt: Literal["thought_solution", "native"] = Field(
        "thought_solution",
        description="thought_solution: a system prompt asking for step-by-step reasoning in <think> and the "
        "final answer in \\boxed{} (the DeepSeek-R1/QwQ distillation prompt); native: no system prompt, "
        "the model's own thinking format (reasoning models)",
    )
    limit: int | None = Field(None, ge=1, description="Answer only the first N problems (None: all)")
    batch_size: int = Field(
        16,
        ge=1,
        description="Problems per teacher call; each finished batch is saved, so a crash loses at most one",
    )
