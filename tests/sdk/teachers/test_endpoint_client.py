"""The endpoint client's pool and retry policy (``distilflow.teachers.endpoint``), against tests/fakes/fault_server.py:
connections are reused and opened gradually, a healthy server's faults are retried at once, backoff
grows only while errors persist, and rows that keep failing on a healthy server get a final retry
pass (distill and the judge) before they count as failed."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from distilflow.report_style import fmt
from distilflow.teachers import make_teacher
from distilflow.teachers.config import TeacherConfig
from distilflow.teachers.endpoint import RAMP_CONNECTIONS, RAMP_HOLD_S, AsyncEndpoint
from tests.fakes.fault_server import FaultServer


def fault_teacher(base_url: str, **overrides) -> TeacherConfig:
    spec = {"backend": "openai", "model": "teacher", "base_url": base_url, "max_new_tokens": 32}
    spec |= {"timeout_s": 5, "retry_backoff_s": 0, "retry_max_backoff_s": 0}
    return TeacherConfig(**(spec | overrides))


def chats(count: int, tag: str = "q") -> list[list[dict]]:
    return [[{"role": "user", "content": f"{tag}{i}"}] for i in range(count)]


def test_retry_delay_is_immediate_while_errors_do_not_persist_then_grows():
    ep = AsyncEndpoint("http://127.0.0.1:9/v1", "k", backoff_s=1.0, max_backoff_s=64.0, immediate_retries=2)
    random.seed(18)
    for kind in ("server_error", "connection", "timeout", "malformed"):
        assert ep.retry_delay(kind, 1, None) == 0.0 and ep.retry_delay(kind, 2, None) == 0.0

    def widest(kind: str, streak: int) -> float:
        return max(ep.retry_delay(kind, streak, None) for _ in range(400))

    # past the immediate retries: full jitter over 0..base*2**k, k counting only the further errors
    for streak, cap in ((3, 1.0), (4, 2.0), (6, 8.0), (20, 64.0)):
        assert 0.8 * cap <= widest("server_error", streak) <= cap
    # a 429 without Retry-After is never retried at once (a rate limit is about pace)
    assert min(ep.retry_delay("rate_limited", 1, None) for _ in range(100)) > 0
    assert 0.8 <= widest("rate_limited", 1) <= 1.0 and 1.6 <= widest("rate_limited", 2) <= 2.0
    # the server's Retry-After wins, at any streak
    assert ep.retry_delay("rate_limited", 1, 2.5) == 2.5 and ep.retry_delay("server_error", 1, 0.0) == 0.0


def test_a_healthy_servers_faults_are_retried_at_once():
    """With a 20 s backoff base, two 500s in a row on a server that answers are retried at once."""
    server = FaultServer(script=["500", "500"])
    with server as base_url:
        teacher = make_teacher(fault_teacher(base_url, retry_backoff_s=20, retry_max_backoff_s=20))
        start = time.monotonic()
        answers = teacher.generate(chats(1))
        elapsed = time.monotonic() - start
    assert len(answers) == 1 and server.requests == 3 and teacher.stats.retries == 2
    assert elapsed < 3.0


def test_a_persistent_error_backs_off_between_attempts():
    """Errors with no answer in between: two at once, then waits that grow (base 0.2 s: up to 0.2,
    0.4); the last attempt comes at least a little later than the immediate ones."""
    server = FaultServer(faults={"500": 1.0})
    with server as base_url:
        teacher = make_teacher(fault_teacher(base_url, max_retries=4, retry_backoff_s=0.2))
        with pytest.raises(Exception, match="HTTP 500.*after 5 attempts"):
            teacher.generate(chats(1))
    times = [e["t"] for e in server.log]
    assert len(times) == 5
    assert times[2] - times[0] < 0.15  # attempts 2 and 3 at once


def test_connections_are_opened_a_few_at_a_time():
    """32 requests at once on 32 connections: their first requests spread over the ramp-up
    (RAMP_CONNECTIONS at a time, each holding its place RAMP_HOLD_S), not one burst that would
    overflow a small listen backlog."""
    server = FaultServer(latency_s=0.5)
    with server as base_url:
        teacher = make_teacher(fault_teacher(base_url, concurrency=32))
        assert len(teacher.generate(chats(32))) == 32
    assert server.requests == 32 and len({e["peer"] for e in server.log}) == 32
    times = sorted(e["t"] for e in server.log)
    batches = 32 // RAMP_CONNECTIONS
    assert times[-1] - times[0] >= 0.8 * (batches - 1) * RAMP_HOLD_S


def test_one_endpoint_reuses_its_connections():
    """Three waves of 8 requests through one endpoint: 8 connections in all, kept alive."""
    server = FaultServer(latency_s=0.05)

    async def two_waves(base_url: str) -> None:
        async with AsyncEndpoint(base_url, "k", concurrency=8) as ep:
            for wave in range(3):
                body = {"model": "teacher", "max_tokens": 8}
                await asyncio.gather(
                    *(
                        ep.post(
                            "chat/completions",
                            body | {"messages": [{"role": "user", "content": f"{wave}-{i}"}]},
                        )
                        for i in range(8)
                    )
                )

    with server as base_url:
        asyncio.run(two_waves(base_url))
    assert server.requests == 24 and len({e["peer"] for e in server.log}) == 8


def test_judge_retries_transient_failures_in_a_final_pass(tmp_path):
    """The judge path (CachedTeacher) with no retries at all on a server failing 30% of requests:
    every judgment still comes back (a final pass within retry_budget_s), none is lost."""
    from distilflow.teachers.cache import TeacherCache
    from distilflow.teachers.cached import CachedTeacher

    # the first 8 arrive at a healthy server: a failure then comes after an answer (concurrency 4)
    server = FaultServer(faults={"500": 0.15, "drop": 0.15}, seed=4, script=[None] * 8)
    with server as base_url:
        config = fault_teacher(base_url, max_retries=0, concurrency=4)
        judge = CachedTeacher(config, TeacherCache(str(tmp_path / "cache")))
        answers = judge.generate(chats(40), n=1)
    assert len(answers) == 40 and all(a[0].content.startswith("The answer is") for a in answers)
    assert sum(1 for e in server.log if e["fault"]) >= 5  # the faults were met and retried
    assert len(server.answered) == 40 and set(server.answered.values()) == {1}


def test_distill_final_pass_loses_no_row_and_labels_both_rates(tmp_path):
    """distill with no retries at all on a server failing 30% of requests: rows that failed are asked
    again in the final pass, so every row arrives once and none is listed as failed; the result
    tells requests/s (retries included) from traces/s."""
    import json

    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import run
    from distilflow.records import Problem, write_jsonl

    problems = str(tmp_path / "problems.jsonl")
    write_jsonl(problems, [Problem(id=f"q{i}", problem=f"What is {i} + {i}?") for i in range(30)])
    faults = {"500": 0.1, "drop": 0.1, "malformed": 0.1}
    server = FaultServer(latency_s=0.01, faults=faults, seed=9, script=[None] * 8)
    with server as base_url:
        teacher = fault_teacher(base_url, max_retries=0, concurrency=4, seed=1).model_dump()
        config = DistillConfig.from_dict(
            {"output_uri": str(tmp_path / "out"), "problems_uri": problems, "n": 2, "teacher": teacher}
        )
        result = run(config)
    rows = [json.loads(line) for line in Path(result.traces_uri).read_text().splitlines()]
    assert result.failed == 0 and result.traces == len(rows) == 60
    assert len({(r["problem_id"], r["sample"]) for r in rows}) == 60
    faulted = sum(1 for e in server.log if e["fault"])
    assert faulted >= 5 and result.requests == server.requests == 60 + faulted
    assert set(server.answered.values()) == {1}  # no request answered twice
    assert result.requests_per_s * result.wall_s == pytest.approx(result.requests, rel=0.01)
    assert result.traces_per_s * result.wall_s == pytest.approx(60, rel=0.01)
    report = Path(result.report_md).read_text()
    assert f"| requests sent per second (retries included) | {fmt(result.requests_per_s)} |" in report
    assert f"| traces received per second | {fmt(result.traces_per_s)} |" in report


def test_the_environments_proxy_is_looked_up_once_per_endpoint(monkeypatch):
    from distilflow.teachers.endpoint import _env_proxy

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _env_proxy("https://api.example.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert _env_proxy("https://api.example.com/v1") == "http://proxy.internal:3128"
    assert _env_proxy("http://api.example.com/v1") is None  # no HTTP_PROXY
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert _env_proxy("https://api.example.com/v1") is None
