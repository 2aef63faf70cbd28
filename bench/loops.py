"""What bench_sft, bench_dpo and bench_reward share: a stage's trainer and a bare PyTorch loop timed in the
same process on the same batches, the model shapes, peak memory and MFU.

The stage's trainer is the one its ``make_trainer`` builds (its TRL arguments, callbacks, token counter).
Its batches are drawn once from that trainer's own dataloader, so the bare loop trains on exactly the
same tokens and padding. The bare loop is what a careful engineer writes by hand: fp32 weights, bf16
autocast on a GPU, fused AdamW, gradient clipping at 1.0 (as the Trainer clips), SDPA attention (the
model's default), no Trainer. Both are timed after ``warmup`` steps with the device synchronised at both
ends; tokens are the real (non-padding) tokens of the timed steps; peak memory is the device's allocator
peak over the run (``torch.cuda.max_memory_allocated``; the process's peak RSS on a CPU).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    # dense bf16 tensor-core peak per GPU (no sparsity), vendor data sheets; first match in the name wins
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("H20", 148.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("A6000", 155.0),
]


def peak_flops(gpu_name: str, override_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of one GPU: ``override_tflops`` if given, else looked up by name (None
    when the name is not in ``PEAK_BF16_TFLOPS``)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in gpu_name.lower():
            return tflops * 1e12
    return None


def mfu(
    params: int, tokens_per_s: float, peak_flops_per_gpu: float, gpus: int = 1, factor: float = 6.0
) -> float:
    """Model FLOPs utilisation: ``factor`` (6 for forward + backward) * params * tokens/s over the peak."""
    return factor * params * tokens_per_s / (peak_flops_per_gpu * gpus)


def qwen2_config(size: str = "0.5b", vocab_size: int = 151936, hidden: int = 128):
    """Qwen2.5-0.5B's shape (about 494M parameters, tied embeddings), or a small one (``hidden``) for CPU."""
    from transformers import Qwen2Config

    if size == "0.5b":
        dims = dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
        )
    elif size == "small":
        dims = dict(
            hidden_size=hidden,
            intermediate_size=hidden * 3,
            num_hidden_layers=4,
            num_attention_heads=max(1, hidden // 32),
            num_key_value_heads=1,
        )
    else:
        raise ValueError(f"size must be 0.5b or small, got {size!r}")
    return Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        **dims,
    )


def build_model(folder: str, size: str, hidden: int = 128) -> int:
    """A random-weight Qwen2 folder (fp32 safetensors) with the tiny models' tokenizer; its parameter count.
    The 0.5B shape keeps Qwen's 151,936-token vocabulary (the LM head's real cost); the tokenizer uses the
    first few hundred ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from distilflow.tiny import train_tokenizer

    tok = train_tokenizer(folder)
    config = qwen2_config(size, vocab_size=151936 if size == "0.5b" else len(tok), hidden=hidden)
    config.eos_token_id, config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def filler(tokenizer: Any, seq: int, seed: int) -> Callable[[Callable[[str], list[dict[str, Any]]]], str]:
    """``fit(render)``: a text whose chat, rendered by ``render(text)``, is ``seq - 16``..``seq`` tokens."""
    import random

    from distilflow.training.data import chat_length

    rng = random.Random(seed)
    words = ("we", "add", "the", "numbers", "then", "check", "each", "step", "and", "answer", "is", "boxed")

    def fit(render: Callable[[str], list[dict[str, Any]]]) -> str:
        n = max(8, seq // 2)
        text = ""
        for _ in range(8):  # words per token is about constant: a few proportional corrections
            text = " ".join(rng.choice(words) for _ in range(n))
            length = chat_length(tokenizer, render(text))
            if seq - 16 <= length <= seq:
                break
            n = max(8, int(n * (seq - 8) / length))
        return text

    return fit


def threads(gpu: bool) -> None:
    """One torch thread on a CPU unless OMP_NUM_THREADS says otherwise: small matrices on shared cores run
    many times faster without thread contention (as tests/conftest.py sets)."""
    import torch

    if not gpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def device_of(gpu: bool) -> Any:
    import torch

    return torch.device("cuda" if gpu else "cpu")


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak


def real_tokens(batch: dict[str, Any]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def draw_batches(trainer: Any, count: int) -> list[dict[str, Any]]:
    """``count`` batches from the trainer's own dataloader (cycled), on the CPU, for the bare loop."""
    loader = trainer.get_train_dataloader()
    found = []
    for batch in itertools.islice(itertools.cycle(loader), count):
        found.append({k: v.cpu() if hasattr(v, "cpu") else v for k, v in batch.items()})
    return found


