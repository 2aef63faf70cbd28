"""The sft stage's step as lean as a bare loop (issue 22), on a tiny Qwen3 on CPU: nothing read back to the
host between logs, the fused LM head without entropy/top-1, the same loss as cross-entropy of the
logits, tokens and padding counted from the batches trained on, packed rows kept apart by position ids,
Liger off on a CPU. The same checks with a GPU are at the end (``-m gpu``)."""

from __future__ import annotations

import os
import shutil

import pytest

from distilflow.records import Message, SftExample
from tests.components.sft.test_sft import config, examples
from tests.host_reads import host_reads


def trainer_for(model: str, tmp_path, rows_n: int = 8, **overrides):
    from distilflow.components.sft.run import build_rows, make_trainer, training_template
    from distilflow.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    cfg = config(model, "/unused.jsonl", str(tmp_path / "sft"), **overrides)
    rows, _ = build_rows(examples(rows_n), tokenizer, cfg.max_length, training_template(tokenizer, cfg))
    return make_trainer(cfg, rows, tokenizer, model, str(tmp_path / "scratch"))


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def test_no_host_read_inside_a_step_between_logs(tiny_qwen3, tmp_path):
    """8 steps of 2 micro-batches, logging every 4 steps: the stage's trainer reads nothing back to the
    host from step begin to step end (a GPU would sync there); TRL's own SFTTrainer with the same
    arguments reads its metrics in every micro-batch, which the counter sees."""
    from trl import SFTTrainer

    settings = dict(
        max_steps=8, logging_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    trainer = trainer_for(tiny_qwen3, tmp_path, **settings)
    reads = host_reads(trainer)
    with reads:
        trainer.train()
    assert reads.reads["step"] == 0, reads.where
    assert reads.reads["between"] > 0  # the log lines (loss, grad norm) and the token totals at the end

    stock = SFTTrainer(
        model=trainer.model, args=trainer.args, train_dataset=trainer.train_dataset, processing_class=trainer.processing_class
    )  # fmt: skip
    stock_reads = host_reads(stock)
    with stock_reads:
        stock.train()
    # entropy, token accuracy and the token count, each micro-batch: at least 3 x 16
    assert stock_reads.reads["step"] >= 48, stock_reads.reads
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)


def test_lean_arguments_are_in_effect(tiny_qwen3, tmp_path):
    trainer = trainer_for(tiny_qwen3, tmp_path)
    args = trainer.args
    assert args.logging_nan_inf_filter is False and args.include_num_input_tokens_seen == "no"
    assert args.optim == "adamw_torch_fused" and args.dataloader_num_workers == 0  # workers on a GPU only
    assert type(trainer).__name__ == "LeanSFTTrainer" and trainer.lean_loss


def test_fused_head_computes_log_probs_only(tiny_qwen3, tmp_path):
    """TRL's fused LM head, as the stage's trainer set it up: log-probabilities, no entropy or top-1."""
    trainer = trainer_for(tiny_qwen3, tmp_path)
    batch = first_batch(trainer)
    out = trainer.model(**batch, use_cache=False, fused_lm_head=True)
    assert out.log_probs is not None and out.entropy is None and out.is_top1 is None


def test_lean_loss_is_the_cross_entropy_of_the_logits(tiny_qwen3, tmp_path):
    """The stage's loss on a batch equals the mean token cross-entropy of the model's full logits over the
    trained (label != -100) positions; with ``num_items_in_batch`` (gradient accumulation) the sum over
    that count."""
    import torch
    import torch.nn.functional as F

    trainer = trainer_for(tiny_qwen3, tmp_path)
    trainer.model.train()
    batch = first_batch(trainer)
    logits = trainer.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    labels = batch["labels"][:, 1:]
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels.reshape(-1), reduction="none"
    )
    trained = (labels != -100).sum()
    assert 0 < trained < labels.numel()  # prompts and padding are masked out: the mask matters
    with torch.no_grad():
        mean = trainer.compute_loss(trainer.model, dict(batch))
        summed = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(1000))
    torch.testing.assert_close(mean, per_token.sum() / trained, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(summed, per_token.sum() / 1000, rtol=1e-5, atol=1e-6)


def test_tokens_and_padding_are_counted_from_the_batches_trained_on(tiny_qwen3, tmp_path, capsys):
    """In curriculum (file) order the batches are known: 20 steps of 4 of 8 rows = 10 passes over rows
    0-3 and 4-7, each padded to its longest row. Lengths come from the dataset TRL tokenized."""
    from distilflow.training.throughput import throughput

    trainer = trainer_for(tiny_qwen3, tmp_path, curriculum=True, max_steps=20)
    trainer.train()
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    real = 10 * sum(lengths)
    slots = 10 * (4 * max(lengths[:4]) + 4 * max(lengths[4:]))
    found = throughput(trainer)
    assert found["tokens_trained"] == real
    assert found["padding_share"] == pytest.approx(1 - real / slots)
    assert slots > real and found["tokens_per_second"] > 0  # the batches do carry padding
    assert f"[sft] trained {real:,} tokens ({1 - real / slots:.1%} padding)" in capsys.readouterr().out
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)


