"""The distill stage on real (tiny) models: transformers in-process and an OpenAI-compatible server."""

from __future__ import annotations

import json
import os

import pytest

from distilflow import uri as uris
from distilflow.components.distill.config import DistillConfig
from distilflow.components.distill.run import PARTIAL, run
from distilflow.outputs import MANIFEST, MARKER, RESOLVED_CONFIG
from distilflow.records import Trace, read_jsonl
from distilflow.teacher import TransformersTeacher
from tests.openai_server import TinyOpenAIServer


def config_for(out: str, problems: str, model: str, **overrides) -> DistillConfig:
    teacher = {"backend": "transformers", "model": model, "max_new_tokens": 6, "seed": 0}
    teacher.update(overrides.pop("teacher", {}))
    return DistillConfig.from_dict(
        {"output_uri": out, "problems_uri": problems, "teacher": teacher, "n": 2, "batch_size": 2} | overrides
    )


@pytest.fixture
def count_generate(monkeypatch):
    """Count the chats the transformers teacher is asked to answer (the real generate still runs)."""
    asked: list[int] = []
    original = TransformersTeacher.generate

    def counting(self, chats, n=1):
        asked.append(len(chats))
        return original(self, chats, n)

    monkeypatch.setattr(TransformersTeacher, "generate", counting)
    return asked


def test_distill_transformers_writes_traces_manifest_and_marker(
    tmp_path, problems_file, tiny_qwen3, count_generate
):
    out = str(tmp_path / "distill")
    config = config_for(out, problems_file, tiny_qwen3, teacher={"name": "tiny-teacher"})
    result = run(config)
    rows = read_jsonl(os.path.join(out, "traces.jsonl"), Trace)
    assert result.problems == 4 and result.traces == len(rows) == 4 * 2
    assert len({r.id for r in rows}) == len(rows)
    assert {r.teacher for r in rows} == {"tiny-teacher"} and result.teacher == "tiny-teacher"
    assert {(r.problem_id, r.sample) for r in rows} == {(f"p{i}", s) for i in range(1, 5) for s in (0, 1)}
    assert all(r.reference is not None and r.tokens > 0 for r in rows)
    assert result.tokens == sum(r.tokens for r in rows) > 0
    assert sum(result.finish_reasons.values()) == 8
    assert count_generate == [2, 2]
    for name in (MARKER, MANIFEST, RESOLVED_CONFIG):
        assert os.path.exists(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, PARTIAL))
    manifest = json.loads(uris.read_text(os.path.join(out, MANIFEST)))
    assert manifest["inputs"]["prompt_template"] == "cot_thought_solution_v1"
    assert manifest["counts"]["traces"] == 8 and manifest["result"]["teacher"] == "tiny-teacher"

    # A rerun of a complete output returns the stored result without loading the teacher.
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded for a finished output")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TransformersTeacher, "__init__", no_teacher)
        assert run(config) == result
    assert count_generate == [2, 2]


def test_distill_resumes_after_a_crash(tmp_path, problems_file, tiny_qwen3, monkeypatch):
    out = str(tmp_path / "distill")
    config = config_for(out, problems_file, tiny_qwen3)
    original = TransformersTeacher.generate
    calls: list[int] = []

    def crash_on_second_batch(self, chats, n=1):
        calls.append(len(chats))
        if len(calls) == 2:
            raise RuntimeError("node preempted")
        return original(self, chats, n)

    monkeypatch.setattr(TransformersTeacher, "generate", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="preempted"):
        run(config)
    part = os.path.join(out, PARTIAL)
    assert not os.path.exists(os.path.join(out, MARKER))
    saved = read_jsonl(part, Trace)
    assert {t.problem_id for t in saved} == {"p1", "p2"} and len(saved) == 4
    # The crash hit mid-append: a torn last line must not break the resume.
    with open(part, "a") as f:
        f.write('{"id": "p3/tiny/0", "problem_id": "p3", "prob')

    calls.clear()
    monkeypatch.setattr(
        TransformersTeacher,
        "generate",
        lambda self, chats, n=1: calls.append(len(chats)) or original(self, chats, n),
    )
    result = run(config)
    assert calls == [2]  # only p3 and p4 were asked
    assert result.resumed == 2 and result.traces == 8
    rows = read_jsonl(os.path.join(out, "traces.jsonl"), Trace)
    assert [r.id for r in rows[:4]] == [t.id for t in saved]
    assert [r.content for r in rows[:4]] == [t.content for t in saved]
    assert os.path.exists(os.path.join(out, MARKER)) and not os.path.exists(part)


