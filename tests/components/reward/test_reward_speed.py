"""The reward stage's step reads nothing back to the host between logs (issue 22), and the values it
logs from the device (accuracy, margin, mean reward) and its loss are the Bradley-Terry figures of the
model's own scores."""

from __future__ import annotations

import shutil

import pytest

from distilflow.components.reward.config import RewardConfig
from tests.components.reward.test_reward import carry_pairs
from tests.host_reads import host_reads


def lean_trainer(model: str, tmp_path, **overrides):
    from distilflow.components.reward.run import make_trainer
    from distilflow.models import load_tokenizer
    from distilflow.training.data import preference_rows

    tokenizer = load_tokenizer(model)
    settings = dict(
        output_uri=str(tmp_path / "reward"),
        data_uri="/unused.jsonl",
        model=model,
        max_steps=8,
        logging_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        save_steps=0,
        max_length=256,
    )
    cfg = RewardConfig(**{**settings, **overrides})
    rows = [row for _, row in preference_rows(carry_pairs(8), tokenizer, cfg.max_length)[0]]
    return make_trainer(cfg, rows, tokenizer, model, str(tmp_path / "scratch")), tokenizer, rows


def test_no_host_read_inside_a_step_between_logs(tiny_reward, tmp_path):
    from distilflow.training.throughput import throughput

    trainer, _, _ = lean_trainer(tiny_reward, tmp_path)
    reads = host_reads(trainer)
    with reads:
        trainer.train()
    assert reads.reads["step"] == 0, reads.where
    logged = [e for e in trainer.state.log_history if "accuracy" in e]
    assert [e["step"] for e in logged] == [1, 4, 8] and all(0 <= e["accuracy"] <= 1 for e in logged)
    assert throughput(trainer)["tokens_trained"] > 0
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)


def test_logged_figures_are_those_of_the_model_scores(tiny_reward, tmp_path):
    """One compute_loss on a batch of 4 pairs: the loss is -mean(log sigmoid(r_c - r_r)), and the
    device means popped at the next log are the accuracy, margin and mean reward of the same scores,
    computed here pair by pair with the stage's scorer (one sequence at a time, no padding)."""
    import math

    import torch

    from distilflow.components.reward.run import pairwise_scores

    trainer, tokenizer, rows = lean_trainer(tiny_reward, tmp_path, per_device_train_batch_size=4)
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    n = batch["input_ids"].shape[0] // 2
    chosen_ids = [
        ids[m.bool()].tolist()
        for ids, m in zip(batch["input_ids"][:n], batch["attention_mask"][:n], strict=True)
    ]
    order = []
    for ids in chosen_ids:  # which rows the shuffled batch holds: match by their tokens
        for i, row in enumerate(rows):
            rendered = tokenizer.apply_chat_template(
                row["prompt"] + row["chosen"], tokenize=True, return_dict=True
            )
            if rendered["input_ids"] == ids:
                order.append(i)
                break
    assert len(order) == n
    scores = pairwise_scores(trainer.model, tokenizer, [rows[i] for i in order])
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    diffs = [c - r for c, r in scores]
    expected = -sum(math.log(1 / (1 + math.exp(-d))) for d in diffs) / n
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    means = trainer.device_means.pop()
    assert means["accuracy"] == pytest.approx(sum(d > 0 for d in diffs) / n)
    assert means["margin"] == pytest.approx(sum(diffs) / n, rel=1e-4, abs=1e-5)
    assert means["mean_reward"] == pytest.approx(sum(c + r for c, r in scores) / (2 * n), rel=1e-4, abs=1e-5)
    assert trainer.device_means.pop() == {}