def time_trainer(trainer: Any, warmup: int, gpu: bool) -> dict[str, Any]:
    """Train ``trainer`` (``max_steps`` = warmup + timed steps); time the steps after ``warmup`` with the
    device synchronised; tokens from the stage's own counter (``trainer.token_counter``)."""
    from transformers import TrainerCallback

    device = device_of(gpu)
    marks: dict[str, Any] = {}
    counter = trainer.token_counter

    class _Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, state.max_steps):
                sync(device)
                marks[state.global_step] = (time.perf_counter(), counter.totals())

    trainer.add_callback(_Clock())
    reset_peak(device)
    trainer.train()
    (t0, (r0, s0)), (t1, (r1, s1)) = marks[warmup], marks[trainer.state.max_steps]
    return {
        "seconds": t1 - t0,
        "tokens": r1 - r0,
        "slots": s1 - s0,
        "steps": trainer.state.max_steps - warmup,
        "peak_gib": peak_gib(device),
    }


def time_loop(
    model: Any,
    batches: list[dict[str, Any]],
    loss_fn: Callable[[Any, dict[str, Any]], Any],
    warmup: int,
    gpu: bool,
) -> dict[str, Any]:
    """The bare loop: fused AdamW, clipping at 1.0, bf16 autocast on a GPU; one batch a step."""
    import torch

    device = device_of(gpu)
    reset_peak(device)
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    t0 = tokens = slots = 0
    for i, cpu_batch in enumerate(batches):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in cpu_batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            tokens += real_tokens(cpu_batch)
            slots += cpu_batch["input_ids"].numel()
    sync(device)
    return {
        "seconds": time.perf_counter() - t0,
        "tokens": tokens,
        "slots": slots,
        "steps": len(batches) - warmup,
        "peak_gib": peak_gib(device),
    }