def test_packed_rows_do_not_see_each_other(tiny_qwen3, tmp_path):
    """packing=true on a CPU (sdpa): the stage's collator concatenates rows into one padding-free row
    whose position ids restart at each row, and the logits of the packed row equal the logits of each
    row alone (no token attends across a boundary). Without the position ids they do not: the check
    can see cross-contamination. Training on packed batches counts 0% padding."""
    import torch

    from distilflow.training.throughput import throughput

    trainer = trainer_for(tiny_qwen3, tmp_path, packing=True, max_length=256, max_steps=2)
    batch = first_batch(trainer)
    ids, positions = batch["input_ids"], batch["position_ids"]
    assert "attention_mask" not in batch and ids.shape[0] == 1
    starts = (positions[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
    assert len(starts) >= 3  # at least two rows packed into the sequence
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        alone = torch.cat(
            [
                model(input_ids=ids[:, a:b], use_cache=False).logits[0]
                for a, b in zip(starts, starts[1:], strict=False)
            ]
        )
        mixed = model(input_ids=ids, use_cache=False).logits[0]
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)
    assert (mixed - alone).abs().max() > 1e-2
    trainer.model.train()
    trainer.train()
    found = throughput(trainer)
    assert found["padding_share"] == 0.0 and found["tokens_trained"] > 0
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)


def test_liger_is_off_on_a_cpu_and_says_so(tiny_qwen3, tmp_path, capsys):
    trainer = trainer_for(tiny_qwen3, tmp_path, use_liger_kernel=True)
    assert trainer.args.use_liger_kernel is False
    assert "[sft] use_liger_kernel: off on a CPU" in capsys.readouterr().out


# ---- on a GPU ----


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


def long_examples(n: int) -> list[SftExample]:
    text = " ".join(["We add the numbers and check each step."] * 8)
    return [
        SftExample(
            id=f"g{i}",
            messages=[Message(role="user", content=f"Q{i}?"), Message(role="assistant", content=text)],
        )
        for i in range(n)
    ]


@pytest.mark.gpu
def test_no_sync_inside_a_step_on_gpu(tiny_qwen3, tmp_path):
    """On a GPU, with CUDA's sync debug mode on: every synchronizing call inside a training step (from
    step begin to step end) comes from transformers' own attention-mask check, none from the Trainer,
    TRL or distilflow."""
    import warnings

    torch = _cuda()
    from transformers import TrainerCallback

    trainer = trainer_for(tiny_qwen3, tmp_path, max_steps=8, logging_steps=4, per_device_train_batch_size=2)

    class Debug(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.set_sync_debug_mode("warn")

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.set_sync_debug_mode(0)

    trainer.add_callback(Debug())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    foreign = [f"{w.filename}:{w.lineno}" for w in syncs if "masking_utils" not in w.filename]
    assert foreign == [], foreign
    assert next(trainer.model.parameters()).is_cuda


@pytest.mark.gpu
def test_liger_kernel_on_gpu(tiny_qwen3, tmp_path):
    """use_liger_kernel=true on a GPU: Liger's RMSNorm replaces the model's own, training still learns."""
    _cuda()
    pytest.importorskip("liger_kernel")
    trainer = trainer_for(tiny_qwen3, tmp_path, use_liger_kernel=True, max_steps=20)
    trainer.train()
    norms = {type(m).__name__ for m in trainer.model.modules() if "RMSNorm" in type(m).__name__}
    assert any(n.startswith("Liger") for n in norms), norms
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0] * 0.7


@pytest.mark.gpu
def test_packed_rows_do_not_see_each_other_on_gpu(tiny_qwen3, tmp_path):
    """packing=true on a GPU (flash-attention's varlen kernel when installed, else sdpa): packed logits
    equal each row's alone, within bf16 tolerance."""
    torch = _cuda()
    trainer = trainer_for(tiny_qwen3, tmp_path, packing=True, max_length=256, max_steps=1)
    batch = {k: v.cuda() if hasattr(v, "cuda") else v for k, v in first_batch(trainer).items()}
    ids, positions = batch["input_ids"], batch["position_ids"]
    starts = (positions[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
    model = trainer.model.cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0].float()
        alone = torch.cat(
            [
                model(input_ids=ids[:, a:b], use_cache=False).logits[0].float()
                for a, b in zip(starts, starts[1:], strict=False)
            ]
        )
    torch.testing.assert_close(packed, alone, rtol=3e-2, atol=3e-2)
    if os.environ.get("DISTILFLOW_EXPECT_FLASH"):
        assert trainer.model.config._attn_implementation == "flash_attention_2"
