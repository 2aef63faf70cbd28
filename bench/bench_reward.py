"""Throughput of the ``reward`` stage's trainer against a bare PyTorch Bradley-Terry loop, in the same
process on the same batches: chosen + rejected tokens/s, the ratio to the bare loop, peak memory.

- ``stage``: the trainer ``components/reward/run.py:make_trainer`` builds (TRL's RewardTrainer with the
  stage's lean ``compute_loss``; a scalar head on the student, ``num_labels=1``);
- ``bare``: ``AutoModelForSequenceClassification(num_labels=1)`` scores chosen and rejected in one
  batch, loss ``-log sigmoid(r_chosen - r_rejected)`` (Bradley-Terry); fused AdamW, clipping, bf16
  autocast on a GPU (``loops.py``).

    python bench/bench_reward.py          # CPU: a small Qwen2, pairs of 64-256 tokens a side, 1 and 4 pairs a step
    python bench/bench_reward.py --gpu    # GPU: Qwen2.5-0.5B's shape, ~1024 tokens a side, bf16, 4 and 16 pairs

MFU counts 6 x parameters a token (forward and backward). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loops  # noqa: E402
from bench_dpo import make_pairs  # noqa: E402


def stage_trainer(opts: argparse.Namespace, work: str, name: str, batch: int) -> Any:
    from distilflow import records
    from distilflow.components.reward.config import RewardConfig
    from distilflow.components.reward.run import make_trainer
    from distilflow.models import load_tokenizer
    from distilflow.training.data import preference_rows

    cfg = RewardConfig(
        output_uri=os.path.join(work, name),
        data_uri=opts.data,
        model=opts.model,
        max_steps=opts.warmup + opts.steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_length=opts.seq + 16,
        logging_steps=max(1, (opts.warmup + opts.steps) // 2),
        save_steps=0,
        processes=1,
    )
    tokenizer = load_tokenizer(opts.model)
    pairs = records.read_jsonl(opts.data, records.PreferencePair)
    rows = [row for _, row in preference_rows(pairs, tokenizer, cfg.max_length)[0]]
    return make_trainer(cfg, rows, tokenizer, opts.model, os.path.join(work, name, "scratch"))


def bradley_terry(model: Any, batch: dict[str, Any]) -> Any:
    import torch.nn.functional as F

    scores = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    chosen, rejected = scores.squeeze(-1).chunk(2)
    return -F.logsigmoid(chosen - rejected).mean()


def measure(opts: argparse.Namespace, work: str, batch: int) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForSequenceClassification

    trainer = stage_trainer(opts, work, f"stage-{batch}", batch)
    batches = loops.draw_batches(trainer, opts.warmup + opts.steps)
    got = loops.time_trainer(trainer, opts.warmup, opts.gpu)
    rows = [loops.summarise("stage", batch, got, opts.params, opts.peak)]
    del trainer
    loops.release()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(opts.model, num_labels=1, dtype=torch.float32)
    got = loops.time_loop(model, batches, bradley_terry, opts.warmup, opts.gpu)
    rows.append(loops.summarise("bare", batch, got, opts.params, opts.peak))
    del model, batches
    loops.release()
    return rows


def main(argv: list[str] | None = None) -> None:
    loops.pairs_main("reward", __doc__.split("\n")[0], "4,16", measure, make_pairs, argv)


if __name__ == "__main__":
    main()