def profile_trainer(trainer: Any, out: str, gpu: bool) -> str:
    """Train ``trainer`` under ``torch.profiler`` (1 step skipped, 1 warm-up, 3 recorded); write the top
    operators (self device time on a GPU, self CPU time otherwise) to ``<out>/ops.txt`` and a Chrome trace
    to ``<out>/trace.json.gz``. Returns the table."""
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import TrainerCallback

    os.makedirs(out, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=3), record_shapes=False)

    class _Step(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            prof.step()

    trainer.add_callback(_Step())
    with prof:
        trainer.train()
    sort = "self_cuda_time_total" if gpu else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    with open(os.path.join(out, "ops.txt"), "w", encoding="utf-8") as f:
        f.write(table)
    prof.export_chrome_trace(os.path.join(out, "trace.json.gz"))
    return table


def release() -> None:
    """Give the memory of dropped models and trainers back before the next measurement."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def liger_available(gpu: bool) -> bool:
    import importlib.util

    return gpu and importlib.util.find_spec("liger_kernel") is not None


def summarise(
    name: str, batch: int, got: dict[str, Any], params: int, peak: float | None, factor: float = 6.0
) -> dict[str, Any]:
    """One row of the results: tokens/s, padding share, MFU (when the peak is known), peak memory."""
    rate = got["tokens"] / got["seconds"] if got["seconds"] > 0 else 0.0
    row = {
        "run": name,
        "batch": batch,
        "tokens_per_s": rate,
        "padding_share": 1 - got["tokens"] / got["slots"] if got["slots"] else None,
        "peak_gib": got["peak_gib"],
        "steps": got["steps"],
        "seconds": got["seconds"],
    }
    row["mfu"] = mfu(params, rate, peak, factor=factor) if peak else None
    return row


def print_rows(rows: list[dict[str, Any]], baseline: str) -> dict[str, float]:
    """A table of the rows and each run's ratio to ``baseline`` at the same batch size; returns the ratios
    (``<run>@<batch>``)."""
    ratios: dict[str, float] = {}
    base = {r["batch"]: r["tokens_per_s"] for r in rows if r["run"] == baseline}
    print(f"{'run':<22}{'batch':>6}{'tokens/s':>12}{'ratio':>8}{'MFU':>8}{'padding':>9}{'peak GiB':>10}")
    for r in rows:
        ratio = r["tokens_per_s"] / base[r["batch"]] if base.get(r["batch"]) else float("nan")
        ratios[f"{r['run']}@{r['batch']}"] = round(ratio, 4)
        mfu_text = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        pad = f"{r['padding_share']:.1%}" if r["padding_share"] is not None else "n/a"
        print(
            f"{r['run']:<22}{r['batch']:>6}{r['tokens_per_s']:>12,.0f}{ratio:>8.3f}{mfu_text:>8}{pad:>9}{r['peak_gib']:>10.2f}"
        )
    return ratios


def json_line(
    bench: str, device: str, rows: list[dict[str, Any]], ratios: dict[str, float], **extra: Any
) -> None:
    """The one machine-readable line a benchmark ends with."""
    print(
        json.dumps(
            {"bench": bench, "device": device, "ratios_to_bare": ratios, "rows": rows, **extra}, default=str
        )
    )


def pairs_main(
    stage: str,
    description: str,
    gpu_batches: str,
    measure: Callable[[Any, str, int], list[dict[str, Any]]],
    make_pairs: Callable[..., None],
    argv: list[str] | None = None,
) -> None:
    """The command line of a preference benchmark (dpo, reward): a tiny or 0.5B Qwen2 model, preference
    pairs of ``fill * seq`` to ``seq`` tokens a side, ``measure(opts, work, batch)`` rows per batch
    size against the bare loop, then the table and the JSON line."""
    import argparse
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gpu", action="store_true", help="the 0.5B Qwen2 shape on a CUDA GPU, bf16")
    parser.add_argument(
        "--batches", default=None, help=f"pairs per step, comma-separated (GPU {gpu_batches}; CPU 1,4)"
    )
    parser.add_argument("--seq", type=int, default=None, help="longest side in tokens (GPU 1024; CPU 256)")
    parser.add_argument("--fill", type=float, default=None, help="shortest side / seq (GPU 0.98; CPU 0.25)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (GPU 10; CPU 6)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=None)
    opts = parser.parse_args(argv)
    if opts.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU (none is visible)")
    batches = [int(b) for b in (opts.batches or (gpu_batches if opts.gpu else "1,4")).split(",")]
    opts.seq = opts.seq or (1024 if opts.gpu else 256)
    opts.fill = opts.fill if opts.fill is not None else (0.98 if opts.gpu else 0.25)
    opts.steps = opts.steps or (10 if opts.gpu else 6)
    threads(opts.gpu)
    work = tempfile.mkdtemp(prefix=f"bench-{stage}-")
    opts.model = os.path.join(work, "model")
    opts.params = build_model(opts.model, "0.5b" if opts.gpu else "small", opts.hidden)
    opts.data = os.path.join(work, "preference.jsonl")
    make_pairs(opts.data, opts.model, max(batches) * (opts.warmup + opts.steps), opts.seq, opts.fill)
    device = torch.cuda.get_device_name(0) if opts.gpu else "cpu"
    opts.peak = peak_flops(device, opts.peak_tflops) if opts.gpu else None
    print(
        f"{device}: {opts.params / 1e6:.1f}M parameters, {int(opts.fill * opts.seq)}-{opts.seq} tokens a side",
        flush=True,
    )
    rows = [row for b in batches for row in measure(opts, work, b)]
    print("\nbatch = pairs a step; tokens = chosen + rejected")
    ratios = print_rows(rows, "bare")
    json_line(stage, device, rows, ratios, params=opts.params, seq=opts.seq, fill=opts.fill)
