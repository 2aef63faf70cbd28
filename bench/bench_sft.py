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
    opts = parser.parse_args()

    from distilflow.models import load_tokenizer
    from distilflow.tiny import build_tiny
    from distilflow.training import chat_length, message_dicts

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
