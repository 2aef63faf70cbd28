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


@pytest.fixture
def hf_hub(monkeypatch):
    """A loopback Hugging Face hub (tests/fakes/hf_hub_server.py) that ``HF_ENDPOINT`` points at, as a
    mirror would be; hub access is allowed for the test (the suite sets HF_HUB_OFFLINE=1) and the
    cached HfFileSystem instances are dropped, so each test talks to its own server."""
    import huggingface_hub.constants
    from huggingface_hub import HfFileSystem

    from tests.fakes.hf_hub_server import FakeHub

    hub = FakeHub()
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # for the subprocesses kfp.local starts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    HfFileSystem.clear_instance_cache()
    yield hub
    HfFileSystem.clear_instance_cache()
    hub.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (``mlflow server``, SQLite store, artifacts in a local folder) on
    127.0.0.1; yields its URL. Starting takes 20-50 s on two busy cores (database migrations)."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],  # fmt: skip
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
