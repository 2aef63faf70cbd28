"""Configuration of the ``evaluate`` stage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distilflow.config import BaseConfig
from distilflow.secrets import EnvName
from distilflow.tracking import TRACKING_FIELD, TrackingConfig
from distilflow.uri import Uri

WIRED = ("output_uri", "model")

# The prompt of the DeepSeek-R1 / DistilQwen math tables; part of the recorded protocol.
DEFAULT_PROMPT = "{{problem}}\nPlease reason step by step, and put your final answer within \\boxed{}."

BENCHMARK_NAMES = ("aime2024", "math500", "gpqa_diamond", "livecodebench", "jsonl")


class BenchmarkConfig(BaseConfig):
    """One benchmark: a built-in adapter (hub id and fields known) or a user JSONL of problems."""

    name: Literal["aime2024", "math500", "gpqa_diamond", "livecodebench", "jsonl"] = Field(
        description="aime2024, math500, gpqa_diamond, livecodebench, or jsonl (your own problems file)"
    )
    source: str = Field(
        "hub",
        description="hub: the Hugging Face hub (the dataset id below); sample: the few rows shipped with "
        "distilflow (tests, quickstart); or a URI/path of a .jsonl or .parquet file in the same format "
        "(a mirror in object storage, or your problems for name=jsonl)",
    )
    label: str | None = Field(
        None, description="Name shown in reports and metrics (default: name, or the file name for jsonl)"
    )
    hub_id: str | None = Field(None, description="Hub dataset id (default: the benchmark's usual one)")
    subset: str | None = Field(None, description="Hub dataset config name (default: the benchmark's)")
    split: str | None = Field(None, description="Dataset split (default: the benchmark's)")
    revision: str | None = Field(None, description="Hub dataset revision (commit or tag) to pin")
    version: str = Field(
        "release_v2",
        description="LiveCodeBench release (release_v1 .. release_v6); the DistilQwen tables use release_v2",
    )
    samples: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Answers per problem for this benchmark (default: the stage's samples, else the "
        "benchmark's default: 8 for aime2024, 1 for the others)",
    )
    max_problems: int | None = Field(None, ge=1, description="Only the first N problems (null: all)")
    prompt_template: str | None = Field(
        None,
        description="User message, {{problem}} replaced by the problem (default: the stage's prompt_template "
        "for math, the simple-evals GPQA prompt, the LiveCodeBench prompt for code)",
    )
    shuffle_choices: bool = Field(
        True, description="gpqa_diamond: shuffle the four options with the stage's seed (else A is correct)"
    )

    @model_validator(mode="after")
    def _check(self) -> BenchmarkConfig:
        if self.name == "jsonl" and self.source in ("hub", "sample"):
            raise ValueError("benchmark 'jsonl' needs source: the path or URI of your problems JSONL")
        if self.prompt_template is not None and "{{problem}}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain {{{{problem}}}}, got {self.prompt_template!r}")
        return self

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if self.name == "jsonl":
            return self.source.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] or "jsonl"
        return self.name


class ModelSpec(BaseConfig):
    """One more model to score beside the wired one (teacher, base student, ...), via the teacher contract."""

    name: str = Field(description="Name in reports, metrics and the comparison table")
    model: str = Field(
        description="Model folder or URI (transformers, vllm), or the served model name (openai)"
    )
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="transformers: in-process (CPU or one GPU); vllm: offline batch inference on the pod's "
        "GPUs; openai: an OpenAI-compatible endpoint (e.g. the one deploy starts)",
    )
    base_url: str | None = Field(None, description="Endpoint base URL, e.g. http://host:8000/v1 (openai)")
    api_key_env: EnvName = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the API key (openai)"
    )
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder (transformers)")
    enable_thinking: bool | None = Field(
        None, description="Qwen3 thinking on/off for this model (null: the stage's enable_thinking)"
    )
    device: str = Field("auto", description="auto, cpu or cuda (transformers)")
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs one vLLM engine spans (vllm)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU memory share vLLM may take")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + answer vLLM plans for")
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict, description="More vllm.LLM engine arguments (vllm), e.g. {enforce_eager: true}"
    )
    concurrency: int = Field(32, ge=1, description="Requests in flight (openai)")
    timeout_s: float = Field(3600, gt=0, description="Per-request timeout in seconds (openai)")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.backend == "openai" and not self.base_url:
            raise ValueError(f"model {self.name!r}: backend 'openai' needs base_url")
        return self


class RegistryConfig(BaseConfig):
    """Registering the evaluated model in MLflow's model registry (the tracking server of ``tracking``)."""

    model_name: str | None = Field(
        None,
        description="Registered model name the evaluated model becomes a new version of (tags: its scores, "
        "the protocol hash, the data and training run); null: no registration",
    )
    tags: dict[str, str] = Field(default_factory=dict, description="More tags on the model version")


