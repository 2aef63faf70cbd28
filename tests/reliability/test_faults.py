"""Promise 1: faults of the teacher/judge endpoint and of the object store lose no row, duplicate no
row, and cost only the requests they broke.

Each stage runs as users run it (``distilflow stage NAME --config``, a subprocess) against
``tests/fakes/fault_server.py`` (every fault kind forced at least once, then drawn at random) with its
outputs and cache on S3 behind ``s3_proxy.FaultyS3Proxy`` (slow writes, 500/503, dropped connections
before and after the store applied a write). The result must equal a fault-free run's, row for row.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from distilflow import uri as uris
from distilflow.outputs import MARKER
from distilflow.records import Scored, Trace, iter_output_rows, output_shards, read_jsonl
from tests.fakes.fault_server import FAULTS, FaultServer
from tests.reliability.conftest import (
    JUDGE_KEY_ENV,
    SECRETS,
    TEACHER_KEY_ENV,
    cli,
    endpoint_teacher,
    figure,
    problems,
    result_of,
    write_config,
)

pytestmark = pytest.mark.reliability

ENDPOINT_FAULTS = {
    "429": 0.05,
    "500": 0.05,
    "503": 0.05,
    "timeout": 0.02,
    "drop": 0.04,
    "malformed": 0.04,
    "reset": 0.04,
    "truncated": 0.04,
}
S3_FAULTS = {"slow": 0.05, "500": 0.03, "503": 0.02, "drop": 0.02, "drop_after": 0.02}


def distill_section(out: str, problems_uri: str, base_url: str, **extra) -> dict:
    teacher = endpoint_teacher(base_url, timeout_s=0.6)
    return {"output_uri": out, "problems_uri": problems_uri, "teacher": teacher, "n": 2} | extra


def rows_of(traces: list[Trace]) -> list[tuple]:
    return [(t.id, t.reasoning, t.content, t.tokens, t.finish_reason) for t in traces]


def test_distill_and_curate_through_endpoint_and_s3_faults(work, faulty_s3):
    """distill then curate (logprobs judge) with every endpoint fault kind and S3 faults on outputs
    and cache: every row complete, no duplicate, the same rows as a fault-free run."""
    proxy, bucket = faulty_s3
    n_problems, n = 30, 2
    local_problems = problems(os.path.join(work, "problems.jsonl"), n_problems)
    s3_problems = f"s3://{bucket}/in/problems.jsonl"
    uris.write_bytes(s3_problems, Path(local_problems).read_bytes())
    log = os.path.join(work, "cli.log")

    # fault-free reference, local disk
    clean = FaultServer(api_key=SECRETS[TEACHER_KEY_ENV])
    with clean as url:
        ref = os.path.join(work, "ref")
        cfg = write_config(
            os.path.join(work, "ref-distill.yaml"),
            distill_section(os.path.join(ref, "distill"), local_problems, url),
        )
        assert cli("stage", "distill", "--config", cfg, log=log).returncode == 0
        judge = endpoint_teacher(url)  # the clean server knows the teacher's key only
        cfg = write_config(
            os.path.join(work, "ref-curate.yaml"),
            {
                "output_uri": os.path.join(ref, "curate"),
                "data_uri": os.path.join(ref, "distill"),
                "judge": judge,
                "mode": "logprobs",
                "batch_size": 8,
            },
        )
        done = cli("stage", "curate", "--config", cfg, log=log)
        assert done.returncode == 0, done.stderr[-2000:]

    # the same through faults: the endpoint forces each kind once, then draws; S3 faults on every call
    server = FaultServer(
        api_key=SECRETS[TEACHER_KEY_ENV], faults=ENDPOINT_FAULTS, hang_s=1.2, seed=11, script=list(FAULTS)
    )
    proxy.faults = dict(S3_FAULTS)
    proxy.slow_s = 0.1
    out = f"s3://{bucket}/run"
    with server as url:
        cfg = write_config(
            os.path.join(work, "distill.yaml"),
            distill_section(
                f"{out}/distill", s3_problems, url, cache_uri=f"s3://{bucket}/cache", shard_size=16
            ),
        )
        done = cli("stage", "distill", "--config", cfg, log=log)
        assert done.returncode == 0, done.stderr[-3000:]
        distilled = result_of(done)
    traces = read_jsonl(f"{out}/distill/traces.jsonl", Trace)
    reference = read_jsonl(os.path.join(ref, "distill", "traces.jsonl"), Trace)
    ids = collections.Counter(t.id for t in traces)
    assert rows_of(traces) == rows_of(reference)
    assert len(traces) == n_problems * n and max(ids.values()) == 1
    assert distilled["failed"] == 0 and uris.exists(f"{out}/distill/{MARKER}")
    kinds = collections.Counter(e["fault"] for e in server.log if e["fault"])
    assert set(kinds) == set(FAULTS), kinds
    sent = server.sent()
    resent = sum(c - 1 for c in sent.values())
    # one re-send per broken request (more only if a slow machine lets a sound request time out)
    assert len(sent) == n_problems * n and resent >= sum(kinds.values())
    s3_distill = dict(proxy.injected())
    figure(
        "faults/distill",
        rows_complete=f"{len(traces)}/{n_problems * n}",
        duplicates=sum(c - 1 for c in ids.values()),
        endpoint_requests=server.requests,
        requests_resent=resent,
        faults_injected=sum(kinds.values()),
        endpoint_faults=dict(kinds),
        s3_requests=proxy.requests,
        s3_faults=s3_distill,
        s3_requests_resent=proxy.resent(),
    )
    assert proxy.resent() > 0

    # curate reads distill's output through the proxy and judges through the faulty endpoint
    judge_server = FaultServer(
        api_key=SECRETS[JUDGE_KEY_ENV], faults=ENDPOINT_FAULTS, hang_s=1.2, seed=12, script=list(FAULTS)
    )
    before = proxy.requests
    with judge_server as url:
        judge = endpoint_teacher(url, JUDGE_KEY_ENV, timeout_s=0.6)
        cfg = write_config(
            os.path.join(work, "curate.yaml"),
            {
                "output_uri": f"{out}/curate",
                "data_uri": f"{out}/distill",
                "judge": judge,
                "mode": "logprobs",
                "batch_size": 8,
            },
        )
        done = cli("stage", "curate", "--config", cfg, log=log)
        assert done.returncode == 0, done.stderr[-3000:]
        curated = result_of(done)
    scored = list(iter_output_rows(f"{out}/curate", "scored", Scored, unique_ids=False))
    ref_scored = list(iter_output_rows(os.path.join(ref, "curate"), "scored", Scored))
    assert [r.model_dump() for r in scored] == [r.model_dump() for r in ref_scored]
    assert curated["scored"] == n_problems * n and curated["judge_failures"] == 0
    for kind in ("sft", "preference"):  # the same shards, byte for byte
        mine, theirs = output_shards(f"{out}/curate", kind), output_shards(os.path.join(ref, "curate"), kind)
        assert [u.rsplit("/", 1)[-1] for u in mine] == [os.path.basename(u) for u in theirs], kind
        assert [uris.read_text(u) for u in mine] == [Path(u).read_text() for u in theirs], kind
    jkinds = collections.Counter(e["fault"] for e in judge_server.log if e["fault"])
    jsent = judge_server.sent()
    assert set(jkinds) == set(FAULTS), jkinds
    figure(
        "faults/curate",
        rows_complete=f"{curated['scored']}/{n_problems * n}",
        duplicates=len(scored) - len({r.id for r in scored}),
        judge_requests=judge_server.requests,
        requests_resent=sum(c - 1 for c in jsent.values()),
        endpoint_faults=dict(jkinds),
        s3_requests=proxy.requests - before,
        s3_faults=dict(proxy.injected() - collections.Counter(s3_distill)),
    )


def test_distill_cache_on_faulty_s3_is_reused_and_never_torn(work, faulty_s3):
    """A second distill run into a new output, sharing the first run's cache on the faulty store,
    sends no request: every cached answer written through dropped connections is whole."""
    proxy, bucket = faulty_s3
    local_problems = problems(os.path.join(work, "problems.jsonl"), 20)
    proxy.faults = {"500": 0.05, "drop": 0.05, "drop_after": 0.05, "slow": 0.05}
    proxy.slow_s = 0.05
    server = FaultServer(api_key=SECRETS[TEACHER_KEY_ENV])
    log = os.path.join(work, "cli.log")
    with server as url:
        for name in ("first", "second"):
            cfg = write_config(
                os.path.join(work, f"{name}.yaml"),
                distill_section(
                    f"s3://{bucket}/{name}/distill", local_problems, url, cache_uri=f"s3://{bucket}/cache"
                ),
            )
            done = cli("stage", "distill", "--config", cfg, log=log)
            assert done.returncode == 0, done.stderr[-3000:]
            if name == "first":
                asked = server.requests
    second = result_of(done)
    assert len(server.sent()) == 40 and server.requests == asked  # the second run sent nothing
    assert second["cache_hits"] == 40 and second["requests"] == 0
    a = uris.read_text(f"s3://{bucket}/first/distill/traces.jsonl")
    assert a == uris.read_text(f"s3://{bucket}/second/distill/traces.jsonl")
    figure(
        "faults/cache-on-s3",
        rows_complete="40/40",
        cache_hits=second["cache_hits"],
        second_run_requests=server.requests - asked,
        s3_faults=dict(proxy.injected()),
        s3_requests_resent=proxy.resent(),
    )


def test_endpoint_that_never_recovers_fails_with_one_line_and_no_marker(work):
    """Faults past max_retries: a non-zero exit with one line naming the endpoint and the fix, the
    answered rows kept for the rerun, and no completion marker."""
    local_problems = problems(os.path.join(work, "problems.jsonl"), 10)
    out = os.path.join(work, "distill")
    with FaultServer(api_key=SECRETS[TEACHER_KEY_ENV], faults={"503": 1.0}) as url:
        section = distill_section(out, local_problems, url)
        section["teacher"]["max_retries"] = 1
        done = cli("stage", "distill", "--config", write_config(os.path.join(work, "d.yaml"), section))
    assert done.returncode == 1
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and url in error[0] and "min_success_ratio" in error[0], done.stderr
    assert not os.path.exists(os.path.join(out, MARKER))
    failures = [json.loads(line) for line in Path(out, "failures.jsonl").read_text().splitlines()]
    assert failures and {f["kind"] for f in failures} == {"server_error"}
    figure("faults/endpoint-down", exit=done.returncode, failed_rows=len(failures), marker=False)


def test_evaluate_generates_through_endpoint_faults(work):
    """evaluate scoring an endpoint model (``models: [{backend: openai}]``) through every fault kind:
    every answer present once, the same results as through a clean server."""
    problems_uri = problems(os.path.join(work, "problems.jsonl"), 12)
    log = os.path.join(work, "cli.log")

    def section(out: str, url: str) -> dict:
        spec = {
            "name": "teacher",
            "model": "teacher",
            "backend": "openai",
            "base_url": url,
            "api_key_env": TEACHER_KEY_ENV,
            "concurrency": 4,
            "timeout_s": 0.6,
        }
        return {
            "output_uri": out,
            "models": [spec],
            "problems_uri": problems_uri,
            "samples": 2,
            "max_new_tokens": 64,
            "seed": 1,
        }

    outs = {}
    for name, server in (
        ("clean", FaultServer(api_key=SECRETS[TEACHER_KEY_ENV])),
        (
            "faulty",
            FaultServer(
                api_key=SECRETS[TEACHER_KEY_ENV],
                faults=ENDPOINT_FAULTS,
                hang_s=1.2,
                seed=13,
                script=list(FAULTS),
            ),
        ),
    ):
        with server as url:
            out = os.path.join(work, name)
            cfg = write_config(os.path.join(work, f"{name}.yaml"), section(out, url))
            done = cli("stage", "evaluate", "--config", cfg, log=log)
            assert done.returncode == 0, done.stderr[-3000:]
        outs[name] = (out, server)
    clean, faulty = (Path(outs[k][0], "results.jsonl").read_text().splitlines() for k in ("clean", "faulty"))
    keys = collections.Counter(
        (r.get("model"), r.get("benchmark"), r["problem_id"], r["sample"]) for r in map(json.loads, faulty)
    )
    assert len(faulty) == 24 and max(keys.values()) == 1
    drop = ("latency_s", "seconds", "time_s")
    strip = [{k: v for k, v in json.loads(line).items() if k not in drop} for line in faulty]
    assert strip == [{k: v for k, v in json.loads(line).items() if k not in drop} for line in clean]
    server = outs["faulty"][1]
    kinds = collections.Counter(e["fault"] for e in server.log if e["fault"])
    assert set(kinds) == set(FAULTS), kinds
    figure(
        "faults/evaluate",
        rows_complete=f"{len(faulty)}/24",
        duplicates=sum(c - 1 for c in keys.values()),
        endpoint_requests=server.requests,
        requests_resent=sum(c - 1 for c in server.sent().values()),
        endpoint_faults=dict(kinds),
    )
