"""Scores of one model on one benchmark: avg@k, unbiased pass@k, token efficiency, per difficulty."""

from __future__ import annotations

import statistics
from math import comb
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of the Codex paper (Chen et al., 2021): 1 - C(n-c, k) / C(n, k).

    ``n`` samples of which ``c`` are correct; the probability that at least one of ``k`` samples
    drawn without replacement is correct. Needs ``k <= n``.
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _median(values: list[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(rows: list[dict[str, Any]], n_problems: int, samples: int, ks: list[int]) -> dict[str, Any]:
    """Every number the report shows for one (model, benchmark)."""
    by_problem: dict[str, list[bool]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).append(bool(row["correct"]))
    n = max(len(rows), 1)
    tokens = [int(r["tokens"]) for r in rows]
    right = [int(r["tokens"]) for r in rows if r["correct"]]
    accuracy = sum(bool(r["correct"]) for r in rows) / n
    mean_tokens = sum(tokens) / n
    pass_k: dict[str, float] = {}
    for k in sorted({*ks, samples}):
        if k <= samples and by_problem:
            values = [pass_at_k(len(v), sum(v), k) for v in by_problem.values() if len(v) >= k]
            pass_k[str(k)] = sum(values) / max(n_problems, 1)
    by_difficulty: dict[str, dict[str, Any]] = {}
    for row in rows:
        level = str(row.get("difficulty") or "unrated")
        d = by_difficulty.setdefault(level, {"n_answers": 0, "correct": 0, "tokens": 0})
        d["n_answers"] += 1
        d["correct"] += bool(row["correct"])
        d["tokens"] += int(row["tokens"])
    for d in by_difficulty.values():
        d["accuracy"] = d.pop("correct") / d["n_answers"]
        d["mean_tokens"] = d.pop("tokens") / d["n_answers"]
    truncated = sum(r["finish_reason"] == "length" for r in rows) / n
    return {
        "accuracy": accuracy,
        "pass_at_k": pass_k.get(str(samples), 0.0),
        "pass_k": pass_k,
        "mean_tokens": mean_tokens,
        "median_tokens": _median(tokens) or 0.0,
        "mean_tokens_correct": _mean(right),
        "median_tokens_correct": _median(right),
        "accuracy_per_1k_tokens": accuracy / (mean_tokens / 1000) if mean_tokens else 0.0,
        "truncated": truncated,
        "truncation_rate": truncated,
        "n_problems": n_problems,
        "samples": samples,
        "n_answers": len(rows),
        "by_difficulty": dict(sorted(by_difficulty.items())),
    }
