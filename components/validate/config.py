"""Configuration of the ``validate`` stage."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from distilflow.config import BaseConfig
from distilflow.uri import Uri

WIRED = ("output_uri",)


class ValidateConfig(BaseConfig):
    """Check a whole pipeline config before any other step (and before any GPU is claimed)."""

    output_uri: Uri = Field(description="Where the validation report is written (<run>/validate)")
    run_uri: Uri = Field(description="The run's root output URI; stage outputs go under it")
    stages: list[str] = Field(description="The stages the pipeline runs, in order")
    pipeline_config: dict[str, Any] = Field(
        default_factory=dict, description="The pipeline config: one section per stage, keyed by stage name"
    )
    check_data: bool = Field(True, description="Read every input JSONL and validate each line")
    check_models: bool = Field(
        True, description="Check that model folders exist with config, weights and a chat template"
    )
    pending_models: list[str] = Field(
        default_factory=list,
        description="Model folders the run makes before its stages start (the quickstart's tiny student, "
        "built by a local run): named in the report, not checked",
    )
    check_endpoints: bool = Field(True, description="Call GET /models on every OpenAI-compatible endpoint")
    probe_judges: bool = Field(
        True,
        description="Ask every logprobs judge on an endpoint (curate.judge, reward.judge) two calibration "
        "judgments, an obviously low and an obviously high case, and fail unless both are readable and "
        "ordered (needs check_endpoints)",
    )
    endpoint_timeout_s: float = Field(10.0, gt=0, description="Timeout for each endpoint check, in seconds")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        from distilflow.components import STAGES

        unknown = [s for s in value if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are: {', '.join(STAGES)}")
        return value
