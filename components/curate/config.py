"""Configuration of the ``curate`` stage (cheap to import: no torch, no transformers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distilflow.config import BaseConfig
from distilflow.teacher import TeacherConfig
from distilflow.uri import Uri

# Fields the pipeline fills in: this stage's folder and the distill output folder it reads.
WIRED = ("output_uri", "data_uri")

# The versioned rubric templates under distilflow/templates, one per judged quantity.
JUDGE_TEMPLATES = {"rv": "judge_rv_v1", "cd": "judge_cd_v1", "logic": "judge_logic_v1"}
FORMAT_TEMPLATES = {"logprobs": "judge_format_logprobs_v1", "generate": "judge_format_generate_v1"}


class CurateConfig(BaseConfig):
    """Score traces with an LLM judge (RV, CD, logic), verify answers, select rows, build SFT and DPO data."""

    output_uri: Uri = Field(description="Folder or URI this stage writes scored/sft/preference JSONL to")
    data_uri: Uri = Field(
        description="The distill output folder (holds traces.jsonl and a completion marker)"
    )
    judge: TeacherConfig = Field(
        description="The model that scores traces (temperature is ignored in logprobs mode)"
    )
    mode: Literal["logprobs", "generate"] = Field(
        "logprobs",
        description="logprobs: the judge answers one digit and the score is the expected value of its next-token "
        "distribution over the digits (OmniThought); generate: the judge explains, then writes <score>N</score>, "
        "which is parsed (unparseable judgments are counted and the trace is left unscored)",
    )
    rv_min: float = Field(0, ge=0, le=9, description="Keep traces with reasoning verbosity >= rv_min")
    rv_max: float = Field(9, ge=0, le=9, description="Keep traces with reasoning verbosity <= rv_max")
    cd_min: float = Field(0, ge=0, le=9, description="Keep traces with cognitive difficulty >= cd_min")
    cd_max: float = Field(9, ge=0, le=9, description="Keep traces with cognitive difficulty <= cd_max")
    min_logic: float = Field(
        0.5, ge=0, le=1, description="Keep traces the judge finds logically sound with P >= this"
    )
    require_correct: bool = Field(
        True, description="Drop traces whose final answer does not match the reference"
    )
    keep_unverified: bool = Field(True, description="Keep traces whose problem has no reference answer")
    rv_target_offset: float = Field(
        0.0,
        description="Preference pairs favour traces whose RV is near offset + scale * CD (CD of the problem)",
    )
    rv_target_scale: float = Field(
        1.0,
        ge=0,
        description="How fast the preferred RV grows with CD (harder problems deserve longer reasoning)",
    )
    system_prompt: str | None = Field(
        None, description="System message put first in every SFT example and DPO prompt"
    )
    enable_thinking: bool | None = Field(
        None,
        description="enable_thinking recorded on each SFT example (Qwen3 templates); None: the template default",
    )
    batch_size: int = Field(16, ge=1, description="Traces judged per judge call")

    @model_validator(mode="after")
    def _check_ranges(self) -> CurateConfig:
        problems = [
            f"{lo}={getattr(self, lo)} is above {hi}={getattr(self, hi)}"
            for lo, hi in (("rv_min", "rv_max"), ("cd_min", "cd_max"))
            if getattr(self, lo) > getattr(self, hi)
        ]
        if problems:
            raise ValueError("; ".join(problems) + "; swap them or widen the range")
        return self
