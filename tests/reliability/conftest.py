"""Fixtures of the reliability suite: fake secrets in the environment, one folder for everything the
suite writes (scanned for those secrets at the end), the CLI as a subprocess, a faulty S3 proxy,
and the figures each test prints (repeated in the terminal summary)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
import yaml

# Distinctive fake credentials: none of them may ever appear in anything the suite's runs write.
SECRETS = {
    "DISTILFLOW_TEST_TEACHER_KEY": "sk-dfTEST-teacher-9c4e1a7b5d3f2e8a6b0c",
    "DISTILFLOW_TEST_JUDGE_KEY": "sk-dfTEST-judge-3b8d6f1a9e2c4b7d5a0e",
    "AWS_ACCESS_KEY_ID": "AKIADFTEST7Q2W9E4R1T",
    "AWS_SECRET_ACCESS_KEY": "dfTEST/aws+secret/K9v2Lm4Np6Qr8St0Uv2Wx",
    "HF_TOKEN": "hf_dfTESTtokenZx81Yw72Vu63Ts54",
}
TEACHER_KEY_ENV, JUDGE_KEY_ENV = "DISTILFLOW_TEST_TEACHER_KEY", "DISTILFLOW_TEST_JUDGE_KEY"

FIGURES: list[str] = []
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def figure(name: str, **values: Any) -> str:
    """Print one line of figures for a test (and keep it for the terminal summary)."""
    line = f"[reliability] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
    print(line, flush=True)
    FIGURES.append(line)
    return line


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if FIGURES:
        terminalreporter.section("reliability figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="package", autouse=True)
def fake_secrets():
    """The fake keys in the environment of this process and of every stage subprocess."""
    mp = pytest.MonkeyPatch()
    for name, value in SECRETS.items():
        mp.setenv(name, value)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield SECRETS
    mp.undo()


@pytest.fixture(scope="package")
def rel_root(tmp_path_factory) -> str:
    """The folder under which every run of the suite writes (outputs, caches, logs, compiled pipelines)."""
    return str(tmp_path_factory.mktemp("reliability"))


@pytest.fixture
def work(rel_root, request) -> str:
    """A fresh folder for one test, under ``rel_root``."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:60]
    path = os.path.join(rel_root, f"{name}-{uuid.uuid4().hex[:6]}")
    os.makedirs(path)
    return path


def write_config(path: str, data: dict[str, Any]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distilflow.client.cli", *args]


def cli(*args: str, log: str | None = None, timeout: float = 300, env: dict | None = None):
    """Run ``distilflow ARGS`` in a subprocess; its output also goes to ``log`` (scanned for secrets)."""
    done = subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ distilflow {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    return done


def popen_cli(*args: str, log: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``distilflow ARGS`` in a subprocess writing to ``log``."""
    out = open(log, "a", encoding="utf-8")  # noqa: SIM115 (closed by the child's exit; tiny leak in tests)
    return subprocess.Popen(
        cli_command(*args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
    )


def result_of(done: subprocess.CompletedProcess) -> dict[str, Any]:
    """The stage result ``distilflow stage`` printed as JSON (the last JSON object of its stdout)."""
    text = done.stdout
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.index("{") :])


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """A fresh bucket on moto; returns ``(bucket, moto_url)``. Credentials are the fake ones."""
    import boto3
    import fsspec
    import s3fs

    name = f"rel-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    fsspec.config.conf.pop("s3", None)
    s3fs.S3FileSystem.clear_instance_cache()
    return name, s3_server


@pytest.fixture
def faulty_s3(s3_env, monkeypatch):
    """A fault-injecting proxy in front of moto, with ``DISTILFLOW_S3_ENDPOINT_URL`` pointing at it.

    Yields ``(proxy, bucket)``; the default faults are set per test on ``proxy.faults``."""
    import s3fs

    from tests.fakes.s3_proxy import FaultyS3Proxy

    bucket, upstream = s3_env
    proxy = FaultyS3Proxy(upstream, faults={}, seed=7)
    url = proxy.start()
    monkeypatch.setenv("DISTILFLOW_S3_ENDPOINT_URL", url)
    s3fs.S3FileSystem.clear_instance_cache()
    yield proxy, bucket
    proxy.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def problems(path: str, n: int, prefix: str = "p", **extra: Any) -> str:
    """``n`` arithmetic problems with reference answers as JSONL at ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = {"id": f"{prefix}{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} | extra
            f.write(json.dumps(row) + "\n")
    return path


def endpoint_teacher(base_url: str, key_env: str = TEACHER_KEY_ENV, **overrides: Any) -> dict[str, Any]:
    """An openai-backend teacher section for the fault server, with fast retries."""
    return {
        "backend": "openai",
        "base_url": base_url,
        "model": "teacher",
        "api_key_env": key_env,
        "max_new_tokens": 64,
        "seed": 1,
        "concurrency": 8,
        "timeout_s": 5,
        "max_retries": 10,
        "retry_backoff_s": 0.01,
        "retry_max_backoff_s": 0.05,
    } | overrides
