"""The `reward` stage on tiny models on CPU: pairwise accuracy goes up on separable pairs, held-out is measured."""

from __future__ import annotations

import json
import os

import pytest

from distilflow import uri as uris
from distilflow.components.reward.config import RewardConfig
from distilflow.errors import IncompleteOutputError
from distilflow.outputs import MANIFEST, MARKER
from distilflow.records import Message, PreferencePair
from tests.conftest import curate_output


def separable_pairs(n: int = 12) -> list[PreferencePair]:
    """Chosen always states a boxed answer, rejected is always the same filler: trivially separable."""
    return [
        PreferencePair(
            id=f"p{i}",
            prompt=[Message(role="user", content=f"What is {i} + 1?")],
            chosen=[Message(role="assistant", content=f"The answer is \\boxed{{{i + 1}}}.")],
            rejected=[Message(role="assistant", content="The quick brown fox jumps over the lazy dog.")],
        )
        for i in range(n)
    ]


def config(model: str, data_uri: str, output_uri: str, **overrides) -> RewardConfig:
    base = dict(
        output_uri=output_uri,
        data_uri=data_uri,
        model=model,
        max_steps=12,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_length=128,
        logging_steps=1,
        heldout_fraction=0.25,
    )
    base.update(overrides)
    return RewardConfig(**base)


def test_reward_from_causal_lm_learns_and_reuses(tiny_qwen3, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distilflow.components.reward.run import run

    data = curate_output(str(tmp_path), "preference.jsonl", separable_pairs(12))
    cfg = config(tiny_qwen3, data, str(tmp_path / "reward"))
    result = run(cfg)

    assert result.rows_used == 9 and result.rows_heldout == 3 and result.rows_dropped == 0
    assert result.final_loss < result.first_loss
    assert result.train_accuracy >= result.train_accuracy_before
    assert result.train_accuracy >= 0.9, result
    assert 0.0 <= result.heldout_accuracy <= 1.0
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))
    assert manifest["metrics"]["heldout_accuracy"] == result.heldout_accuracy
    assert os.path.exists(os.path.join(cfg.output_uri, MARKER))

    # The saved model is a one-label classifier that scores a chosen answer above the filler
    model = AutoModelForSequenceClassification.from_pretrained(result.model_uri)
    tokenizer = AutoTokenizer.from_pretrained(result.model_uri)
    assert model.config.num_labels == 1 and tokenizer.chat_template
    pair = separable_pairs(1)[0]

    def score(reply: list[Message]) -> float:
        messages = [m.model_dump(exclude_none=True) for m in pair.prompt + reply]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    assert score(pair.chosen) > score(pair.rejected)

    again = run(cfg)
    assert again == result
    assert (
        json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))["finished_at"]
        == manifest["finished_at"]
    )


def test_reward_component_from_reward_model(tiny_reward, tmp_path):
    """The component body trains from a sequence-classification folder and publishes URI and metrics."""
    from kfp import dsl

    from distilflow.components.reward.component import reward

    data = curate_output(str(tmp_path), "preference.jsonl", separable_pairs(6))
    model = dsl.Model(name="model", uri=str(tmp_path / "artifact"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    root = str(tmp_path / "run")
    reward.python_func(
        config={"reward": {"model": tiny_reward, "max_steps": 3, "max_length": 128, "heldout_fraction": 0.3}},
        output_uri=root,
        data=dsl.Dataset(name="data", uri="x", metadata={"uri": data}),
        model=model,
        metrics=metrics,
    )
    assert model.metadata == {
        "uri": os.path.join(root, "reward", "model"),
        "stage_uri": os.path.join(root, "reward"),
    }
    assert metrics.metadata["steps"] == 3
    assert metrics.metadata["rows_heldout"] == 2
    assert 0.0 <= metrics.metadata["heldout_accuracy"] <= 1.0


def test_reward_refuses_incomplete_upstream(tiny_qwen3, tmp_path):
    from distilflow.components.reward.run import run

    data = curate_output(str(tmp_path), "preference.jsonl", separable_pairs(4), complete=False)
    with pytest.raises(IncompleteOutputError):
        run(config(tiny_qwen3, data, str(tmp_path / "reward")))


def test_split_heldout_is_seeded_and_keeps_training_rows():
    from distilflow.components.reward.run import split_heldout

    rows = [{"i": i} for i in range(10)]
    train, held = split_heldout(rows, 0.2, seed=3)
    assert len(train) == 8 and len(held) == 2
    assert sorted(r["i"] for r in train + held) == list(range(10))
    assert split_heldout(rows, 0.2, seed=3) == (train, held)
    assert split_heldout(rows, 0.0, seed=3) == (rows, [])
    assert split_heldout(rows[:2], 0.01, seed=0)[1] != []  # a positive fraction holds out at least one
    assert split_heldout(rows[:1], 0.5, seed=0) == (rows[:1], [])  # never the only pair
