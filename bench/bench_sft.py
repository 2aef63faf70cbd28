"""Throughput of the ``sft`` stage against a bare TRL ``SFTTrainer`` script, and padding waste.

Both run the same tiny Qwen3 model (random weights), the same chats, the same TRL settings
(batch, accumulation, steps, learning rate, max length, assistant-only loss, no packing, fp32 on
CPU), each in a fresh process, alternating, ``--repeats`` times; the best wall time of each counts.
Both include loading the model, tokenizing, training and saving the model, so the ratio shows
what the stage adds (length checks, progress callback, manifest, report, model card). Target:
stage tokens/s >= 0.95 of the bare script's.

Padding waste (padded tokens / all tokens in the batches) is computed from the tokenized rows:
shuffled batches of ``--batch`` rows padded to their longest row, against TRL's best-fit-decreasing
packing into ``--max-length`` sequences (padded batches of packed rows, and padding-free, which
the stage uses with ``packing=true`` on a GPU). Target: < 5% with packing.

    python bench/bench_sft.py [--steps 150] [--rows 64] [--batch 4] [--repeats 2] [--hidden 128]

Not a timed test: figures depend on the machine (2 shared cores here).

GPU mode (``--gpu``): tokens/s and MFU of the ``sft`` stage's trainer (``make_trainer``: the stage's
TRL arguments, DeepSpeed config, callbacks) on a 0.5B-parameter Qwen2 config (Qwen2.5-0.5B's shape,
random weights, bf16 mixed precision) under DeepSpeed ZeRO-2, one process per visible GPU (torchrun).
Rows are about ``--seq`` tokens long, so batches carry almost no padding; tokens are counted from the
attention masks of the batches actually trained on, after ``--warmup`` steps.
MFU = 6 * parameters * tokens/s / (peak bf16 FLOP/s per GPU * GPUs); the 6N estimate leaves out
attention's own FLOPs and the recomputation of gradient checkpointing (off by default here). Peak
bf16 (dense) comes from ``PEAK_BF16_TFLOPS`` by GPU name, or ``--peak-tflops``.

    python bench/bench_sft.py --gpu [--gpus N] [--seq 2048] [--batch 4] [--steps 30] [--warmup 5]
        [--zero zero2] [--peak-tflops 989] [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

BARE = r"""
import json, sys, time
t0 = time.perf_counter()
from datasets import Dataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer
a = json.loads(sys.argv[1])
rows = [json.loads(line) for line in open(a["data"])]
rows = [{"messages": [{k: v for k, v in m.items() if v is not None} for m in r["messages"]]} for r in rows]
tok = AutoTokenizer.from_pretrained(a["model"])
args = SFTConfig(output_dir=a["out"] + "/scratch", max_steps=a["steps"], learning_rate=1e-3,
    per_device_train_batch_size=a["batch"], gradient_accumulation_steps=1, max_length=a["max_length"],
    packing=False, assistant_only_loss=True, bf16=False, use_cpu=True, gradient_checkpointing=False,
    dataloader_num_workers=0, dataloader_pin_memory=False, report_to="none", save_strategy="no",
    logging_steps=10, disable_tqdm=True, seed=0, data_seed=0, model_init_kwargs={"dtype": "float32"})
trainer = SFTTrainer(model=a["model"], args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
trainer.train()
trainer.save_model(a["out"] + "/model")
print(json.dumps({"wall": time.perf_counter() - t0, "steps": trainer.state.global_step}))
"""

STAGE = r"""
import json, sys, time
t0 = time.perf_counter()
from distilflow.components.sft.config import SftConfig
from distilflow.components.sft.run import run
a = json.loads(sys.argv[1])
result = run(SftConfig(output_uri=a["out"], data_uri=a["data"], model=a["model"], max_steps=a["steps"],
    learning_rate=1e-3, per_device_train_batch_size=a["batch"], gradient_accumulation_steps=1,
    max_length=a["max_length"], logging_steps=10, save_steps=0, processes=1))
print(json.dumps({"wall": time.perf_counter() - t0, "steps": result.steps}))
"""


# ---- GPU mode ----

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


def mfu(params: int, tokens_per_s: float, peak_flops_per_gpu: float, gpus: int) -> float:
    """Model FLOPs utilisation: 6 * params * tokens/s over the peak of all GPUs."""
    return 6.0 * params * tokens_per_s / (peak_flops_per_gpu * gpus)


def qwen2_config(size: str = "0.5b", vocab_size: int = 151936):
    """Qwen2.5-0.5B's shape (about 494M parameters, tied embeddings), or a tiny one for smoke runs."""
    from transformers import Qwen2Config

    if size == "0.5b":
        dims = dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
        )
    elif size == "tiny":
        dims = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    else:
        raise ValueError(f"size must be 0.5b or tiny, got {size!r}")
    return Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        **dims,
    )


