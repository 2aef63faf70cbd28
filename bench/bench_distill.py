"""Throughput of the ``distill`` stage against an endpoint with a known limit, beside a bare httpx loop.

A loopback teacher (``bench/teacher_server.py``, its own process) answers each request after a
latency L and serves at most C at once, so no client can exceed C/L requests per second. On the
same servers, in this process, one after the other, it runs the whole ``distill`` stage (cache,
shards, traces, report; fresh output each run) and a bare ``httpx.AsyncClient`` loop (no cache, no
files; it retries any failure at once) at concurrency C, 2C and 4C, in three settings:

  (a) deep:    a deep listen backlog (1024), no faults;
  (b) default: Python's default backlog (``socketserver``'s ``request_queue_size`` = 5), no faults;
  (c) faults:  default backlog and 30% faults: 429 and 503 with Retry-After 0, 500, slow replies
               (+0.5 s, holding a server slot), resets mid-reply, dropped connections, broken JSON.

For each run it prints rows/s as a fraction of C/L, rows delivered, requests per row (client
attempts; the server's count too when local), duplicates and the client's CPU ms per request (this
process's CPU time over the requests it sent; the server runs elsewhere). Targets (issue 18):
clean >= 0.90 of C/L on the default backlog at C..4C; >= 0.36 of C/L in rows/s at 30% faults with
every row, once. The last line is one JSON object.

    python bench/bench_distill.py [--latency 0.05] [--cap 16] [--rows 4800]
    python bench/bench_distill.py --base-url http://host:8000/v1 --model NAME --latency L --cap C

With ``--base-url`` only the clean runs go to that server (its backlog and faults are its own) and
C/L is taken from ``--cap``/``--latency`` as you state them. Not a timed test: figures depend on
the machine (2 shared cores here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FAULTS = {"429": 0.05, "503": 0.03, "500": 0.05, "slow": 0.05, "reset": 0.05, "drop": 0.04, "malformed": 0.03}
BODY = {"max_tokens": 64, "temperature": 0.6, "top_p": 0.95}


async def bare_httpx(base_url: str, model: str, rows: int, concurrency: int) -> dict[str, Any]:
    """A bare httpx loop: ``concurrency`` workers, each request retried at once until it is answered."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    attempts = 0
    async with httpx.AsyncClient(base_url=base_url + "/", timeout=60, limits=limits) as client:
        pending = iter(range(rows))

        async def worker() -> None:
            nonlocal attempts
            for i in pending:
                body = BODY | {"model": model, "messages": [{"role": "user", "content": f"Bare {i}?"}]}
                while True:
                    attempts += 1
                    try:
                        resp = await client.post("chat/completions", json=body)
                        if resp.status_code == 200 and resp.json()["choices"][0]["message"]:
                            break
                    except (httpx.HTTPError, ValueError, KeyError):
                        pass

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"rows": rows, "requests": attempts, "duplicates": 0}


def stage(base_url: str, model: str, work: str, problems: str, concurrency: int) -> dict[str, Any]:
    """The distill stage, end to end, with its defaults but for the concurrency."""
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import run

    teacher = {
        "backend": "openai",
        "model": model,
        "base_url": base_url,
        "concurrency": concurrency,
        "seed": 0,
    }
    out = tempfile.mkdtemp(prefix=f"c{concurrency}-", dir=work)
    config = DistillConfig.from_dict(
        {"output_uri": out, "problems_uri": problems, "n": 2, "teacher": teacher | {"max_new_tokens": 64}}
    )
    result = run(config)
    with open(result.traces_uri, encoding="utf-8") as f:
        ids = [json.loads(line)["id"] for line in f]
    return {"rows": len(ids), "requests": result.requests, "duplicates": len(ids) - len(set(ids))}


def measure(fn: Any, limit: float, server: str | None) -> dict[str, Any]:
    """Run one client; add rows/s as a fraction of C/L, requests per row and CPU ms per request."""
    import httpx

    if server:
        httpx.get(server + "/_reset")
    cpu, start = time.process_time(), time.monotonic()
    got = fn()
    wall, cpu = time.monotonic() - start, time.process_time() - cpu
    got |= {
        "fraction": round(got["rows"] / wall / limit, 3),
        "requests_per_row": round(got["requests"] / max(got["rows"], 1), 3),
        "cpu_ms_per_request": round(1000 * cpu / max(got["requests"], 1), 3),
        "seconds": round(wall, 2),
    }
    if server:
        seen = httpx.get(server + "/_stats").json()
        got |= {"server_requests": seen["requests"], "answered_twice": seen["answered_twice"]}
    return got