def test_distill_discards_a_part_file_from_other_teacher_settings(
    tmp_path, problems_file, tiny_qwen3, count_generate
):
    out = str(tmp_path / "distill")
    first = config_for(out, problems_file, tiny_qwen3, limit=2)
    run(first)
    # Fake an interrupted run by putting its traces back as the part file of a different config.
    os.rename(os.path.join(out, "traces.jsonl"), os.path.join(out, PARTIAL))
    uris.write_text(os.path.join(out, "traces.partial.json"), json.dumps({"key": "other"}))
    count_generate.clear()
    result = run(config_for(out, problems_file, tiny_qwen3, limit=2, teacher={"max_new_tokens": 3}))
    assert result.resumed == 0 and count_generate == [2]


def test_distill_native_prompt_on_s3(s3_bucket, problems_file, tiny_qwen3):
    out = f"s3://{s3_bucket}/runs/r1/distill"
    config = config_for(out, problems_file, tiny_qwen3, n=1, limit=3, batch_size=1, prompt="native")
    result = run(config)
    assert result.traces == 3 and result.prompt_template is None
    assert uris.exists(f"{out}/{MARKER}") and not uris.exists(f"{out}/{PARTIAL}")
    assert [t.problem_id for t in read_jsonl(f"{out}/traces.jsonl", Trace)] == ["p1", "p2", "p3"]


def test_distill_openai_backend_reads_the_key_from_env_and_never_writes_it(
    tmp_path, problems_file, tiny_qwen3, monkeypatch
):
    secret = "sk-distill-secret-0123456789"
    server = TinyOpenAIServer(tiny_qwen3, api_key=secret, served_name="tiny-served")
    base_url = server.start()
    try:
        monkeypatch.setenv("DISTILL_TEST_KEY", secret)
        out = str(tmp_path / "distill")
        teacher = {
            "backend": "openai",
            "model": "tiny-served",
            "base_url": base_url,
            "api_key_env": "DISTILL_TEST_KEY",
        }
        teacher |= {"max_new_tokens": 5, "seed": 3, "concurrency": 2}
        config = DistillConfig.from_dict(
            {"output_uri": out, "problems_uri": problems_file, "teacher": teacher, "n": 2, "batch_size": 3}
        )
        result = run(config)
    finally:
        server.stop()
    rows = read_jsonl(os.path.join(out, "traces.jsonl"), Trace)
    assert result.traces == len(rows) == 8 and result.tokens > 0
    assert {r.teacher for r in rows} == {"tiny-served"}
    chats = [r["body"] for r in server.requests if r["path"].endswith("/chat/completions")]
    assert len(chats) == 8 and all(r["authorization"] == f"Bearer {secret}" for r in server.requests)
    assert chats[0]["messages"][0]["role"] == "system" and "\\boxed{}" in chats[0]["messages"][0]["content"]
    for root, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert secret.encode() not in f.read(), name


@pytest.mark.slow
def test_distill_against_transformers_serve(tmp_path, problems_file, tiny_qwen3):
    """`transformers serve` as the endpoint (about 10-15 s to start on 2 cores, hence slow)."""
    import subprocess
    import sys
    import time

    import httpx

    from tests.conftest import free_port

    port = free_port()
    cli = os.path.join(os.path.dirname(sys.executable), "transformers")
    proc = subprocess.Popen(
        [cli, "serve", tiny_qwen3, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        teacher = {"backend": "openai", "model": tiny_qwen3, "base_url": f"http://127.0.0.1:{port}/v1"}
        teacher |= {"max_new_tokens": 4, "seed": 1, "concurrency": 2}
        config = DistillConfig.from_dict(
            {
                "output_uri": str(tmp_path / "distill"),
                "problems_uri": problems_file,
                "teacher": teacher,
                "n": 2,
            }
        )
        result = run(config)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # transformers serve ignores `n`: one request per sample still yields problems x n traces.
    assert result.traces == 8 and result.tokens > 0
