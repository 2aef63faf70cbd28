"""The teacher config: which model answers (or judges), where it runs and how it samples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from distilflow.config import BaseConfig
from distilflow.secrets import EnvName
from distilflow.uri import Uri


class TeacherConfig(BaseConfig):
    """Which model answers (or judges), where it runs and how it samples."""

    backend: Literal["openai", "transformers", "vllm"] = Field(
        "openai",
        description="openai: an OpenAI-compatible endpoint; transformers: load the model in-process; vllm: "
        "vLLM offline batch inference in-process (GPU image, tensor parallel over the pod's GPUs)",
    )
    model: str = Field(
        description="Model name served by the endpoint, or a model folder/URI for transformers"
    )
    name: str | None = Field(None, description="Name recorded in every trace (default: the model)")
    base_url: str | None = Field(
        None, description="Endpoint base URL, e.g. http://host:8000/v1 (openai backend)"
    )
    api_key_env: EnvName = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the API key (never the key)"
    )
    gguf_file: str | None = Field(
        None, description="GGUF file inside the model folder (transformers backend)"
    )
    tokenizer: Uri | None = Field(
        None,
        description="The served model's tokenizer, a model folder or URI with its tokenizer files (openai "
        "backend asked for logits: it fingerprints the vocabulary and checks the token ids the endpoint "
        "returns); None: model, taken as a folder or URI",
    )
    max_new_tokens: int = Field(512, ge=1, description="Maximum tokens generated per answer")
    temperature: float = Field(0.6, ge=0, le=2, description="Sampling temperature (0 = greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling threshold")
    seed: int | None = Field(None, description="Sampling seed, where the backend supports one")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (openai backend)")
    timeout_s: float = Field(600, gt=0, description="Per-request timeout in seconds (openai backend)")
    max_retries: int = Field(
        6,
        ge=0,
        description="Retries of a request after 429, 408/409, 5xx, a timeout, a dropped connection or a "
        "malformed reply (openai backend); other 4xx answers are not retried",
    )
    retry_backoff_s: float = Field(
        1.0,
        ge=0,
        description="Base of the exponential backoff once errors persist: the first two retries of a "
        "request go at once while the server answers other requests; after that (and for 429s) retry k "
        "waits a random 0..min(retry_max_backoff_s, retry_backoff_s * 2**k) seconds, k counting only "
        "errors with no answer in between, or the server's Retry-After when it sends one (openai backend)",
    )
    retry_max_backoff_s: float = Field(
        60.0, ge=0, description="Longest wait between two attempts of a request, in seconds (openai backend)"
    )
    retry_budget_s: float = Field(
        300.0,
        ge=0,
        description="Time budget of the final retry pass: requests that failed max_retries times with a "
        "transient error while the endpoint answered others are retried until they succeed or this "
        "many seconds have passed, before their row counts as failed (openai backend)",
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="Requests-per-minute budget of the endpoint (None: no limit; openai backend)"
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="Tokens-per-minute budget (prompt + completion; each request is charged an estimate "
        "up front and its real usage afterwards; None: no limit; openai backend)",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call (transformers backend)")
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="GPUs one vLLM engine spans (vllm backend; None: every visible GPU)"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of each GPU's memory vLLM may take (vllm backend)"
    )
    max_model_len: int | None = Field(
        None, ge=1, description="Longest prompt + answer vLLM plans for (vllm backend; None: the model's)"
    )
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="More vllm.LLM engine arguments (vllm backend), applied last, e.g. {enforce_eager: true} "
        "(no torch.compile: starts in seconds, decodes slower), {dtype: float32}, {enable_prefix_caching: true}",
    )
    device: str = Field("auto", description="auto, cpu or cuda (transformers backend)")
    chat_template_kwargs: dict[str, Any] | None = Field(
        None,
        description="Extra chat-template arguments, e.g. {enable_thinking: false} for Qwen3 "
        "(sent as chat_template_kwargs to vLLM/SGLang/transformers serve; passed to apply_chat_template)",
    )

    answer_prefix: str | None = Field(
        "Score: ",
        description="Judging in logprobs mode: the judge's reply is opened with this text, which the model "
        "continues (an assistant prefill: continue_final_message true and add_generation_prompt false on "
        "vLLM/SGLang, the same in-process), with thinking switched off (chat_template_kwargs enable_thinking: "
        "false), so its next token is the score even where the chat template opens a thinking block (QwQ, "
        "DeepSeek-R1, Qwen3). null: the plain chat, for a server that rejects those fields (a reasoning judge "
        "then needs mode: generate). Ignored when generating",
    )
    min_digit_mass: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Judging in logprobs mode: the score digits must carry at least this share of the judge's "
        "next-token probability (summed over its top tokens); below it the judgment is unreadable (a judge "
        "failure row with the reason, never a score renormalised from scraps). Ignored when generating",
    )

    @model_validator(mode="after")
    def _check_backend(self) -> TeacherConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError(
                f"backend='openai' needs base_url (the endpoint serving {self.model!r}), "
                "e.g. http://127.0.0.1:8000/v1; or use backend='transformers' with a model folder"
            )
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.model.rstrip("/").split("/")[-1]
