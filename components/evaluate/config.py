"""Configuration of the ``evaluate`` stage."""

from __future__ import annotations

from pydantic import Field, model_validator

from distilflow.config import BaseConfig
from distilflow.uri import Uri

WIRED = ("output_uri", "model")

# The prompt of the DeepSeek-R1 / DistilQwen math tables; part of the recorded protocol.
DEFAULT_PROMPT = "{{problem}}\nPlease reason step by step, and put your final answer within \\boxed{}."


class EvaluateConfig(BaseConfig):
    """Accuracy (avg@k, pass@k) and tokens spent by a model on problems with reference answers."""

    output_uri: Uri = Field(description="Where results, metrics and reports are written (<run>/evaluate)")
    model: Uri = Field(description="Model folder or URI to evaluate, e.g. <run>/sft/model")
    problems_uri: Uri = Field(
        description="JSONL of problems {id, problem, answer, domain?}; every one needs an answer"
    )
    samples: int = Field(1, ge=1, le=1024, description="Answers sampled per problem (k of avg@k and pass@k)")
    temperature: float = Field(
        0.6, ge=0, le=2, description="Sampling temperature (0 = greedy; needs samples=1)"
    )
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling threshold")
    max_new_tokens: int = Field(2048, ge=1, description="Maximum tokens generated per answer")
    seed: int = Field(0, description="Sampling seed; each chunk of batch_size problems is seeded with it")
    enable_thinking: bool | None = Field(
        None, description="Passed to the chat template (Qwen3 thinking on/off); null = the template's default"
    )
    system_prompt: str | None = Field(None, description="System message put before every problem, if any")
    prompt_template: str = Field(
        DEFAULT_PROMPT, description="User message; {{problem}} is replaced by the problem text"
    )
    max_problems: int | None = Field(
        None, ge=1, description="Evaluate only the first N problems (null = all)"
    )
    batch_size: int = Field(8, ge=1, description="Problems per generate() call; results are saved after each")
    device: str = Field("auto", description="auto, cpu or cuda")
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder, if the model is GGUF")

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        problems = []
        if "{{problem}}" not in self.prompt_template:
            problems.append(f"prompt_template must contain {{{{problem}}}}, got {self.prompt_template!r}")
        if self.temperature == 0 and self.samples > 1:
            # Greedy decoding gives the same answer every time: k samples would only repeat it.
            problems.append(
                f"samples={self.samples} with temperature=0 repeats one greedy answer; "
                "set temperature > 0 (e.g. 0.6) or samples=1"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self
