"""Throughput of the ``dpo`` stage's trainer against a bare PyTorch DPO loop, in the same process on the
same batches: chosen + rejected tokens/s, the ratio to the bare loop, peak memory.

- ``stage``: the trainer ``components/dpo/run.py:make_trainer`` builds (TRL's DPOTrainer with the stage's
  arguments and CogPO collator; the reference is a frozen copy of the start model);
- ``bare``: policy forward/backward over chosen and rejected together, reference forward without
  gradients, the sigmoid DPO loss ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))`` over the completion
  tokens' summed log-probabilities from full logits (Rafailov et al. 2023); fused AdamW, clipping, bf16
  autocast on a GPU (``loops.py``).

Each pair is a short prompt and two answers of ``fill * seq`` to ``seq`` tokens. Tokens are the real
tokens of both sides of every timed batch. MFU counts 8 x parameters a token (6 for the policy's forward
and backward, 2 for the reference's forward).

    python bench/bench_dpo.py            # CPU: a small Qwen2, pairs of 64-256 tokens a side, 1 and 4 pairs a step
    python bench/bench_dpo.py --gpu      # GPU: Qwen2.5-0.5B's shape, ~1024 tokens a side, bf16, 2 and 8 pairs a step

TRL's DPO trainer computes its logged metrics (reward accuracy and margins, which the stage reports)
inside its loss and reads them back every micro-batch; what that costs shows here as the ratio.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loops  # noqa: E402

BETA = 0.1


def make_pairs(path: str, model: str, pairs: int, seq: int, fill: float, seed: int = 0) -> None:
    from distilflow.models import load_tokenizer
    from distilflow.records import Message, PreferencePair, write_jsonl
    from distilflow.training.data import message_dicts

    tokenizer = load_tokenizer(model)
    rng = random.Random(seed)
    rows = []
    for i in range(pairs):
        prompt = [Message(role="user", content=f"Question {i}?")]
        sides = []
        for k in range(2):
            fit = loops.filler(tokenizer, rng.randint(int(fill * seq), seq), seed + 2 * i + k)
            text = fit(lambda t, p=prompt: message_dicts([*p, Message(role="assistant", content=t)]))
            sides.append([Message(role="assistant", content=text)])
        rows.append(PreferencePair(id=f"p{i}", prompt=prompt, chosen=sides[0], rejected=sides[1]))
    write_jsonl(path, rows)


def stage_trainer(opts: argparse.Namespace, work: str, name: str, batch: int) -> Any:
    from distilflow import records
    from distilflow.components.dpo.config import DpoConfig
    from distilflow.components.dpo.run import build_rows, make_trainer
    from distilflow.models import load_tokenizer

    cfg = DpoConfig(
        output_uri=os.path.join(work, name),
        data_uri=opts.data,
        model=opts.model,
        max_steps=opts.warmup + opts.steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_length=opts.seq + 16,
        beta=BETA,
        logging_steps=max(1, (opts.warmup + opts.steps) // 2),
        save_steps=0,
        processes=1,
    )
    tokenizer = load_tokenizer(opts.model)
    rows, _, _ = build_rows(records.read_jsonl(opts.data, records.PreferencePair), tokenizer, cfg)
    return make_trainer(cfg, rows, tokenizer, opts.model)


def sequence_logps(model: Any, batch: dict[str, Any]) -> Any:
    """Summed log-probabilities of each sequence's completion tokens, from the full logits."""
    import torch

    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    targets = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].to(logits.dtype)
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return (logps * mask).sum(-1)


def dpo_loss(ref: Any) -> Any:
    import torch
    import torch.nn.functional as F

    def loss(model: Any, batch: dict[str, Any]) -> Any:
        policy = sequence_logps(model, batch)
        with torch.no_grad():
            reference = sequence_logps(ref, batch)
        pc, pr = policy.chunk(2)
        rc, rr = reference.chunk(2)
        return -F.logsigmoid(BETA * ((pc - rc) - (pr - rr))).mean()

    return loss


def measure(opts: argparse.Namespace, work: str, batch: int) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    trainer = stage_trainer(opts, work, f"stage-{batch}", batch)
    batches = loops.draw_batches(trainer, opts.warmup + opts.steps)
    got = loops.time_trainer(trainer, opts.warmup, opts.gpu)
    rows = [loops.summarise("stage", batch, got, opts.params, opts.peak, factor=8.0)]
    del trainer
    loops.release()
    model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32)
    ref = (
        AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32)
        .to(loops.device_of(opts.gpu))
        .eval()
    )
    ref.requires_grad_(False)
    got = loops.time_loop(model, batches, dpo_loss(ref), opts.warmup, opts.gpu)
    rows.append(loops.summarise("bare", batch, got, opts.params, opts.peak, factor=8.0))
    del model, ref, batches
    loops.release()
    return rows


def main(argv: list[str] | None = None) -> None:
    loops.pairs_main("dpo", __doc__.split("\n")[0], "2,8", measure, make_pairs, argv)


if __name__ == "__main__":
    main()
