"""Throughput of the ``sft`` stage's trainer against a bare PyTorch loop, in the same process on the same
batches, at several batch sizes: tokens/s, the ratio to the bare loop, MFU, padding share, peak memory.

For each batch size it runs, one after the other on one device (``loops.py`` says how each is timed):

- ``stage``: the trainer ``components/sft/run.py:make_trainer`` builds (the stage's TRL arguments,
  callbacks and token counter), padded batches as the stage trains by default;
- ``stage-packed``: the same with ``packing=true`` (padding-free rows kept apart by position ids);
- ``bare``: the bare loop on the batches the stage's dataloader yields (fused AdamW, clipping, bf16
  autocast on a GPU, SDPA, the model's own cross-entropy over full logits);
- with ``liger-kernel`` installed (GPU only): ``stage-liger`` (``use_liger_kernel=true``) and
  ``bare-liger`` (the bare loop with Liger's RMSNorm, RoPE, SwiGLU and fused linear cross-entropy).

Target (issue 22): ``stage`` >= 0.95 x ``bare`` at 4 and 16 rows on the GPU shape; with Liger >= 28% MFU.
Tokens are the real (non-padding) tokens of the timed steps, counted from the batches trained on; the
padding share is measured from the same batches (not from a formula).

    python bench/bench_sft.py                 # CPU: a small Qwen2 (hidden 128, 4 layers), rows of 64-256 tokens
    python bench/bench_sft.py --gpu           # GPU: Qwen2.5-0.5B's shape, rows of ~2048 tokens, bf16, batches 4 and 16
        [--batches 4,16] [--seq 2048] [--steps 10] [--warmup 3] [--peak-tflops 989] [--fill 0.98]

MFU = 6 x parameters x tokens/s / peak bf16 FLOP/s (``loops.PEAK_BF16_TFLOPS`` by GPU name, or
``--peak-tflops``); it leaves out attention's own FLOPs. Not a timed test: figures depend on the machine.
The last line is one JSON object (``ratios_to_bare``, ``rows``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loops  # noqa: E402
from loops import mfu, peak_flops, qwen2_config  # noqa: E402,F401  (the figures' arithmetic)

KEYS = ("input_ids", "attention_mask", "position_ids", "labels")


def count_params(config: Any) -> int:
    """Parameters of a causal LM with ``config`` (tied weights once), without allocating its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def make_data(path: str, model: str, rows: int, seq: int, fill: float, seed: int = 0) -> None:
    """``rows`` chats (a question, a long answer) of ``fill * seq`` to ``seq`` tokens, uniformly spread."""
    from distilflow.models import load_tokenizer
    from distilflow.records import Message, SftExample, write_jsonl
    from distilflow.training.data import message_dicts

    tokenizer = load_tokenizer(model)
    rng = random.Random(seed)
    examples = []
    for i in range(rows):
        target = rng.randint(int(fill * seq), seq)
        fit = loops.filler(tokenizer, target, seed + i)

        def render(text: str, i: int = i) -> list[dict[str, Any]]:
            return message_dicts(
                [Message(role="user", content=f"Question {i}?"), Message(role="assistant", content=text)]
            )

        text = fit(render)
        examples.append(
            SftExample(
                id=f"b{i}",
                messages=[
                    Message(role="user", content=f"Question {i}?"),
                    Message(role="assistant", content=text),
                ],
            )
        )
    write_jsonl(path, examples)


