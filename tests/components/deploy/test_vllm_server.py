"""The vLLM server command every vLLM target runs: its served name and arguments (unit layer)."""

from __future__ import annotations

import sys

import pytest

from distilflow.components.deploy.config import DeployConfig
from distilflow.components.deploy.run import server_command
from distilflow.components.deploy.vllm_server import folder_name, served_name

pytestmark = pytest.mark.unit


def _config(**overrides) -> DeployConfig:
    return DeployConfig.from_dict({"output_uri": "out", "model": "runs/r1/sft/model", **overrides})


def test_served_name_defaults_to_a_readable_folder_name():
    assert folder_name("runs/r1/sft/model") == "sft-model"  # the training stages' <run>/<stage>/model
    assert folder_name("/models/qwen3-1.7b-student/") == "qwen3-1.7b-student"
    assert folder_name("s3://bucket/runs/r1/dpo/model") == "dpo-model"
    assert folder_name("oss://bucket/students/distilqwen-7b") == "distilqwen-7b"
    assert folder_name("model") == "model"
    with pytest.raises(ValueError, match="served_model_name"):
        folder_name("s3://")
    assert served_name(_config()) == "sft-model"
    assert served_name(_config(served_model_name="my-model")) == "my-model"
    kserve = {"target": "kserve", "model": "s3://b/runs/r1/sft/model", "service_name": "qwen3-student"}
    assert served_name(_config(**kserve)) == "qwen3-student"
    assert served_name(_config(**kserve, served_model_name="student")) == "student"


def test_local_vllm_command_carries_the_served_name_and_the_vllm_settings():
    config = _config(
        host="127.0.0.1", max_model_len=4096, tensor_parallel_size=2, vllm_args=["--enforce-eager"]
    )
    cmd = server_command(config, "vllm", "/abs/runs/r1/sft/model", 8123, thinking=True)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[-1] == "--enforce-eager"
    pairs = dict(zip(cmd[3:-1:2], cmd[4:-1:2], strict=True))
    assert pairs == {
        "--model": "/abs/runs/r1/sft/model",
        "--served-model-name": "sft-model",
        "--host": "127.0.0.1",
        "--port": "8123",
        "--tensor-parallel-size": "2",
        "--max-model-len": "4096",
        "--reasoning-parser": "qwen3",  # auto: the template honours enable_thinking
    }
    plain = server_command(_config(reasoning_parser="auto"), "vllm", "/m", 1, thinking=False)
    assert "--reasoning-parser" not in plain and plain[plain.index("--host") + 1] == "127.0.0.1"


def test_local_transformers_server_gets_the_same_served_name():
    config = _config(host="127.0.0.1")
    cmd = server_command(config, "transformers", "/abs/runs/r1/sft/model", 8124, thinking=True)
    assert cmd[:3] == [sys.executable, "-m", "distilflow.components.deploy.server"]
    pairs = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert pairs == {
        "--model": "/abs/runs/r1/sft/model",
        "--served-model-name": "sft-model",
        "--host": "127.0.0.1",
        "--port": "8124",
    }
    named = server_command(_config(served_model_name="student"), "transformers", "/m", 1, thinking=False)
    assert named[named.index("--served-model-name") + 1] == "student"
