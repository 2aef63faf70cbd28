"""Promise 6: ``distill`` at high concurrency over many problems finishes with every row, once, in
bounded memory. The stage runs as ``distilflow stage distill`` in a subprocess that reports its own
peak RSS (``VmHWM``); the fault server keeps ``concurrency`` requests in flight and injects a
few 429s and 500s.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.fakes.fault_server import FaultServer
from tests.reliability.conftest import ROOT, SECRETS, TEACHER_KEY_ENV, endpoint_teacher, figure, write_config

pytestmark = pytest.mark.reliability

# The peak is VmHWM of the stage process's own memory map: getrusage's ru_maxrss survives exec on
# Linux, so a child of a large pytest process would report the parent's peak.
PEAK = (
    "import atexit, re, sys\n"
    "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    "atexit.register(lambda: sys.stderr.write('PEAK_RSS_KB=%d HEAVY=%s\\n' % (hwm(), "
    "','.join(m for m in ('torch', 'transformers', 'math_verify') if m in sys.modules) or 'none')))\n"
    "from distilflow.client.cli import main\n"
    "sys.argv[0] = 'distilflow'\n"
    "main()\n"
)


def distill_under_load(work: str, n_problems: int, concurrency: int = 64) -> dict:
    problems = os.path.join(work, f"problems-{n_problems}.jsonl")
    with open(problems, "w") as f:
        for i in range(n_problems):
            f.write(f'{{"id": "q{i}", "problem": "What is {i} times 3? Explain.", "answer": "{3 * i}"}}\n')
    server = FaultServer(
        latency_s=0.01,
        max_concurrency=concurrency,
        faults={"429": 0.01, "500": 0.01},
        api_key=SECRETS[TEACHER_KEY_ENV],
        seed=5,
    )
    out = os.path.join(work, f"distill-{n_problems}")
    with server as url:
        teacher = endpoint_teacher(url, concurrency=concurrency)
        section = {"output_uri": out, "problems_uri": problems, "teacher": teacher, "shard_size": 512}
        cfg = write_config(os.path.join(work, f"load-{n_problems}.yaml"), section)
        done = subprocess.run(
            [sys.executable, "-c", PEAK, "stage", "distill", "--config", cfg],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
        )
        with open(os.path.join(work, f"load-{n_problems}.log"), "w") as f:
            f.write(done.stdout + done.stderr)
        assert done.returncode == 0, done.stderr[-3000:]
        peak_kb = int(done.stderr.rsplit("PEAK_RSS_KB=", 1)[1].split()[0])
        heavy = done.stderr.rsplit("HEAVY=", 1)[1].split()[0]
        ids = []
        with open(os.path.join(out, "traces.jsonl"), "rb") as f:
            for line in f:
                ids.append(line[8 : line.index(b'"', 8)])  # {"id": "<id>", ...
        sent = server.sent()
        return {
            "problems": n_problems,
            "rows": len(ids),
            "duplicates": len(ids) - len(set(ids)),
            "requests": server.requests,
            "distinct_requests": len(sent),
            "requests_resent": sum(c - 1 for c in sent.values()),
            "max_in_flight": server.max_in_flight,
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "heavy_modules": heavy,
        }


def check(stats: dict, concurrency: int = 64) -> None:
    n = stats["problems"]
    assert stats["rows"] == n and stats["duplicates"] == 0
    assert stats["distinct_requests"] == n and stats["requests"] == n + stats["requests_resent"]
    # the client never exceeds its concurrency; how close it gets depends on the CPU the server shares
    assert 8 <= stats["max_in_flight"] <= concurrency


def test_distill_2000_problems_at_concurrency_64(work):
    stats = distill_under_load(work, 2000)
    check(stats)
    assert stats["peak_rss_mb"] < 400, stats
    figure("load/distill-2000", **stats)


@pytest.mark.slow
def test_distill_10000_problems_at_concurrency_64_in_bounded_memory(work):
    small = distill_under_load(work, 2000)
    large = distill_under_load(work, 10_000)
    check(small)
    check(large)
    # Five times the rows may not cost five times the memory: the growth is the rows themselves.
    assert large["peak_rss_mb"] < small["peak_rss_mb"] + 150, (small, large)
    figure("load/distill-10000", **large, peak_rss_mb_at_2000=small["peak_rss_mb"])