def count_params(config) -> int:
    """Parameters of a causal LM with ``config`` (tied weights once), without allocating its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def gpu_sft_config(opts: argparse.Namespace, model: str, data: str, out: str, processes: int):
    """The ``SftConfig`` the GPU benchmark trains with."""
    from distilflow.components.sft.config import SftConfig

    return SftConfig(
        output_uri=out,
        data_uri=data,
        model=model,
        max_steps=opts.warmup + opts.steps,
        learning_rate=1e-5,
        per_device_train_batch_size=opts.batch,
        gradient_accumulation_steps=1,
        max_length=opts.seq,
        logging_steps=max(1, (opts.warmup + opts.steps) // 5),
        save_steps=0,
        deepspeed=opts.zero,
        gradient_checkpointing=opts.gradient_checkpointing,
        processes=processes,
        seed=0,
    )


def build_gpu_model(folder: str, size: str) -> int:
    """A random-weight Qwen2 folder (fp32 safetensors) with the tiny models' tokenizer; its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM

    from distilflow.tiny import train_tokenizer

    tok = train_tokenizer(folder)
    config = qwen2_config(size, vocab_size=151936 if size == "0.5b" else len(tok))
    config.eos_token_id, config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def make_long_data(path: str, model: str, rows: int, seq: int) -> None:
    """``rows`` chats of nearly ``seq`` tokens each (a short question, a long answer)."""
    from distilflow.models import load_tokenizer
    from distilflow.records import Message, SftExample, write_jsonl
    from distilflow.training.data import chat_length, message_dicts

    tokenizer = load_tokenizer(model)
    rng = random.Random(0)
    words = (
        "we",
        "add",
        "the",
        "numbers",
        "then",
        "check",
        "each",
        "step",
        "and",
        "the",
        "answer",
        "is",
        "boxed",
    )
    examples = []
    for i in range(rows):
        n = max(8, seq // 2)
        for _ in range(6):  # words per token is about constant: a few proportional corrections
            text = " ".join(rng.choice(words) for _ in range(n))
            messages = [
                Message(role="user", content=f"Question {i}?"),
                Message(role="assistant", content=text),
            ]
            length = chat_length(tokenizer, message_dicts(messages))
            if seq - 16 <= length <= seq:
                break
            n = max(8, int(n * (seq - 8) / length))
        examples.append(SftExample(id=f"g{i}", messages=messages))
    write_jsonl(path, examples)


GPU_WORKER = r"""
import json, os, sys, time
import torch
import torch.distributed as dist
from transformers import TrainerCallback
from distilflow import records
from distilflow.components.sft.run import build_rows, make_trainer, training_template
from distilflow.models import load_tokenizer
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
import bench_sft
a = json.loads(sys.argv[2])
opts = bench_sft.argparse.Namespace(**a["opts"])
world = int(os.environ.get("WORLD_SIZE", "1"))
cfg = bench_sft.gpu_sft_config(opts, a["model"], a["data"], a["out"], world)
tokenizer = load_tokenizer(a["model"])
examples = records.read_jsonl(a["data"], records.SftExample)
rows, dropped = build_rows(examples, tokenizer, cfg.max_length, training_template(tokenizer, cfg))
trainer = make_trainer(cfg, rows, tokenizer, a["model"], os.path.join(a["out"], "scratch"))
seen = {"real": 0, "all": 0}
step = trainer.training_step
def counted(model, inputs, *args, **kwargs):
    mask = inputs.get("attention_mask")
    ids = inputs["input_ids"]
    seen["real"] += int(mask.sum()) if mask is not None else ids.numel()
    seen["all"] += ids.numel()
    return step(model, inputs, *args, **kwargs)
trainer.training_step = counted
def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()
mark = {}
class Warm(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == opts.warmup:
            sync()
            mark.update(t=time.perf_counter(), **{k + "0": v for k, v in seen.items()})
trainer.add_callback(Warm())
trainer.train()
sync()
elapsed = time.perf_counter() - mark["t"]
counts = torch.tensor([seen["real"] - mark["real0"], seen["all"] - mark["all0"]], dtype=torch.float64,
                      device="cuda" if torch.cuda.is_available() else "cpu")
if dist.is_initialized():
    dist.all_reduce(counts)
engine = trainer.model_wrapped
params = next(trainer.accelerator.unwrap_model(trainer.model).parameters())
if trainer.is_world_process_zero():
    print("BENCH " + json.dumps({
        "elapsed": elapsed, "real_tokens": counts[0].item(), "all_tokens": counts[1].item(),
        "steps": trainer.state.global_step - opts.warmup, "rows": len(rows), "dropped": dropped,
        "world": world, "param_dtype": str(params.dtype), "engine": type(engine).__name__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }), flush=True)
"""


def gpu_main(opts: argparse.Namespace) -> None:
    """The GPU benchmark: build the model and data, train under torchrun, print tokens/s and MFU."""
    import shutil

    import torch

    if not torch.cuda.is_available() and not opts.allow_cpu:
        raise SystemExit("--gpu needs a CUDA GPU (none is visible)")
    gpus = opts.gpus or max(torch.cuda.device_count(), 1)
    work = tempfile.mkdtemp(prefix="bench-sft-gpu-")
    model = os.path.join(work, "model")
    params = build_gpu_model(model, opts.size)
    data = os.path.join(work, "sft.jsonl")
    make_long_data(data, model, opts.batch * gpus * (opts.warmup + opts.steps), opts.seq)
    worker = os.path.join(work, "worker.py")
    with open(worker, "w") as f:
        f.write(GPU_WORKER)
    payload = {"model": model, "data": data, "out": os.path.join(work, "out"), "opts": vars(opts)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    command += [worker, os.path.abspath(__file__), json.dumps(payload)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    print(f"training {params / 1e6:.0f}M parameters on {gpus} GPU(s), ZeRO {opts.zero}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-5000:])
    got = json.loads(lines[-1][len("BENCH ") :])
    tokens_per_s = got["real_tokens"] / got["elapsed"]
    peak = peak_flops(got["gpu"], opts.peak_tflops)
    print(
        f"{got['gpu']} x {got['world']}: {got['steps']} steps in {got['elapsed']:.1f} s, "
        f"{got['real_tokens']:.0f} tokens ({1 - got['real_tokens'] / got['all_tokens']:.1%} padding), "
        f"params {got['param_dtype']} under {got['engine']}"
    )
    print(f"tokens/s: {tokens_per_s:.0f} ({tokens_per_s / got['world']:.0f} per GPU)")
    if peak is None:
        print(f"MFU: n/a ({got['gpu']!r} is not in PEAK_BF16_TFLOPS; pass --peak-tflops)")
    else:
        value = mfu(params, tokens_per_s, peak, got["world"])
        print(
            f"MFU: {value:.1%} (6 x {params / 1e6:.0f}M params x tokens/s / {peak / 1e12:.0f} TFLOP/s x {got['world']})"
        )
    shutil.rmtree(work, ignore_errors=True)


def make_data(path: str, rows: int, seed: int = 0) -> None:
    """Chats of varied length: a question and an answer with a reasoning trace of 1-12 sentences."""
    from distilflow.records import Message, SftExample, write_jsonl

    rng = random.Random(seed)
    sentence = "We add the numbers and check the result."
    examples = []
    for i in range(rows):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        examples.append(
            SftExample(
                id=f"b{i}",
                messages=[
                    Message(role="user", content=f"What is {a} + {b}?"),
                    Message(
                        role="assistant",
                        content=f"The answer is \\boxed{{{a + b}}}.",
                        reasoning_content=" ".join([sentence] * rng.randint(1, 12)),
                    ),
                ],
            )
        )
    write_jsonl(path, examples)


def timed(script: str, args: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def padding_waste(lengths: list[int], batch: int, max_length: int, seed: int = 0) -> dict[str, float]:
    """Padded / all tokens: shuffled padded batches, packed rows in padded batches, padding-free."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    def waste(sizes: list[int]) -> float:
        rng = random.Random(seed)
        order = sizes[:]
        rng.shuffle(order)
        padded = real = 0
        for i in range(0, len(order), batch):
            chunk = order[i : i + batch]
            padded += max(chunk) * len(chunk)
            real += sum(chunk)
        return (padded - real) / padded

    packed = pack_dataset(Dataset.from_dict({"input_ids": [[0] * n for n in lengths]}), max_length, "bfd")
    packed_lengths = [len(ids) for ids in packed["input_ids"]]
    return {
        "no_packing": waste(lengths),
        "packing_padded_batches": waste(packed_lengths),
        "packing_padding_free": 0.0,  # one flattened sequence per batch: nothing to pad
        "packed_rows": len(packed_lengths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    gpu = parser.add_argument_group("GPU mode")
    gpu.add_argument("--gpu", action="store_true", help="tokens/s and MFU of a 0.5B Qwen2 under ZeRO-2")
    gpu.add_argument("--gpus", type=int, default=0, help="processes (default: every visible GPU)")
    gpu.add_argument("--seq", type=int, default=2048, help="tokens per row")
    gpu.add_argument("--warmup", type=int, default=5, help="steps before timing starts")
    gpu.add_argument("--zero", default="zero2", choices=["zero2", "zero3", "none"])
    gpu.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s of one GPU")
    gpu.add_argument("--gradient-checkpointing", action="store_true")
    gpu.add_argument("--size", default="0.5b", choices=["0.5b", "tiny"], help=argparse.SUPPRESS)
    gpu.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # smoke runs only
    opts = parser.parse_args()
    if opts.gpu:
        if "--steps" not in sys.argv:
            opts.steps = 30
        if "--batch" not in sys.argv:
            opts.batch = 4
        gpu_main(opts)
        return

    from distilflow.models import load_tokenizer
    from distilflow.tiny import build_tiny
    from distilflow.training.data import chat_length, message_dicts

    work = tempfile.mkdtemp(prefix="bench-sft-")
    model = build_tiny(os.path.join(work, "model"), hidden=opts.hidden)
    data = os.path.join(work, "sft.jsonl")
    make_data(data, opts.rows)

    from distilflow.records import SftExample, read_jsonl

    tokenizer = load_tokenizer(model)
    lengths = [chat_length(tokenizer, message_dicts(ex.messages)) for ex in read_jsonl(data, SftExample)]
    tokens = sum(lengths) / len(lengths) * opts.batch * opts.steps  # rows seen x mean length

    best: dict[str, float] = {}
    for r in range(opts.repeats):
        for name, script in (("bare", BARE), ("stage", STAGE)):
            out = os.path.join(work, f"{name}-{r}")
            got = timed(script, {"model": model, "data": data, "out": out, "steps": opts.steps,
                                 "batch": opts.batch, "max_length": opts.max_length})  # fmt: skip
            assert got["steps"] == opts.steps, got
            best[name] = min(best.get(name, float("inf")), got["wall"])
            print(f"{name:5s} run {r}: {got['wall']:.2f} s, {tokens / got['wall']:.0f} tokens/s", flush=True)

    ratio = best["bare"] / best["stage"]
    print(f"\ntokens/s  bare TRL: {tokens / best['bare']:.0f}  sft stage: {tokens / best['stage']:.0f}  "
          f"ratio: {ratio:.3f} (target >= 0.95)")  # fmt: skip
    w = padding_waste(lengths, opts.batch, opts.max_length)
    print(
        f"padding waste  no packing: {w['no_packing']:.1%}  packing (padded batches): "
        f"{w['packing_padded_batches']:.1%}  packing (padding-free, as the stage packs): "
        f"{w['packing_padding_free']:.1%} (target < 5%); {len(lengths)} rows -> {w['packed_rows']} packed rows"
    )


if __name__ == "__main__":
    main()