class EvaluateConfig(BaseConfig):
    """Accuracy (avg@k, pass@k) and tokens spent by one or more models on benchmarks, under a pinned protocol."""

    output_uri: Uri = Field(description="Where results, metrics and reports are written (<run>/evaluate)")
    model: Uri | None = Field(
        None, description="Model folder or URI to evaluate, e.g. <run>/sft/model (wired by the pipeline)"
    )
    model_name: str | None = Field(
        None, description="Name of that model in reports (default: its folder name)"
    )
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="How the wired model generates: transformers (CPU/1 GPU) or vllm (GPUs)"
    )
    models: list[ModelSpec] = Field(
        default_factory=list,
        description="More models scored in the same run under the same protocol (teacher, base student, ...)",
    )
    problems_uri: Uri | None = Field(
        None,
        description="JSONL of problems {id, problem, answer, domain?}: shorthand for a 'jsonl' benchmark",
    )
    benchmarks: list[BenchmarkConfig] = Field(
        default_factory=list,
        description="Benchmarks to score, e.g. [aime2024, math500, gpqa_diamond, livecodebench] or "
        "[{name: math500, source: sample}]",
    )
    source: str | None = Field(
        None,
        description="Where the benchmarks that set no source of their own come from: hub (the Hugging Face "
        "hub), sample (the few rows shipped with distilflow: local runs and tests, no download), or a folder "
        "URI holding mirrors named <benchmark>.parquet or <benchmark>.jsonl in the hub's format; null: hub",
    )
    thinking_modes: list[bool] | None = Field(
        None,
        description="Score every model once per mode, e.g. [true, false] for Qwen3 thinking on and off "
        "(null: each model once, with its enable_thinking)",
    )
    samples: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Answers sampled per problem, k of avg@k and pass@k (null: per benchmark, 8 for "
        "aime2024 and 1 for the others)",
    )
    pass_k: list[int] = Field(
        default_factory=lambda: [1],
        description="k values of the unbiased pass@k (Codex paper) reported besides pass@samples",
    )
    temperature: float = Field(
        0.6, ge=0, le=2, description="Sampling temperature (0 = greedy; needs samples=1)"
    )
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling threshold")
    max_new_tokens: int = Field(32768, ge=1, description="Maximum tokens generated per answer")
    seed: int = Field(
        0,
        description="Sampling seed (each chunk of batch_size problems is seeded with it) and GPQA shuffle seed",
    )
    enable_thinking: bool | None = Field(
        None, description="Passed to the chat template (Qwen3 thinking on/off); null = the template's default"
    )
    system_prompt: str | None = Field(None, description="System message put before every problem, if any")
    prompt_template: str = Field(
        DEFAULT_PROMPT,
        description="User message for math problems; {{problem}} is replaced by the problem text",
    )
    max_problems: int | None = Field(
        None, ge=1, description="Evaluate only the first N problems of each benchmark (null = all)"
    )
    batch_size: int = Field(
        8, ge=1, description="Prompts per forward pass (transformers) and problems per saved chunk there"
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="Problems handed to the backend per generate() call, saved after each (null: batch_size "
        "for transformers, 512 for vllm and openai so their schedulers stay full)",
    )
    device: str = Field("auto", description="auto, cpu or cuda (transformers)")
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder, if the model is GGUF")
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs one vLLM engine spans (vllm)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU memory share vLLM may take")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt + answer vLLM plans for")
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="More vllm.LLM engine arguments for the wired model (vllm), e.g. {enforce_eager: true}",
    )
    model_hash: Literal["content", "sizes"] = Field(
        "content",
        description="Model identity: content (sha256 of every file) or sizes (names and sizes: cheap)",
    )
    code_timeout_s: float = Field(6.0, gt=0, description="Wall-clock seconds per code test case")
    code_memory_mb: int = Field(1024, ge=64, description="Address-space limit of a program under test")
    code_workers: int = Field(4, ge=1, description="Programs tested in parallel")
    code_max_tests: int | None = Field(
        None, ge=1, description="Run at most N test cases per problem (null: all; public ones first)"
    )
    report_failures: int = Field(
        3, ge=0, description="Failed answers shown per model and benchmark in the report"
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="Log the scores to an experiment: {backend: mlflow, uri, experiment, ...} (the same "
        "experiment as the training stages'); not part of the fingerprint",
        json_schema_extra=TRACKING_FIELD,
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig,
        description="Register the evaluated model in MLflow's model registry: {model_name: ...} (needs "
        "tracking.backend: mlflow); not part of the fingerprint",
        json_schema_extra=TRACKING_FIELD,
    )

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        problems = []
        if "{{problem}}" not in self.prompt_template:
            problems.append(f"prompt_template must contain {{{{problem}}}}, got {self.prompt_template!r}")
        if self.temperature == 0 and (self.samples or 1) > 1:
            # Greedy decoding gives the same answer every time: k samples would only repeat it.
            problems.append(
                f"samples={self.samples} with temperature=0 repeats one greedy answer; "
                "set temperature > 0 (e.g. 0.6) or samples=1"
            )
        if self.temperature == 0 and any((b.samples or 1) > 1 for b in self.benchmarks):
            problems.append("a benchmark sets samples > 1 with temperature=0; set temperature > 0")
        if not self.problems_uri and not self.benchmarks:
            problems.append(
                "give problems_uri (a JSONL of problems) or benchmarks (e.g. [math500, aime2024])"
            )
        names = [b.display for b in self.benchmarks] + (["problems"] if self.problems_uri else [])
        if len(set(names)) != len(names):
            problems.append(f"benchmark names repeat ({names}); set label on the duplicates")
        model_names = [m.name for m in self.models]
        if len(set(model_names)) != len(model_names):
            problems.append(f"model names repeat ({model_names})")
        if any(k < 1 for k in self.pass_k):
            problems.append(f"pass_k values must be >= 1, got {self.pass_k}")
        if self.registry.model_name and self.tracking.backend != "mlflow":
            problems.append(
                f"registry.model_name={self.registry.model_name!r} registers in MLflow's model registry; set "
                f"tracking.backend: mlflow (with tracking.uri or MLFLOW_TRACKING_URI), not {self.tracking.backend!r}"
            )
        if self.registry.model_name and not self.model:
            problems.append("registry.model_name needs the evaluated model (model), which is not set")
        if problems:
            raise ValueError("; ".join(problems))
        return self
