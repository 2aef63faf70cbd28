"""curate after judging, on synthetic scored rows, beside an in-memory pandas/pyarrow selection.

Three workers, each in its own process (its peak RSS is its own ``ru_maxrss``), on the same file:

- ``full``: what the stage runs once the judge is done (``run.select_and_publish``): the columnar
  engine rewrites every judged row with its verdict and writes the SFT examples and preference
  pairs (dedup exact+near, decontamination, CD bins / RV targets, per-problem, per-bin and domain
  caps, curriculum, CogPO betas), then ``selection.json``, the report, and every output published
  as shards under the output folder;
- ``select``: the engine's selection and pairs alone under the baseline's rule (scan, row rules,
  k per problem, caps, curriculum stages, pairs; no dedup or decontamination), nothing written;
- ``baseline``: a plain in-memory selection, as a user would write it with pandas/pyarrow (and as
  EasyDistill 2.0's RV/CD mixer works: every row held in memory): ``pyarrow.json.read_json`` of
  the whole file, the row rules, k per problem closest to the RV target, per-bin caps and domain
  quotas in pandas, the selected rows written as JSONL. No dedup, decontamination or pairs.

At two chain lengths: ``--rows`` rows of about 1 KB (default 1,000,000) and ``--rows-8k`` rows of
about 8 KB (default 250,000); 4 traces per problem; 1% of problems are exact duplicates, 1% near
duplicates, 0.5% copy an evaluation problem. Prints rows/s and peak memory of each; the last line
is one JSON object (``seconds``/``peak_mib`` of the full pass and ``baseline_seconds`` at 1 KB,
and every figure per size). Targets (issue 18): full pass <= 2x the baseline's time and selection
alone <= the baseline's, with peak memory < 1 GiB and flat in chain length.

    python bench/bench_curate.py [--rows 1000000] [--rows-8k 250000] [--workdir /tmp/bench-curate]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = {
    "preset": "7b",
    "per_bin": [200_000, 150_000, 100_000],
    "domain_quotas": {"code": 60_000},
    "dedup": "near",
    "require_correct": True,
    "curriculum": True,
    "pair_beta": 0.1,
}
WORDS = [
    "apple",
    "train",
    "prime",
    "number",
    "sum",
    "product",
    "integer",
    "triangle",
    "circle",
    "area",
    "angle",
    "speed",
    "distance",
    "time",
    "rate",
    "probability",
    "dice",
    "coin",
    "card",
    "value",
    "function",
    "root",
    "square",
    "cube",
    "matrix",
    "vector",
    "graph",
    "edge",
    "vertex",
    "path",
]


def problem_text(rng: random.Random, i: int) -> str:
    return f"Problem {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) + "?"


def generate(path: str, eval_path: str, rows: int, chain_bytes: int, seed: int = 0) -> None:
    """Scored rows as the judge writes them (``Scored.model_dump_json`` field order and spacing)."""
    rng = random.Random(seed)
    evals = [problem_text(rng, -i) for i in range(1, 101)]
    with open(eval_path, "w", encoding="utf-8") as f:
        for i, text in enumerate(evals):
            f.write(json.dumps({"id": f"e{i}", "problem": text}) + "\n")
    words = max(chain_bytes // 8, 1)
    chains = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(512)]
    texts: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        for p in range(rows // 4):
            roll = rng.random()
            if roll < 0.01 and texts:
                text = rng.choice(texts[-1000:])  # exact duplicate of a recent problem
            elif roll < 0.02 and texts:
                text = rng.choice(texts[-1000:]) + " exactly"  # near duplicate
            elif roll < 0.025:
                text = rng.choice(evals)  # contaminated
            else:
                text = problem_text(rng, p)
            texts.append(text)
            domain = rng.choice(["math", "math", "code", "science"])
            for s in range(4):
                correct = rng.choice([True, True, False, None])
                row = {
                    "id": f"p{p}/t/{s}",
                    "problem_id": f"p{p}",
                    "problem": text,
                    "reference": None if correct is None else "42",
                    "domain": domain,
                    "teacher": "synthetic",
                    "sample": s,
                    "reasoning": chains[rng.randrange(512)],
                    "content": f"The answer is \\boxed{{{rng.randint(1, 99)}}}.",
                    "tokens": rng.randint(100, 4000),
                    "finish_reason": "stop",
                    "rv": round(rng.uniform(0, 9), 3),
                    "cd": round(rng.uniform(0, 9), 3),
                    "logic": round(rng.random(), 3),
                    "correct": correct,
                    "predicted": "42",
                    "judge": "synthetic",
                    "kept": False,
                    "dropped_by": None,
                    "crv_level": None,
                    "crv_outcome": None,
                }
                f.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
    size = os.path.getsize(path)
    print(f"generated {rows} rows ({size / 2**20:.0f} MiB, {size / rows:.0f} B a row) in {path}", flush=True)


def full_pass(data: str, eval_path: str, workdir: str) -> dict:
    """``run.select_and_publish`` on a copy of the judged rows (it consumes them), into an output folder."""
    from distilflow.components.curate.config import CurateConfig
    from distilflow.components.curate.run import Judged, select_and_publish
    from distilflow.outputs import StageOutput

    out_uri = os.path.join(workdir, "out")
    judge = {"backend": "openai", "model": "unused", "base_url": "http://127.0.0.1:9/v1"}
    config = CurateConfig.model_validate(
        CONFIG
        | {"decontaminate_uris": [eval_path], "output_uri": out_uri, "data_uri": workdir, "judge": judge}
    )
    work = os.path.join(workdir, "work")
    os.makedirs(work, exist_ok=True)
    os.makedirs(out_uri, exist_ok=True)
    judged = os.path.join(work, "judged.jsonl")
    shutil.copyfile(data, judged)
    start = time.perf_counter()
    result = select_and_publish(config, StageOutput(out_uri, "curate"), work, judged, Judged())
    return {
        "seconds": time.perf_counter() - start,
        "rows": result.scored,
        "kept": result.kept,
        "pairs": result.pairs,
    }


def select_only(data: str) -> dict:
    """The engine's scan, selection and pairs under the baseline's rule (no dedup, no
    decontamination), nothing written."""
    from distilflow.components.curate import columnar
    from distilflow.components.curate.config import SelectConfig
    from distilflow.components.curate.select import Targets

    config = SelectConfig.model_validate(CONFIG | {"dedup": "none"})
    start = time.perf_counter()
    cols = columnar.scan(data)
    decided = columnar.decide(cols, config, Targets(config))
    kept = int((decided.reason == columnar.KEPT).sum())
    return {
        "seconds": time.perf_counter() - start,
        "rows": len(cols),
        "kept": kept,
        "pairs": len(decided.pairs),
    }


def baseline(data: str, workdir: str) -> dict:
    """Every row in memory (pyarrow's JSON reader, then pandas), the RV/CD rules, the kept rows written."""
    import numpy as np
    import pyarrow.json

    from distilflow.components.curate.config import SelectConfig

    c = SelectConfig.model_validate(CONFIG)
    start = time.perf_counter()
    df = pyarrow.json.read_json(data).to_pandas()
    edges = np.asarray(c.cd_bins)
    df["bin"] = np.minimum(np.searchsorted(edges[1:], df["cd"].to_numpy(), side="right"), len(edges) - 2)
    df["dist"] = (df["rv"] - np.asarray(c.rv_targets, dtype=float)[df["bin"]]).abs().round(6)
    ok = (
        df["cd"].between(c.cd_min, c.cd_max)
        & df["rv"].between(c.rv_min, c.rv_max)
        & (df["logic"] >= c.min_logic)
    )
    ok &= ~((df["correct"] == False) & c.require_correct)  # noqa: E712 (a nullable column)
    ok &= ~(df["correct"].isna() & (not c.keep_unverified))
    df = df[ok].sort_values(["dist", "id"])
    df = df[df.groupby("problem_id").cumcount() < c.per_problem]
    df = df[df.groupby("bin").cumcount() < np.asarray(c.per_bin)[df["bin"]]]
    quota = df["domain"].map(c.domain_quotas).fillna(len(df))
    df = df[df.groupby("domain").cumcount() < quota]
    df.drop(columns=["bin", "dist"]).to_json(
        os.path.join(workdir, "selected.jsonl"), orient="records", lines=True
    )
    return {"seconds": time.perf_counter() - start, "rows": None, "kept": len(df), "pairs": None}


def worker(kind: str, data: str, eval_path: str, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    if kind == "full":
        got = full_pass(data, eval_path, workdir)
    elif kind == "select":
        got = select_only(data)
    else:
        got = baseline(data, workdir)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps(got | {"kind": kind, "peak_mib": usage.ru_maxrss / 1024}))


def run_worker(kind: str, data: str, eval_path: str, workdir: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--data",
        data,
        "--eval",
        eval_path,
        "--workdir",
        workdir,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(rows: int, chain_bytes: int, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    data, eval_path = os.path.join(workdir, "scored.jsonl"), os.path.join(workdir, "eval.jsonl")
    generate(data, eval_path, rows, chain_bytes)
    got = {}
    for kind in ("full", "select", "baseline"):
        got[kind] = run_worker(kind, data, eval_path, os.path.join(workdir, kind))
        r = got[kind]
        print(
            f"{chain_bytes // 1024} KB chains, {kind:>8}: {rows} rows in {r['seconds']:6.1f} s = "
            f"{rows / r['seconds']:>9,.0f} rows/s, peak {r['peak_mib']:6,.0f} MiB; kept {r['kept']}",
            flush=True,
        )
        shutil.rmtree(os.path.join(workdir, kind), ignore_errors=True)
    os.remove(data)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows with about 1 KB chains")
    parser.add_argument("--rows-8k", type=int, default=250_000, help="rows with about 8 KB chains")
    parser.add_argument("--workdir", default="/tmp/bench-curate", help="scratch folder (removed at the end)")
    parser.add_argument("--worker", choices=["full", "select", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--eval", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.eval, args.workdir)
        return
    try:
        sizes = {"1k": measure(args.rows, 1024, os.path.join(args.workdir, "1k"))}
        if args.rows_8k:
            sizes["8k"] = measure(args.rows_8k, 8192, os.path.join(args.workdir, "8k"))
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)
    summary = {}
    for size, got in sizes.items():
        full, select, base = got["full"], got["select"], got["baseline"]
        summary[size] = {
            "rows": full["rows"],
            "full_seconds": round(full["seconds"], 2),
            "full_peak_mib": round(full["peak_mib"]),
            "select_seconds": round(select["seconds"], 2),
            "select_peak_mib": round(select["peak_mib"]),
            "baseline_seconds": round(base["seconds"], 2),
            "baseline_peak_mib": round(base["peak_mib"]),
            "full_vs_baseline": round(full["seconds"] / base["seconds"], 3),
            "select_vs_baseline": round(select["seconds"] / base["seconds"], 3),
            "kept": full["kept"],
            "pairs": full["pairs"],
        }
        print(
            f"{size}: full pass x{summary[size]['full_vs_baseline']:.2f} of the in-memory baseline's time, "
            f"selection alone x{summary[size]['select_vs_baseline']:.2f}; peak {full['peak_mib']:.0f} MiB vs "
            f"{base['peak_mib']:.0f} MiB"
        )
    first = summary["1k"]
    met = all(
        s["full_vs_baseline"] <= 2 and s["select_vs_baseline"] <= 1 and s["full_peak_mib"] < 1024
        for s in summary.values()
    )
    line = {
        "seconds": first["full_seconds"],
        "peak_mib": first["full_peak_mib"],
        "baseline_seconds": first["baseline_seconds"],
        "targets_met": met,
    }
    print(json.dumps(line | {"sizes": summary}))


if __name__ == "__main__":
    main()
