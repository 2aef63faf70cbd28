"""The vLLM OpenAI server command line that every target running vLLM (local, KServe, PAI-EAS) starts."""

from __future__ import annotations

from distilflow.components.deploy.config import DeployConfig
from distilflow.components.deploy.smoke import supports_thinking
from distilflow.images import image

VLLM_MODULE = ["python3", "-m", "vllm.entrypoints.openai.api_server"]


def folder_name(model: str) -> str:
    """A readable model id from a model folder or URI: its last part, with the stage in front for the
    ``<run>/<stage>/model`` folders the training stages write (``runs/r1/sft/model`` -> ``sft-model``)."""
    parts = [p for p in model.split("://", 1)[-1].split("/") if p]
    if not parts:
        raise ValueError(f"model={model!r} names no folder; set deploy.served_model_name")
    if parts[-1] == "model" and len(parts) > 1:
        return f"{parts[-2]}-model"
    return parts[-1]


def served_name(config: DeployConfig) -> str:
    """The id clients name: served_model_name, else the service name, else the model folder's name."""
    return config.served_model_name or config.service_name or folder_name(config.model)


def server_image(config: DeployConfig) -> str:
    return config.image or image("vllm")


def thinking_model(config: DeployConfig) -> bool:
    """Whether the model's chat template honours enable_thinking; an unreadable model counts as no."""
    try:
        return supports_thinking(config.model)
    except Exception as exc:  # a dry run may have no storage credentials; the manifest still renders
        print(f"[deploy] warning: could not read the chat template of {config.model} ({exc})", flush=True)
        return False


def reasoning_parser(config: DeployConfig, thinking: bool) -> str | None:
    if config.reasoning_parser == "auto":
        return "qwen3" if thinking else None
    return None if config.reasoning_parser == "none" else config.reasoning_parser


def vllm_args(
    config: DeployConfig, model_path: str, port: int, thinking: bool, host: str = "0.0.0.0"
) -> list[str]:
    """Arguments of vLLM's OpenAI server: the model, its served name, parallelism, length, parser."""
    args = ["--model", model_path, "--served-model-name", served_name(config)]
    args += ["--host", host, "--port", str(port)]
    args += ["--tensor-parallel-size", str(config.tensor_parallel_size or max(config.gpus, 1))]
    if config.max_model_len:
        args += ["--max-model-len", str(config.max_model_len)]
    parser = reasoning_parser(config, thinking)
    if parser:
        args += ["--reasoning-parser", parser]
    return args + list(config.vllm_args)
