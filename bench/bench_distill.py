"""Throughput of the ``distill`` stage against a local endpoint with a known physical limit.

The fault server (``tests/fakes/fault_server.py``, no faults here) answers each request after a fixed
latency L and serves at most C requests at once, so no client can exceed C/L requests per second.
This measures ``distill`` end to end (cache lookups and writes, shards, traces, report included)
with ``teacher.concurrency = C``, and a sequential client (one request at a time, as EasyDistill
1.x calls its teacher), and prints both against C/L. Target: distill >= 0.9 of C/L.

    python bench/bench_distill.py [--latency 0.1] [--cap 16] [--problems 200] [--n 4]

Not a timed test: figures depend on the machine (2 shared cores here).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sequential_rps(base_url: str, requests: int) -> float:
    """Requests per second of a client that waits for each answer before asking again."""
    import httpx

    body = {"model": "teacher", "max_tokens": 64, "temperature": 0.6}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        start = time.monotonic()
        for i in range(requests):
            resp = client.post(
                "/chat/completions", json=body | {"messages": [{"role": "user", "content": f"q{i}"}]}
            )
            resp.raise_for_status()
        return requests / (time.monotonic() - start)


async def bare_async_rps(base_url: str, requests: int, concurrency: int) -> float:
    """A bare httpx async loop with no cache, shards or parsing: this machine's client ceiling."""
    import asyncio

    import httpx

    body = {"model": "teacher", "max_tokens": 64, "temperature": 0.6}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
        pending = iter(range(requests))

        async def worker() -> None:
            for i in pending:
                resp = await client.post(
                    "/chat/completions", json=body | {"messages": [{"role": "user", "content": f"r{i}"}]}
                )
                resp.json()

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.monotonic() - start)


def distill_once(
    base_url: str, work: str, problems: str, n: int, concurrency: int
) -> tuple[float, float, object]:
    """Run the stage once in a fresh folder (empty cache); return (stage req/s, loop req/s, result)."""
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import run

    teacher = {"backend": "openai", "model": "teacher", "base_url": base_url, "concurrency": concurrency}
    teacher |= {"max_new_tokens": 64, "seed": 0}
    out = os.path.join(work, f"out-c{concurrency}")
    config = DistillConfig.from_dict(
        {"output_uri": out, "problems_uri": problems, "n": n, "teacher": teacher}
    )
    start = time.monotonic()
    result = run(config)
    wall = time.monotonic() - start
    return result.traces / wall, result.requests_per_s, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.1, help="server latency L per request, seconds")
    parser.add_argument("--cap", type=int, default=16, help="server concurrency cap C")
    parser.add_argument("--problems", type=int, default=200, help="problems to distill")
    parser.add_argument("--n", type=int, default=4, help="samples per problem")
    parser.add_argument("--sequential", type=int, default=30, help="requests sent by the sequential client")
    args = parser.parse_args()

    import asyncio

    import httpx

    from distilflow.records import Problem, write_jsonl
    from tests.fakes.fault_server import serve_forever

    limit = args.cap / args.latency
    total = args.problems * args.n
    work = tempfile.mkdtemp(prefix="bench-distill-")
    problems = os.path.join(work, "problems.jsonl")
    write_jsonl(
        problems, [Problem(id=f"b{i}", problem=f"What is {i} squared?") for i in range(args.problems)]
    )
    # The server runs in its own process, as a real endpoint would: it does not share this one's GIL.
    ctx = multiprocessing.get_context("spawn")
    urls = ctx.Queue()
    kwargs = {"latency_s": args.latency, "max_concurrency": args.cap}
    proc = ctx.Process(target=serve_forever, args=(urls,), kwargs=kwargs)
    proc.start()
    rows = []
    try:
        base_url = urls.get(timeout=60)
        stats = lambda: httpx.get(base_url + "/_stats").json()  # noqa: E731
        for concurrency in (args.cap, 2 * args.cap):
            before = stats()["requests"]
            stage, loop, result = distill_once(base_url, work, problems, args.n, concurrency)
            sent = stats()["requests"] - before
            assert result.traces == total and sent == total, (result.traces, sent)
            rows.append((f"distill, concurrency {concurrency}", stage, loop))
        bare = asyncio.run(bare_async_rps(base_url, total, args.cap))
        seq = sequential_rps(base_url, args.sequential)
        peak = stats()["max_in_flight"]
    finally:
        proc.kill()
        proc.join()
    print(
        f"\nserver: latency L={args.latency:g}s, concurrency cap C={args.cap} (peak seen {peak}): C/L = {limit:.1f} req/s"
    )
    print(f"{total} requests per distill run ({args.problems} problems x {args.n}), fresh cache each run\n")
    print(f"{'client':<40} {'req/s':>8} {'of C/L':>7} {'vs sequential':>14}")
    for name, stage, loop in rows:
        print(f"{name + ' (whole stage)':<40} {stage:8.1f} {stage / limit:7.3f} {stage / seq:13.1f}x")
        print(f"{name + ' (request loop)':<40} {loop:8.1f} {loop / limit:7.3f} {loop / seq:13.1f}x")
    print(f"{'bare httpx async loop, concurrency C':<40} {bare:8.1f} {bare / limit:7.3f} {bare / seq:13.1f}x")
    print(f"{'sequential client (EasyDistill 1.x)':<40} {seq:8.1f} {seq / limit:7.3f} {1:13.1f}x")


if __name__ == "__main__":
    main()
