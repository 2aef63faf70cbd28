"""The distill stage on real (tiny) models: transformers in-process and an OpenAI-compatible server."""

from __future__ import annotations

import collections
import glob
import json
import os

import pytest

from distilflow import uri as uris
from distilflow.components.distill.config import DistillConfig
from distilflow.components.distill.run import FAILURES, PARTS, REPORT_HTML, REPORT_MD, generation_key, run
from distilflow.errors import ConfigError
from distilflow.outputs import MANIFEST, MARKER, RESOLVED_CONFIG
from distilflow.records import Trace, read_jsonl
from distilflow.teachers.transformers import TransformersTeacher
from tests.fakes.openai_server import TinyOpenAIServer


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
    assert not os.path.exists(os.path.join(out, PARTS))
    for name in (FAILURES, REPORT_MD, REPORT_HTML):
        assert os.path.exists(os.path.join(out, name)), name
    assert "Output length" in uris.read_text(os.path.join(out, REPORT_MD))
    assert result.failed == 0 and result.requests == 8 and result.cache_hits == 0
    # Measured for an in-process teacher too: each of the 8 answers counts its prompt (no padding).
    from transformers import AutoTokenizer

    from distilflow.components.distill.run import build_chat, system_prompt
    from distilflow.records import Problem

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    chats = [build_chat(p, system_prompt(config)) for p in read_jsonl(problems_file, Problem)]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert result.prompt_tokens == 2 * sum(lengths) and result.mean_latency_s > 0
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


def test_transformers_teacher_counts_each_prompt_without_its_padding(tiny_qwen3):
    from distilflow.teachers.config import TeacherConfig

    teacher = TransformersTeacher(
        TeacherConfig(backend="transformers", model=tiny_qwen3, max_new_tokens=2, batch_size=2)
    )
    chats = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "What is 12 + 30? " * 5}]]
    tok = teacher.tokenizer
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert lengths[0] < lengths[1]  # one batch, the first prompt left-padded
    got = teacher.generate(chats, n=1)
    assert [a[0].prompt_tokens for a in got] == lengths


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
    parts = os.path.join(out, PARTS, generation_key(config))
    assert not os.path.exists(os.path.join(out, MARKER))
    assert sorted(os.listdir(parts)) == ["part-00000.jsonl"]
    saved = read_jsonl(os.path.join(parts, "part-00000.jsonl"), Trace)
    assert {t.problem_id for t in saved} == {"p1", "p2"} and len(saved) == 4
    # The kill hit mid-write of the next shard: its temporary file must not break the resume.
    with open(os.path.join(parts, "part-00001.jsonl.tmp-deadbeef"), "w") as f:
        f.write('{"id": "p3/tiny/0", "problem_id": "p3", "prob')

    calls.clear()
    monkeypatch.setattr(
        TransformersTeacher,
        "generate",
        lambda self, chats, n=1: calls.append(len(chats)) or original(self, chats, n),
    )
    result = run(config)
    assert calls == [2]  # only p3 and p4 were asked
    assert result.resumed == 4 and result.traces == 8
    rows = read_jsonl(os.path.join(out, "traces.jsonl"), Trace)
    assert [r.id for r in rows[:4]] == [t.id for t in saved]
    assert [r.content for r in rows[:4]] == [t.content for t in saved]
    assert os.path.exists(os.path.join(out, MARKER)) and not os.path.exists(os.path.join(out, PARTS))


def test_distill_drops_shards_of_other_teacher_settings(tmp_path, problems_file, tiny_qwen3, count_generate):
    out = str(tmp_path / "distill")
    first = config_for(out, problems_file, tiny_qwen3, limit=2)
    run(first)
    # Fake an interrupted run of other settings: its traces as a shard under another generation key.
    stale = os.path.join(out, PARTS, "0123456789abcdef")
    os.makedirs(stale)
    os.rename(os.path.join(out, "traces.jsonl"), os.path.join(stale, "part-00000.jsonl"))
    count_generate.clear()
    second = config_for(out, problems_file, tiny_qwen3, limit=2, teacher={"max_new_tokens": 3})
    result = run(second)
    assert result.resumed == 0 and count_generate == [2] and not os.path.exists(stale)
    # Back to the first settings in a fresh folder sharing the cache: nothing is generated.
    count_generate.clear()
    again = config_for(str(tmp_path / "again"), problems_file, tiny_qwen3, limit=2, cache_uri=out + "/cache")
    assert run(again).cache_hits == 4 and count_generate == []


