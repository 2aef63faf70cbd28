"""Each stage's HTML report built by the stage's own report module from synthetic but realistic inputs
(seeded): what the report tests render in Chromium and ``scripts/report_screenshots.py`` photographs
for ``docs/reports/``. No model runs here; the numbers have the shapes real runs produce."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

STEPS = 30


def _training_history(keys: dict[str, Callable[[int, random.Random], float]], seed: int) -> list[dict]:
    """One log entry per optimizer step (``logging_steps: 1``) plus the end-of-training summary."""
    rng = random.Random(seed)
    history = [{"step": s, **{k: f(s, rng) for k, f in keys.items()}} for s in range(1, STEPS + 1)]
    return history + [{"step": STEPS, "train_runtime": 41.7, "train_loss": 1.234}]


def _decay(start: float, end: float, noise: float) -> Callable[[int, random.Random], float]:
    return lambda s, rng: end + (start - end) * math.exp(-s / 9) + rng.uniform(-noise, noise)


def _linear_lr(peak: float) -> Callable[[int, random.Random], float]:
    return lambda s, _: peak * (1 - (s - 1) / STEPS)


def distill() -> str:
    from distilflow.components.distill import report
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import DistillResult
    from distilflow.records import Trace

    rng = random.Random(1)
    config = DistillConfig.from_dict(
        {
            "output_uri": "s3://runs/r1/distill",
            "problems_uri": "s3://data/problems.jsonl",
            "teacher": {"backend": "transformers", "model": "smollm2", "max_new_tokens": 512},
            "n": 2,
        }
    )
    lengths = [min(512, max(20, int(rng.gauss(260, 110)))) for _ in range(64)]
    traces = [
        Trace(
            id=f"p{i // 2}/smollm2/{i % 2}",
            problem_id=f"p{i // 2}",
            problem="q",
            teacher="smollm2",
            sample=i % 2,
            reasoning="r",
            content="c",
            tokens=n,
            finish_reason="length" if n == 512 else "stop",
        )
        for i, n in enumerate(lengths)
    ]
    stops = sum(t.finish_reason == "stop" for t in traces)
    result = DistillResult(
        traces_uri="s3://runs/r1/distill/traces.jsonl",
        problems=32,
        traces=64,
        tokens=sum(lengths),
        finish_reasons={"stop": stops, "length": 64 - stops},
        teacher="smollm2",
        by_teacher={"smollm2": 64},
        prompt_template="cot_thought_solution_v1",
        requests=64,
        cache_hits=6,
        prompt_tokens=64 * 212,
        completion_tokens=sum(lengths),
        tokens_per_s=sum(lengths) / 102.37,
        requests_per_s=64 / 102.37,
        mean_latency_s=12.8791234,
        wall_s=102.37,
    )
    return report.render_html(result, traces, config)


def curate() -> str:
    from distilflow.components.curate import report
    from distilflow.components.curate.select import FILTERS

    rng = random.Random(2)
    before = [[0] * 10 for _ in range(10)]
    after = [[0] * 10 for _ in range(10)]
    for _ in range(640):
        cd = min(9, max(0, int(rng.gauss(4.5, 2))))
        rv = min(9, max(0, int(rng.gauss(cd * 0.8 + 1, 1.5))))
        before[rv][cd] += 1
        if abs(rv - (cd * 0.6 + 2)) < 1.5:
            after[rv][cd] += 1
    kept = sum(map(sum, after))
    dropped = dict.fromkeys(FILTERS, 0) | {"duplicate": 12, "contaminated": 3, "incorrect": 141}
    dropped["per_bin"] = 640 - kept - sum(dropped.values())
    sample = {
        "id": "p7/smollm2/0",
        "rv": 3.2,
        "cd": 4.1,
        "logic": 0.93,
        "correct": True,
        "problem": "If 3x + 2 = 11 ...",
    }
    stats = {
        "traces": 652,
        "judge_failures": 12,
        "rows_in": 640,
        "kept": kept,
        "sft_rows": kept,
        "pairs": 118,
        "judge_requests": 1956,
        "cache_hits": 210,
        "judge_tokens": 1956 * 31,
        "dropped": dropped,
        "answers": {"correct": 452, "incorrect": 141, "unverified": 47},
        "judge_failures_by_kind": {"rv": 5, "cd": 4, "logic": 3},
        "grid_before": before,
        "grid_after": after,
        "samples_kept": [sample],
        "samples_dropped": [sample | {"id": "p9/smollm2/1", "correct": False, "dropped_by": "incorrect"}],
    }
    return report.render(stats, title="curate report: s3://runs/r1/curate")


def sft() -> str:
    from distilflow.training.report import report_html

    history = _training_history(
        {
            "loss": _decay(2.91, 0.84, 0.06),
            "learning_rate": _linear_lr(1e-3),
            "grad_norm": _decay(6.0, 1.2, 0.4),
        },
        3,
    )
    summary = {"model_uri": "s3://runs/r1/sft/model", "first_loss": 2.9137261, "final_loss": 0.8412039}
    summary |= {"steps": STEPS, "rows_read": 130, "rows_used": 128, "rows_dropped": 2, "seed": 0}
    return report_html("sft", history, ("loss", "learning_rate", "grad_norm"), summary)


def dpo() -> str:
    from distilflow.training.report import report_html

    history = _training_history(
        {
            "loss": _decay(0.693, 0.41, 0.02),
            "rewards/margins": lambda s, rng: 0.05 * s + rng.uniform(-0.05, 0.05),
            "rewards/accuracies": lambda s, rng: min(1.0, 0.5 + 0.015 * s + rng.uniform(-0.05, 0.05)),
            "learning_rate": _linear_lr(5e-7),
        },
        4,
    )
    summary = {
        "model_uri": "s3://runs/r1/dpo/model",
        "first_loss": 0.6931472,
        "final_loss": 0.4129,
        "steps": STEPS,
    }
    return report_html(
        "dpo", history, ("loss", "rewards/margins", "rewards/accuracies", "learning_rate"), summary
    )


def reward() -> str:
    from distilflow.components.reward.report import report_page

    history = _training_history(
        {
            "loss": _decay(0.69, 0.32, 0.03),
            "accuracy": lambda s, rng: min(1.0, 0.55 + 0.012 * s + rng.uniform(-0.04, 0.04)),
            "margin": lambda s, rng: 0.08 * s + rng.uniform(-0.1, 0.1),
            "learning_rate": _linear_lr(2e-5),
        },
        5,
    )
    gate = {"passed": True, "heldout_accuracy": 0.8125, "min_heldout_accuracy": 0.7}
    gate |= {"label_agreement": 0.9, "min_label_agreement": 0.8, "failures": []}
    result = {
        "model_uri": "s3://runs/r1/reward/model",
        "steps": STEPS,
        "final_loss": 0.3187,
        "heldout_accuracy": 0.8125,
        "gate": gate,
        "heldout_accuracy_by_cd": {
            "[0, 3)": {"accuracy": 0.9, "pairs": 10},
            "[3, 6)": {"accuracy": 0.8333, "pairs": 12},
            "[6, 9]": {"accuracy": 0.7, "pairs": 10},
        },
        "heldout_accuracy_by_source": {"curate": {"accuracy": 0.8125, "pairs": 32}},
    }
    return report_page(history, result)


def rl() -> str:
    from distilflow.components.rl.run import REPORT_KEYS
    from distilflow.training.report import report_html

    history = _training_history(
        {
            "reward": lambda s, rng: 0.2 + 0.02 * s + rng.uniform(-0.05, 0.05),
            "accuracy": lambda s, rng: min(1.0, 0.25 + 0.015 * s + rng.uniform(-0.05, 0.05)),
            "rewards/correctness/mean": lambda s, rng: 0.25 + 0.015 * s + rng.uniform(-0.05, 0.05),
            "kl": lambda s, rng: 0.002 * s + rng.uniform(0, 0.003),
            "completions/mean_length": _decay(180, 120, 8),
            "loss": lambda s, rng: rng.uniform(-0.02, 0.02),
            "learning_rate": _linear_lr(1e-6),
        },
        6,
    )
    keys = (*REPORT_KEYS[:2], "rewards/correctness/mean", *REPORT_KEYS[2:])
    return report_html("rl", history, keys, {"model_uri": "s3://runs/r1/rl/model", "steps": STEPS})


def evaluate() -> str:
    from distilflow.components.evaluate.report import render_html

    runs = []
    for model, base in (("student (sft)", 0.41), ("student (rl)", 0.48), ("teacher", 0.72)):
        for bench, shift, tokens in (("math500", 0.0, 812.4), ("aime2024", -0.3, 2210.9)):
            acc = max(0.0, base + shift)
            by_level = {
                f"level {i}": {
                    "n_answers": 40,
                    "accuracy": max(0.0, acc + 0.1 * (3 - i)),
                    "mean_tokens": tokens * (0.6 + 0.15 * i),
                }
                for i in range(1, 6)
            }
            metrics = {
                "accuracy": acc,
                "pass_at_k": min(1.0, acc + 0.12),
                "samples": 4,
                "mean_tokens": tokens,
            }
            metrics |= {
                "median_tokens": tokens * 0.9,
                "mean_tokens_correct": tokens * 0.8,
                "median_tokens_correct": tokens * 0.75,
            }
            metrics |= {
                "accuracy_per_1k_tokens": acc / tokens * 1000,
                "truncation_rate": 0.031,
                "truncated": 0.031,
            }
            metrics |= {
                "n_problems": 50,
                "pass_k": {"1": acc, "4": min(1.0, acc + 0.12)},
                "by_difficulty": by_level,
            }
            failure = {
                "problem_id": f"{bench}-17",
                "sample": 0,
                "predicted": "12",
                "reference": "18",
                "tokens": 904,
            }
            failure |= {
                "finish_reason": "stop",
                "response_tail": "... so the answer is \\boxed{12}.",
                "test_status": None,
            }
            protocol = {"samples": 4, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 4096, "seed": 0}
            runs.append(
                {
                    "model_name": model,
                    "benchmark": bench,
                    "metrics": metrics,
                    "failures": [failure],
                    "protocol": protocol,
                    "model": {"uri": f"s3://runs/r1/{model.split()[0]}", "files_sha256": "3f2a9c1d0b8e7f65"},
                }
            )
    return render_html(runs)


REPORTS: dict[str, Callable[[], str]] = {
    "distill": distill,
    "curate": curate,
    "sft": sft,
    "dpo": dpo,
    "reward": reward,
    "rl": rl,
    "evaluate": evaluate,
}
"""Every stage with an HTML report, in lifecycle order."""
