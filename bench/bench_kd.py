"""Does white-box KD bring the student closer to the teacher than CE on the same tokens, and how fast?

A tiny Qwen3 teacher with a peaked next-token distribution (``distilflow.tiny``, ``sharpness``: about
0.6 on its top token, 0.3 outside its top-20) answers training and held-out problems through the
``distill`` stage with ``logits: {top_k: 20}``. The same tiny student (same tokenizer, random
weights) is then trained by the ``sft`` stage on the same teacher answers, in the same order, with
the same steps and learning rate: once with CE alone (``kd.alpha=0``: the baseline, same code path)
and once with KD (``kd.alpha``, forward KL over the top-20 and the tail). After each budget of steps
the student's mean KL(teacher || student) over the full vocabulary is measured at every token of the
held-out answers, with plain forward passes.

    python bench/bench_kd.py [--steps 25,50,100,200] [--alpha 0.9] [--problems 32] [--lr 3e-3]

Printed per budget: held-out KL after CE, after KD, how much further KD brought it down
(``(start - KL_kd) / (start - KL_ce)``), and each sft run's wall time (loading, training, saving).
Last line: one JSON object. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(
    0, ROOT
)  # the held-out measurement and the data helpers are the test's (tests/components/sft/test_kd.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="25,50,100,200", help="comma-separated step budgets")
    parser.add_argument("--alpha", type=float, default=0.9, help="kd.alpha of the KD run")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--divergence", default="forward_kl")
    args = parser.parse_args()

    from distilflow.components.sft.run import run
    from distilflow.tiny import build_tiny
    from tests.components.sft.test_kd import distilled, heldout_kl, sft_config

    root = tempfile.mkdtemp(prefix="bench-kd-")
    teacher = build_tiny(os.path.join(root, "teacher"), seed=1, sharpness=6.0)
    student = build_tiny(os.path.join(root, "student"), seed=0)
    train = distilled(root, teacher, "train", range(args.problems))
    held = distilled(root, teacher, "held", range(100, 100 + max(args.problems // 4, 8)))
    start = heldout_kl(teacher, student, held)
    print(f"held-out KL(teacher || student) before training: {start:.4f}", flush=True)
    table = []
    for steps in (int(s) for s in args.steps.split(",")):
        found, wall = {}, {}
        for alpha in (0.0, args.alpha):
            kd = {"alpha": alpha, "divergence": args.divergence}
            out = os.path.join(root, f"sft-{steps}-{alpha}")
            config = sft_config(
                out, train, student, kd=kd, max_steps=steps, learning_rate=args.lr, logging_steps=25
            )
            began = time.perf_counter()
            model = run(config).model_uri
            wall[alpha] = time.perf_counter() - began
            found[alpha] = heldout_kl(teacher, model, held)
        ce, kd_kl = found[0.0], found[args.alpha]
        further = (start - kd_kl) / (start - ce) if start > ce else float("nan")
        table.append(
            {
                "steps": steps,
                "kl_ce": round(ce, 4),
                "kl_kd": round(kd_kl, 4),
                "kd_vs_ce_drop": round(further, 3),
                "sft_wall_ce_s": round(wall[0.0], 1),
                "sft_wall_kd_s": round(wall[args.alpha], 1),
            }
        )
        print(
            f"steps {steps:4d}: KL after CE {ce:.4f}, after KD {kd_kl:.4f}, KD's drop / CE's drop {further:.2f} "
            f"(sft stage wall time: CE {wall[0.0]:.1f} s, KD {wall[args.alpha]:.1f} s)",
            flush=True,
        )
    print(
        json.dumps({"bench": "kd_vs_ce", "start_kl": round(start, 4), "alpha": args.alpha, "budgets": table})
    )


if __name__ == "__main__":
    main()
