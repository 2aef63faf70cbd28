"""Configuration of the ``deploy`` stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilflow.config import BaseConfig
from distilflow.uri import Uri

WIRED = ("output_uri", "model")


class DeployConfig(BaseConfig):
    """Serve a model folder behind an OpenAI-compatible API and smoke-test it."""

    output_uri: Uri = Field(description="Where endpoint.json and server.log are written (<run>/deploy)")
    model: Uri = Field(description="Model folder or URI to serve, e.g. <run>/sft/model")
    target: Literal["local"] = Field(
        "local",
        description="Where the server runs: local = a subprocess on this machine (cluster targets come later)",
    )
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="vllm: vLLM's OpenAI server; transformers: `transformers serve`; auto: vllm when importable",
    )
    host: str = Field("127.0.0.1", description="Address the server listens on")
    port: int = Field(0, ge=0, le=65535, description="Port the server listens on (0 = pick a free one)")
    startup_timeout_s: float = Field(
        300, gt=0, description="Seconds to wait for the server to answer /health (vLLM on CPU takes minutes)"
    )
    smoke_prompt: str = Field(
        "What is 2 + 3? Answer with one number.",
        min_length=1,
        description="User message of the smoke-test chat",
    )
    max_tokens: int = Field(16, ge=1, description="max_tokens of the smoke-test chat completion")
    keep_running: bool = Field(
        False, description="Leave the server running after the smoke test (its pid is recorded); else stop it"
    )
    api_key_env: str | None = Field(
        None,
        description="Name of an environment variable holding the key the server requires (vLLM --api-key); "
        "the key itself is never written anywhere",
    )