def scenarios(args: argparse.Namespace) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(name, base URL or None for a local server, local server settings)."""
    local = {"latency": args.latency, "cap": args.cap}
    if args.base_url:
        return [("given", args.base_url, {})]
    return [
        ("deep", None, local | {"backlog": 1024}),
        ("default", None, local | {"backlog": 5}),
        ("faults", None, local | {"backlog": 5, "faults": FAULTS, "seed": 18}),
    ]


def run_all(args: argparse.Namespace, work: str, problems: str) -> list[dict[str, Any]]:
    from bench.teacher_server import start_in_process

    limit = args.cap / args.latency
    rows = []
    for name, url, settings in scenarios(args):
        proc = None
        if url is None:
            url, proc = start_in_process(**settings)
        stats_url = None if proc is None else url
        levels = [args.cap] if name == "faults" else [args.cap * k for k in (1, 2, 4)]
        if name == "default":
            levels.append(256)  # the stage alone: CPU per request at a high concurrency
        try:
            for concurrency in levels:
                clients = {
                    "stage": lambda c=concurrency, u=url: stage(u, args.model, work, problems, c),
                    "bare httpx": lambda c=concurrency, u=url: asyncio.run(
                        bare_httpx(u, args.model, args.rows, c)
                    ),
                }
                if concurrency > 4 * args.cap:
                    del clients["bare httpx"]  # httpx's pool at 256: minutes of CPU (encode/httpcore#1035)
                for client, fn in clients.items():
                    got = measure(fn, limit, stats_url)
                    rows.append({"scenario": name, "client": client, "concurrency": concurrency} | got)
                    print(table_row(rows[-1]), flush=True)
        finally:
            if proc is not None:
                proc.kill()
                proc.join()
    return rows


def table_row(r: dict[str, Any]) -> str:
    return (
        f"{r['scenario']:<8} {r['client']:<11} {r['concurrency']:>5} {r['fraction']:>7.3f} "
        f"{r['rows']:>6} {r['requests_per_row']:>9.3f} {r['duplicates']:>5} {r['cpu_ms_per_request']:>9.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-url", help="an OpenAI-compatible /v1 root to measure instead of local servers"
    )
    parser.add_argument("--model", default="teacher", help="model name the server serves")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency L per request, seconds")
    parser.add_argument("--cap", type=int, default=16, help="requests the server serves at once, C")
    parser.add_argument("--rows", type=int, default=4800, help="rows (requests that must succeed) per run")
    args = parser.parse_args()

    # imported before anything is timed: the first run would otherwise pay for them
    import aiohttp  # noqa: F401
    import httpx  # noqa: F401

    import distilflow.components.distill.run  # noqa: F401
    from distilflow.records import Problem, write_jsonl

    work = tempfile.mkdtemp(prefix="bench-distill-")
    problems = os.path.join(work, "problems.jsonl")
    count = args.rows // 2  # n = 2 samples per problem
    write_jsonl(problems, [Problem(id=f"b{i}", problem=f"What is {i} squared?") for i in range(count)])
    limit = args.cap / args.latency
    print(f"C/L = {args.cap} / {args.latency:g} s = {limit:.0f} requests/s; {args.rows} rows per run\n")
    print(
        f"{'setting':<8} {'client':<11} {'conc':>5} {'of C/L':>7} {'rows':>6} {'req/row':>9} {'dup':>5} {'CPU ms/req':>9}"
    )
    runs = run_all(args, work, problems)
    stage_runs = [r for r in runs if r["client"] == "stage"]
    clean = [
        r["fraction"]
        for r in stage_runs
        if r["scenario"] in ("default", "given") and r["concurrency"] <= 4 * args.cap
    ]
    faults = [r for r in stage_runs if r["scenario"] == "faults"]
    complete = all(r["rows"] == args.rows and r["duplicates"] == 0 for r in stage_runs)
    summary = {
        "limit_rps": limit,
        "rows_per_run": args.rows,
        "stage_clean_min_fraction": min(clean) if clean else None,
        "stage_faults_fraction": faults[0]["fraction"] if faults else None,
        "stage_max_cpu_ms_per_request": max(r["cpu_ms_per_request"] for r in stage_runs),
        "stage_every_row_once": complete,
    }
    summary["targets_met"] = (
        complete
        and (summary["stage_clean_min_fraction"] or 0) >= 0.90
        and (not faults or summary["stage_faults_fraction"] >= 0.36)
    )
    print()
    print(json.dumps(summary | {"runs": runs}))


if __name__ == "__main__":
    main()