def gpu_sft_config(
    opts: argparse.Namespace, model: str, data: str, out: str, processes: int = 1, **overrides: Any
):
    """The ``SftConfig`` the benchmark trains with (``opts.batch`` rows a step, no checkpoints)."""
    from distilflow.components.sft.config import SftConfig

    settings = dict(
        output_uri=out,
        data_uri=data,
        model=model,
        max_steps=opts.warmup + opts.steps,
        learning_rate=1e-5,
        per_device_train_batch_size=opts.batch,
        gradient_accumulation_steps=1,
        max_length=opts.seq,
        logging_steps=max(1, (opts.warmup + opts.steps) // 2),
        save_steps=0,
        deepspeed=opts.zero,
        gradient_checkpointing=opts.gradient_checkpointing,
        processes=processes,
        seed=0,
    )
    return SftConfig(**{**settings, **overrides})


def stage_trainer(opts: argparse.Namespace, work: str, name: str, **overrides: Any) -> Any:
    from distilflow import records
    from distilflow.components.sft.run import build_rows, make_trainer, training_template
    from distilflow.models import load_tokenizer

    cfg = gpu_sft_config(opts, opts.model, opts.data, os.path.join(work, name), **overrides)
    tokenizer = load_tokenizer(opts.model)
    examples = records.read_jsonl(opts.data, records.SftExample)
    rows, _ = build_rows(examples, tokenizer, cfg.max_length, training_template(tokenizer, cfg))
    return make_trainer(cfg, rows, tokenizer, opts.model, os.path.join(work, name, "scratch"))


def causal_lm_loss(model: Any, batch: dict[str, Any]) -> Any:
    return model(**{k: v for k, v in batch.items() if k in KEYS}, use_cache=False).loss


def bare_model(path: str, liger: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if liger:  # RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy of the loss
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    return model


def measure(opts: argparse.Namespace, work: str, batch: int, liger: bool) -> list[dict[str, Any]]:
    """The runs at one batch size (Liger's last: its RoPE patch is module-wide)."""
    opts.batch = batch
    rows = []
    runs = (
        [("stage", {}), ("stage-packed", {"packing": True})]
        if not liger
        else [("stage-liger", {"use_liger_kernel": True})]
    )
    for name, overrides in runs:
        trainer = stage_trainer(opts, work, f"{name}-{batch}", **overrides)
        if name == "stage" or name == "stage-liger":
            batches = loops.draw_batches(trainer, opts.warmup + opts.steps)
        got = loops.time_trainer(trainer, opts.warmup, opts.gpu)
        rows.append(loops.summarise(name, batch, got, opts.params, opts.peak))
        del trainer
        loops.release()
    model = bare_model(opts.model, liger)
    got = loops.time_loop(model, batches, causal_lm_loss, opts.warmup, opts.gpu)
    rows.append(loops.summarise("bare-liger" if liger else "bare", batch, got, opts.params, opts.peak))
    del model, batches
    loops.release()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the 0.5B Qwen2 shape on a CUDA GPU, bf16")
    parser.add_argument("--batches", default=None, help="rows per step, comma-separated (GPU 4,16; CPU 2,8)")
    parser.add_argument("--seq", type=int, default=None, help="longest row in tokens (GPU 2048; CPU 256)")
    parser.add_argument("--fill", type=float, default=None, help="shortest row / seq (GPU 0.98; CPU 0.25)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (GPU 10; CPU 8)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing starts")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the CPU model")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s of the GPU")
    parser.add_argument("--zero", default="none", choices=["none", "zero2", "zero3"], help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--profile", default=None, help="also profile 5 steps of the stage at the first batch size into DIR"
    )
    opts = parser.parse_args(argv)
    run(opts)


def run(opts: argparse.Namespace) -> None:
    import torch

    if opts.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU (none is visible)")
    batches = [int(b) for b in (opts.batches or ("4,16" if opts.gpu else "2,8")).split(",")]
    opts.seq = opts.seq or (2048 if opts.gpu else 256)
    opts.fill = opts.fill if opts.fill is not None else (0.98 if opts.gpu else 0.25)
    opts.steps = opts.steps or (10 if opts.gpu else 8)
    loops.threads(opts.gpu)
    work = tempfile.mkdtemp(prefix="bench-sft-")
    opts.model = os.path.join(work, "model")
    opts.params = loops.build_model(opts.model, "0.5b" if opts.gpu else "small", opts.hidden)
    opts.data = os.path.join(work, "sft.jsonl")
    make_data(opts.data, opts.model, max(batches) * (opts.warmup + opts.steps), opts.seq, opts.fill)
    device = torch.cuda.get_device_name(0) if opts.gpu else "cpu"
    opts.peak = peak_flops(device, opts.peak_tflops) if opts.gpu else None
    print(
        f"{device}: {opts.params / 1e6:.1f}M parameters, rows of {int(opts.fill * opts.seq)}-{opts.seq} tokens",
        flush=True,
    )
    rows = [row for b in batches for row in measure(opts, work, b, liger=False)]
    if loops.liger_available(opts.gpu):
        rows += [row for b in batches for row in measure(opts, work, b, liger=True)]
    else:
        print(
            "liger-kernel: not measured (" + ("not installed" if opts.gpu else "GPU only") + ")", flush=True
        )
    if opts.profile:
        opts.batch, opts.warmup, opts.steps = batches[0], 0, 5
        table = loops.profile_trainer(stage_trainer(opts, work, "profile"), opts.profile, opts.gpu)
        print("\n".join(table.splitlines()[:25]) + f"\n(all: {opts.profile}/ops.txt, trace.json.gz)")
    print()
    ratios = loops.print_rows(rows, "bare")
    liger = {r["batch"]: r["tokens_per_s"] for r in rows if r["run"] == "bare-liger"}
    for r in rows:
        if r["run"] == "stage-liger" and liger.get(r["batch"]):
            ratios[f"stage-liger@{r['batch']}/bare-liger"] = round(r["tokens_per_s"] / liger[r["batch"]], 4)
    loops.json_line("sft", device, rows, ratios, params=opts.params, seq=opts.seq, fill=opts.fill)


if __name__ == "__main__":
    main()