def test_distill_native_prompt_on_s3(s3_bucket, problems_file, tiny_qwen3):
    out = f"s3://{s3_bucket}/runs/r1/distill"
    config = config_for(out, problems_file, tiny_qwen3, n=1, limit=3, batch_size=1, prompt="native")
    result = run(config)
    assert result.traces == 3 and result.prompt_template is None
    assert uris.exists(f"{out}/{MARKER}") and not uris.exists(f"{out}/{PARTS}")
    assert len(uris.filesystem(f"{out}/cache")[0].glob(f"{s3_bucket}/runs/r1/distill/cache/*/*.json")) == 3
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


# --- An endpoint teacher against the fault-injecting server (tests/fakes/fault_server.py) ---------------

FAULT_TO_KIND = {
    "429": "rate_limited",
    "500": "server_error",
    "timeout": "timeout",
    "drop": "connection",
    "malformed": "malformed",
}


def many_problems(path, count: int) -> str:
    from distilflow.records import Problem, write_jsonl

    write_jsonl(
        str(path),
        [Problem(id=f"q{i:03d}", problem=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(count)],
    )
    return str(path)


def endpoint_config(out, problems, base_url, cache_uri=None, **teacher) -> DistillConfig:
    spec = {"backend": "openai", "model": "teacher", "base_url": base_url, "seed": 7, "max_new_tokens": 64}
    spec |= {
        "concurrency": 8,
        "timeout_s": 0.5,
        "max_retries": 10,
        "retry_backoff_s": 0.01,
        "retry_max_backoff_s": 0.05,
    }
    spec |= teacher
    data = {"output_uri": str(out), "problems_uri": problems, "teacher": spec, "n": 2, "shard_size": 5}
    return DistillConfig.from_dict(data | ({"cache_uri": cache_uri} if cache_uri else {}))


def test_distill_completes_every_row_under_a_30_percent_fault_rate(tmp_path):
    from tests.fakes.fault_server import FaultServer

    problems = many_problems(tmp_path / "problems.jsonl", 40)
    faults = {"429": 0.06, "500": 0.06, "timeout": 0.06, "drop": 0.06, "malformed": 0.06}
    server = FaultServer(latency_s=0.005, faults=faults, hang_s=1.0, seed=3)
    with server as base_url:
        result = run(endpoint_config(tmp_path / "out", problems, base_url))
    rows = read_jsonl(result.traces_uri, Trace)
    assert result.traces == len(rows) == 80 and result.failed == 0
    assert {(r.problem_id, r.sample) for r in rows} == {(f"q{i:03d}", s) for i in range(40) for s in (0, 1)}
    # Both reasoning layouts of the server (<think> in content, reasoning_content) are split.
    assert all(
        r.reasoning.startswith("Consider: What is") and r.content.startswith("The answer is \\boxed")
        for r in rows
    )
    # Every injected fault was met and retried; the client counted exactly what the server injected.
    injected = collections.Counter(FAULT_TO_KIND[e["fault"]] for e in server.log if e["fault"])
    assert set(injected) == set(FAULT_TO_KIND.values())
    assert result.errors_by_kind == dict(injected)
    assert result.requests == server.requests == 80 + sum(injected.values())
    assert uris.read_text(result.failures_uri) == ""


@pytest.mark.unit
def test_distill_failure_budget_trips_when_the_endpoint_is_down(tmp_path):
    from distilflow.errors import BackendError
    from tests.conftest import free_port

    problems = many_problems(tmp_path / "problems.jsonl", 10)
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "out"
    config = endpoint_config(out, problems, base_url, max_retries=2, concurrency=2)
    with pytest.raises(BackendError) as info:
        run(config)
    message = str(info.value)
    assert base_url in message and "min_success_ratio=0.95" in message and "'connection'" in message
    assert "failures.jsonl" in message
    failed = [json.loads(line) for line in uris.read_text(str(out / FAILURES)).splitlines()]
    # It stops as soon as the ratio is out of reach (1 failure of 20 allowed), not after every row.
    assert 2 <= len(failed) <= 3 and all(f["kind"] == "connection" and f["attempts"] == 3 for f in failed)
    assert not os.path.exists(out / MARKER)

    # With no budget the stage finishes, lists every failed row, and writes no trace.
    lenient = endpoint_config(tmp_path / "lenient", problems, base_url, max_retries=0)
    lenient = lenient.model_copy(update={"min_success_ratio": 0.0})
    result = run(lenient)
    assert result.traces == 0 and result.failed == 20 and result.failures_by_kind == {"connection": 20}
    rows = [json.loads(line) for line in uris.read_text(result.failures_uri).splitlines()]
    assert {(r["problem_id"], r["sample"]) for r in rows} == {
        (f"q{i:03d}", s) for i in range(10) for s in (0, 1)
    }


def test_distill_cache_makes_a_second_run_send_nothing_and_redoes_corrupt_entries(tmp_path):
    from tests.fakes.fault_server import FaultServer

    problems = many_problems(tmp_path / "problems.jsonl", 10)
    cache = str(tmp_path / "shared-cache")
    with FaultServer() as base_url:
        first = run(endpoint_config(tmp_path / "a", problems, base_url, cache_uri=cache))
    # Another run (another pipeline, another output folder) with the same requests: zero sent.
    server = FaultServer()
    with server as base_url:
        second = run(endpoint_config(tmp_path / "b", problems, base_url, cache_uri=cache))
        assert server.requests == 0 and second.requests == 0 and second.cache_hits == 20
        assert read_jsonl(second.traces_uri, Trace) == read_jsonl(first.traces_uri, Trace)
        # A truncated entry and one whose answer no longer matches its checksum are asked again.
        entries = sorted(glob.glob(os.path.join(cache, "*", "*.json")))
        assert len(entries) == 20
        with open(entries[0], "r+b") as f:
            f.truncate(40)
        entry = json.loads(uris.read_text(entries[1]))
        entry["answer"]["content"] = "tampered"
        with open(entries[1], "w") as f:
            json.dump(entry, f)
        third = run(endpoint_config(tmp_path / "c", problems, base_url, cache_uri=cache))
        assert server.requests == 2 and third.cache_hits == 18
    assert read_jsonl(third.traces_uri, Trace) == read_jsonl(first.traces_uri, Trace)
    assert json.loads(uris.read_text(entries[1]))["answer"]["content"] != "tampered"


def test_distill_never_writes_the_api_key(tmp_path, monkeypatch):
    from tests.fakes.fault_server import FaultServer

    secret = "sk-fault-secret-9876543210"
    monkeypatch.setenv("FAULT_TEST_KEY", secret)
    problems = many_problems(tmp_path / "problems.jsonl", 6)
    server = FaultServer(api_key=secret, faults={"500": 0.3}, seed=1)
    with server as base_url:
        result = run(endpoint_config(tmp_path / "out", problems, base_url, api_key_env="FAULT_TEST_KEY"))
    assert result.traces == 12 and server.requests > 12  # the key was sent (else 401) and retries happened
    written = [os.path.join(root, f) for root, _, files in os.walk(tmp_path) for f in files]
    assert any("cache" in p for p in written) and any(p.endswith("manifest.json") for p in written)
    for path in written:
        with open(path, "rb") as f:
            assert secret.encode() not in f.read(), path


def test_distill_killed_mid_run_resumes_without_resending_answered_requests(tmp_path):
    """SIGKILL the stage (a subprocess) mid-run, rerun: same rows as an uninterrupted run, and the
    server sees each request once, apart from at most `concurrency` in flight at the kill."""
    import signal
    import subprocess
    import sys
    import time

    from tests.fakes.fault_server import FaultServer

    problems = many_problems(tmp_path / "problems.jsonl", 60)
    concurrency = 4
    with FaultServer(latency_s=0.02) as base_url:
        reference = run(endpoint_config(tmp_path / "reference", problems, base_url, concurrency=concurrency))

    server = FaultServer(latency_s=0.02)
    with server as base_url:
        config = endpoint_config(tmp_path / "out", problems, base_url, concurrency=concurrency)
        script = (
            "import json, sys\n"
            "from distilflow.components.distill.config import DistillConfig\n"
            "from distilflow.components.distill.run import run\n"
            "run(DistillConfig.from_dict(json.loads(sys.argv[1])))\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(config.to_dict())])
        deadline = time.monotonic() + 30
        while server.requests < 50 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = server.requests
        assert proc.returncode == -signal.SIGKILL and 50 <= before < 120, before
        assert not os.path.exists(tmp_path / "out" / MARKER)
        result = run(config)
    rows = read_jsonl(result.traces_uri, Trace)
    assert [(r.id, r.reasoning, r.content) for r in rows] == [
        (r.id, r.reasoning, r.content) for r in read_jsonl(reference.traces_uri, Trace)
    ]
    sent = server.sent()
    assert len(sent) == 120 and set(sent.values()) <= {1, 2}
    resent = sum(count - 1 for count in sent.values())
    assert resent <= concurrency, (resent, before)
    assert result.requests == 120 - before + resent
    # Rows saved as shards plus answers saved in the cache cover everything answered before the kill.
    assert result.resumed + result.cache_hits == before - resent
    assert result.resumed > 0


def test_distill_fans_out_over_shards_with_parallel_for_and_merges(tmp_path):
    """Three shards run under kfp.local as a ParallelFor, each as the real distill component; the
    merge joins them in problem order, and refuses when a shard is not complete."""
    from kfp import local

    from distilflow.client._kfp_local import keep_executor_args_intact
    from distilflow.components.distill.fanout import sharded
    from distilflow.components.distill.run import merge, shard_uri
    from distilflow.errors import IncompleteOutputError
    from tests.fakes.fault_server import FaultServer

    problems = many_problems(tmp_path / "problems.jsonl", 10)
    teachers = [
        {
            "backend": "openai",
            "model": "teacher",
            "name": name,
            "base_url": None,
            "seed": 1,
            "max_new_tokens": 64,
        }
        for name in ("big", "small")
    ]
    keep_executor_args_intact()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    server = FaultServer(faults={"500": 0.2}, seed=2)
    with server as base_url:
        for t in teachers:
            t |= {"base_url": base_url, "retry_backoff_s": 0.01, "max_retries": 8}
        config = {"distill": {"problems_uri": problems, "teachers": teachers, "shares": [3, 1], "n": 2}}
        run_uri = str(tmp_path / "run")
        sharded(3)(output_uri=run_uri, config=config)
    root = os.path.join(run_uri, "distill")
    rows = read_jsonl(os.path.join(root, "traces.jsonl"), Trace)
    assert [(r.problem_id, r.sample) for r in rows] == [(f"q{i:03d}", s) for i in range(10) for s in (0, 1)]
    # Each row went to one teacher, by its share (stable hash routing), and the trace says which.
    by_teacher = collections.Counter(r.teacher for r in rows)
    assert set(by_teacher) == {"big", "small"} and by_teacher["big"] > by_teacher["small"]
    assert all(r.id == f"{r.problem_id}/{r.teacher}/{r.sample}" for r in rows)
    assert len(server.sent()) == 20  # every row asked once, over all shards (retries aside)
    manifest = json.loads(uris.read_text(os.path.join(root, MANIFEST)))
    assert manifest["counts"]["shards"] == 3 and manifest["result"]["by_teacher"] == dict(by_teacher)
    assert os.path.exists(os.path.join(root, MARKER))

    # A shard that lost its marker stops the merge, which names it.
    os.remove(os.path.join(shard_uri(root, 1), MARKER))
    with pytest.raises(IncompleteOutputError, match=r"1 of 3 distill shards.*00001"):
        merge(root, [shard_uri(root, i) for i in range(3)])


# --- vLLM offline backend -------------------------------------------------------------------------


def vllm_config(tmp_path, problems, model) -> DistillConfig:
    teacher = {"backend": "vllm", "model": model, "max_new_tokens": 8, "seed": 0, "max_model_len": 512}
    teacher |= {"gpu_memory_utilization": 0.3}
    return DistillConfig.from_dict(
        {"output_uri": str(tmp_path / "distill"), "problems_uri": problems, "teacher": teacher, "n": 2}
    )


def test_distill_vllm_backend_without_vllm_says_how_to_get_it(tmp_path, problems_file, tiny_qwen3):
    import importlib.util

    from distilflow.errors import BackendError

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(
        BackendError, match=r"pip install vllm.*distilflow-vllm|distilflow-vllm.*pip install vllm"
    ):
        run(vllm_config(tmp_path, problems_file, tiny_qwen3))


@pytest.mark.gpu
def test_distill_vllm_backend_on_gpu(tmp_path, problems_file, tiny_qwen3):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    result = run(vllm_config(tmp_path, problems_file, tiny_qwen3))
    rows = read_jsonl(result.traces_uri, Trace)
    assert result.traces == len(rows) == 8 and all(r.tokens > 0 for r in rows)
    assert {(r.problem_id, r.sample) for r in rows} == {(f"p{i}", s) for i in range(1, 5) for s in (0, 1)}


@pytest.mark.unit
def test_distill_config_checks_teachers_and_shares():
    from distilflow.components.distill.run import route
    from distilflow.errors import ConfigError

    base = {"output_uri": "out", "problems_uri": "p.jsonl"}
    t = {"backend": "transformers", "model": "m"}
    with pytest.raises(ConfigError, match="exactly one of teacher"):
        DistillConfig.from_dict(base)
    with pytest.raises(ConfigError, match="exactly one of teacher"):
        DistillConfig.from_dict(base | {"teacher": t, "teachers": [t]})
    with pytest.raises(ConfigError, match="same name"):
        DistillConfig.from_dict(base | {"teachers": [t, t]})
    with pytest.raises(ConfigError, match=r"shares=\[1.0\] must hold one positive number per teacher \(2\)"):
        DistillConfig.from_dict(base | {"teachers": [t, t | {"name": "b"}], "shares": [1]})
    with pytest.raises(ConfigError, match="shard_index=2 must be below num_shards=2"):
        DistillConfig.from_dict(base | {"teacher": t, "num_shards": 2, "shard_index": 2})
    # Routing follows the shares and depends only on (problem, sample).
    picks = collections.Counter(route(f"q{i}", s, [3.0, 1.0]) for i in range(2000) for s in range(2))
    assert 0.72 < picks[0] / 4000 < 0.78
    assert route("q7", 1, [3.0, 1.0]) == route("q7", 1, [3.0, 1.0])


@pytest.mark.unit
def test_distill_fanout_pipeline_compiles_with_parallel_for_stage_images_and_no_caching(tmp_path):
    import yaml
    from kfp import compiler

    from distilflow.components.distill.fanout import sharded
    from distilflow.images import stage_image

    path = str(tmp_path / "fanout.yaml")
    compiler.Compiler().compile(sharded(4, parallelism=2), path)
    spec = yaml.safe_load(uris.read_text(path))
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {stage_image("distill")}
    loop = next(t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t)
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    assert json.loads(loop["parameterIterator"]["items"]["raw"]) == [0, 1, 2, 3]
    tasks = list(spec["root"]["dag"]["tasks"].values())
    tasks += [t for c in spec["components"].values() for t in c.get("dag", {}).get("tasks", {}).values()]
    assert all(t.get("cachingOptions", {}).get("enableCache", False) is False for t in tasks)


def test_distill_prompt_layout_per_teacher(tmp_path):
    """A reasoning teacher can take its native format while a chat teacher gets the CoT system prompt."""
    from tests.fakes.fault_server import FaultServer

    problems = many_problems(tmp_path / "problems.jsonl", 10)
    server = FaultServer()
    base_url = server.start()
    try:
        common = {"backend": "openai", "base_url": base_url, "max_new_tokens": 32, "seed": 1}
        config = DistillConfig.from_dict(
            {
                "output_uri": str(tmp_path / "out"),
                "problems_uri": problems,
                "teachers": [
                    common | {"model": "chat-model", "name": "a"},
                    common | {"model": "r1", "name": "b"},
                ],
                "prompts": {"b": "native"},
                "n": 2,
            }
        )
        result = run(config)
    finally:
        server.stop()
    bodies = [entry["body"] for entry in server.log]
    assert {b["model"] for b in bodies} == {"chat-model", "r1"}
    for body in bodies:
        roles = [m["role"] for m in body["messages"]]
        assert roles == (["system", "user"] if body["model"] == "chat-model" else ["user"]), body
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"]["prompt_templates"] == {"a": "cot_thought_solution_v1", "b": "native"}
    assert result.traces == 20
    with pytest.raises(ConfigError, match="not in this stage"):
        DistillConfig.from_dict(config.to_dict() | {"prompts": {"c": "native"}})
