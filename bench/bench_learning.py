"""Does curation make a better student? Four arms of the same token budget, through the real stages.

A simulated teacher and judge (``distilflow.synthetic.server``, on 127.0.0.1) stand in for the large
models; everything else is real: ``distill`` asks the teacher for 4 chains per problem, ``curate`` has
the judge score them (digit log-probabilities) and selects each arm's rows, ``sft`` fine-tunes a tiny
random-weight student, ``evaluate`` scores it on held-out problems (greedy, math-verify on \\boxed{}).
Arms (same training tokens): (a) every trace, (b) correct traces, (c) correct with RV matched to CD
(ThoughtX), (d) correct and always the most verbose. See docs/learning.md.

    python bench/bench_learning.py [--seeds 0 1] [--workdir DIR] [--plot docs/learning.svg]

Prints accuracy and mean output tokens per arm (averaged over the seeds) with each seed's figures,
the ratios against arm (a) and (d) and the targets, writes the plot, and ends with one JSON line
``{"arms": {"all": {"accuracy": A, "tokens": T}, ...}, ...}``. Runs the training jobs two at a time,
one thread each (``--workers``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # learning.py beside this file

COLOURS = {"all": "#b0b0b0", "correct": "#7fa7d9", "curated": "#2e7d32", "verbose": "#e39b3b"}


def bars(panel: dict, x0: int, arms: dict, key: str, top: float, fmt: str) -> list[str]:
    """One bar chart (accuracy or tokens per arm) as SVG elements, its origin at ``x0``."""
    from learning import LABELS

    width, height, base = panel["width"], panel["height"], panel["top"] + panel["height"]
    parts = [
        f'<text x="{x0 + width / 2}" y="{panel["top"] - 14}" text-anchor="middle" font-size="14">{panel["title"]}</text>'
    ]
    parts.append(f'<line x1="{x0}" y1="{base}" x2="{x0 + width}" y2="{base}" stroke="#333"/>')
    slot = width / max(len(arms), 1)
    for i, (arm, figures) in enumerate(arms.items()):
        value = figures[key]
        h = height * value / top if top else 0
        x = x0 + i * slot + slot * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" fill="{COLOURS.get(arm, "#888")}"/>'
        )
        parts.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{base - h - 4:.1f}" text-anchor="middle" font-size="12">{fmt.format(value)}</text>'
        )
        label = LABELS.get(arm, arm).split(" ", 1)
        for j, line in enumerate(label):
            parts.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{base + 16 + 13 * j}" text-anchor="middle" font-size="11">{line}</text>'
            )
    return parts


def svg_plot(arms: dict, seeds: list[int]) -> str:
    """Accuracy and mean output tokens per arm, side by side (hand-written SVG: no plotting library)."""
    panel = {"width": 420, "height": 220, "top": 60}
    acc = {**panel, "title": "accuracy on held-out problems"}
    tok = {**panel, "title": "mean output tokens per answer"}
    top_tokens = max((a["tokens"] for a in arms.values()), default=1) * 1.15
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="960" height="360" font-family="sans-serif">',
        '<rect width="960" height="360" fill="white"/>',
        f'<text x="480" y="22" text-anchor="middle" font-size="15">bench_learning: same training tokens per arm, '
        f"mean of seeds {', '.join(map(str, seeds))}</text>",
        *bars(acc, 40, arms, "accuracy", 1.0, "{:.2f}"),
        *bars(tok, 500, arms, "tokens", top_tokens, "{:.0f}"),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def table(result: dict) -> list[str]:
    from learning import LABELS

    lines = ["arm                              accuracy   tokens   rows  steps  per seed (accuracy / tokens)"]
    steps = {r["arm"]: r["train_steps"] for r in result["runs"]}
    for arm, figures in result["arms"].items():
        seeds = ", ".join(
            f"{k}: {v['accuracy']:.3f} / {v['tokens']:.0f}" for k, v in figures["per_seed"].items()
        )
        rows = result["data"][arm]["rows"]
        lines.append(
            f"{LABELS[arm]:<32} {figures['accuracy']:>8.3f} {figures['tokens']:>8.1f} {rows:>6} {steps[arm]:>6}  {seeds}"
        )
    return lines


def markdown(result: dict) -> list[str]:
    """The README's table: accuracy and mean output tokens per arm, with training rows and steps."""
    from learning import LABELS

    lines = ["| arm | accuracy | output tokens | training rows | steps |", "|---|---|---|---|---|"]
    steps = {r["arm"]: r["train_steps"] for r in result["runs"]}
    for arm, figures in result["arms"].items():
        lines.append(
            f"| {LABELS[arm]} | {figures['accuracy']:.3f} | {figures['tokens']:.0f} "
            f"| {result['data'][arm]['rows']} | {steps[arm]} |"
        )
    return lines


def ratios(arms: dict) -> list[str]:
    lines = []
    if "curated" in arms and "all" in arms:
        c, a = arms["curated"], arms["all"]
        lines.append(f"curated - all accuracy: {c['accuracy'] - a['accuracy']:+.3f} (target >= +0.15)")
    if "curated" in arms and "verbose" in arms:
        c, d = arms["curated"], arms["verbose"]
        lines.append(f"curated - verbose accuracy: {c['accuracy'] - d['accuracy']:+.3f} (target >= -0.05)")
        lines.append(f"curated / verbose tokens: {c['tokens'] / d['tokens']:.2f} (target <= 0.75)")
    return lines


def main(argv: list[str] | None = None) -> int:
    from learning import ARMS, Settings, run_benchmark

    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--train-problems", type=int, default=defaults.train_problems)
    parser.add_argument("--eval-problems", type=int, default=defaults.eval_problems)
    parser.add_argument("--token-budget", type=int, default=defaults.token_budget)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument(
        "--workdir", default=None, help="keep every stage's output here (default: a temp folder)"
    )
    parser.add_argument(
        "--plot", default=os.path.join("docs", "learning.svg"), help="SVG to write ('' for none)"
    )
    args = parser.parse_args(argv)
    settings = Settings(
        train_problems=args.train_problems,
        eval_problems=args.eval_problems,
        seeds=tuple(args.seeds),
        arms=tuple(args.arms),
        token_budget=args.token_budget,
        workers=args.workers,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        result = run_benchmark(args.workdir or tmp, settings)
    print("\n".join(["", *table(result), "", *markdown(result), "", *ratios(result["arms"])]))
    for name, met in result["targets"].items():
        print(f"target {name}: {'met' if met else 'MISSED'}")
    if args.plot:
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        with open(args.plot, "w", encoding="utf-8") as f:
            f.write(svg_plot(result["arms"], list(settings.seeds)))
        print(f"plot: {args.plot}")
    line = {
        "arms": {
            arm: {"accuracy": f["accuracy"], "tokens": f["tokens"]} for arm, f in result["arms"].items()
        },
        "seeds": list(settings.seeds),
        "targets": result["targets"],
        "wall_s": round(time.monotonic() - started, 1),
        "train_cpu_s": round(sum(r["cpu_seconds"] for r in result["runs"]), 1),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
