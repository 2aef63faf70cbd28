"""Shared fixtures: tiny models built offline, a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tiny models on two shared cores: one torch thread per process is many times faster than two
# (thread contention dominates such small matrices). Subprocesses (kfp.local tasks, servers) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> str:
    """A tiny Qwen3-architecture causal LM folder (random weights, chat template with <think>)."""
    from distilflow.tiny import build_tiny

    return build_tiny(str(tmp_path_factory.mktemp("tiny-qwen3")), arch="qwen3")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    from distilflow.tiny import build_tiny

    return build_tiny(str(tmp_path_factory.mktemp("tiny-qwen2")), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    """A tiny Qwen3 causal LM with a peaked next-token distribution (``sharpness``: top-1 about 0.6,
    top-20 about 0.7, a real tail), sharing ``tiny_qwen3``'s tokenizer: a white-box teacher."""
    from distilflow.tiny import build_tiny

    return build_tiny(str(tmp_path_factory.mktemp("tiny-teacher")), arch="qwen3", seed=1, sharpness=6.0)


@pytest.fixture(scope="session")
def tiny_reward(tmp_path_factory) -> str:
    """A tiny Qwen3 sequence-classification model with one label (a reward model)."""
    from distilflow.tiny import build_tiny

    return build_tiny(str(tmp_path_factory.mktemp("tiny-reward")), arch="qwen3", kind="reward")


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible HTTP server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the moto server, with the environment pointing s3:// at it."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("DISTILFLOW_S3_ENDPOINT_URL", s3_server)
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    import fsspec

    fsspec.config.conf.pop("s3", None)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return name


@pytest.fixture
def problems_file(tmp_path) -> str:
    """A small JSONL of math problems with reference answers."""
    from distilflow.records import Problem, write_jsonl

    rows = [
        Problem(id="p1", problem="What is 3 + 4?", answer="7", domain="math"),
        Problem(id="p2", problem="What is 6 * 7?", answer="42", domain="math"),
        Problem(id="p3", problem="What is 10 - 8?", answer="2", domain="math"),
        Problem(id="p4", problem="What is 9 / 3?", answer="3", domain="math"),
    ]
    path = str(tmp_path / "problems.jsonl")
    write_jsonl(path, rows)
    return path


def curate_output(root: str, filename: str, rows: list, complete: bool = True) -> str:
    """A curate-like upstream output folder under ``root`` holding ``filename`` (sft.jsonl or
    preference.jsonl), with its completion marker unless ``complete`` is False."""
    from distilflow.outputs import StageOutput
    from distilflow.records import write_jsonl

    out = StageOutput(os.path.join(root, "curate"), "curate")
    write_jsonl(out.path(filename), rows)
    if complete:
        out.finish(result={}, counts={filename.removesuffix(".jsonl"): len(rows)})
    return out.uri
