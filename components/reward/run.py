"""The `reward` stage: a Bradley-Terry reward model trained with TRL's ``RewardTrainer``."""

from __future__ import annotations

import random
import tempfile
from typing import Any

from distilflow import records
from distilflow import uri as uris
from distilflow.components.reward.config import RewardConfig, RewardResult
from distilflow.errors import ConfigError
from distilflow.outputs import StageOutput

STAGE = "reward"


def split_heldout(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """``(train, heldout)``: a seeded random ``fraction`` held out, at least one pair when fraction > 0."""
    if fraction <= 0 or len(rows) < 2:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_held = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    held = set(order[:n_held])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def pairwise_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float | None:
    """Fraction of rows whose score(prompt+chosen) > score(prompt+rejected), tokenized as TRL trains.

    Sequences are scored one at a time so padding cannot shift a score; ties count as wrong.
    """
    import torch

    if not rows:
        return None
    was_training = model.training
    model.eval()
    wins = 0
    with torch.no_grad():
        for row in rows:
            scores = []
            for side in ("chosen", "rejected"):
                ids = tokenizer.apply_chat_template(
                    row["prompt"] + row[side], tokenize=True, return_dict=True
                )
                input_ids = torch.tensor([ids["input_ids"]], device=model.device)
                scores.append(model(input_ids=input_ids).logits[0, 0].item())
            wins += scores[0] > scores[1]
    model.train(was_training)
    return wins / len(rows)


def run(config: RewardConfig) -> RewardResult:
    """Train a scalar reward model on preference pairs and save it with its tokenizer to ``<output_uri>/model``.

    Reads ``preference.jsonl`` from curate's finished output (or a JSONL file), drops and counts pairs
    longer than ``max_length``, holds out ``heldout_fraction`` of the rest, trains
    ``AutoModelForSequenceClassification(num_labels=1)`` with the pairwise (Bradley-Terry) loss and
    reports pairwise accuracy on the training pairs (before and after) and on the held-out pairs.

    It does not use per-pair margins, ensemble several heads, or resume from a mid-training checkpoint
    (a rerun of a finished output returns the stored result).
    """
    out = StageOutput(config.output_uri, STAGE)
    stored = out.reusable(config)
    if stored is not None:
        print(f"[{STAGE}] reusing finished output {out.uri}", flush=True)
        return RewardResult.model_validate(stored["result"])

    from datasets import Dataset
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    from distilflow import training
    from distilflow.models import load_tokenizer, resolve_model

    data_file, _ = training.resolve_data(config.data_uri, "preference.jsonl", "reward data")
    pairs = records.read_jsonl(data_file, records.PreferencePair)
    out.begin(config)

    model_path = resolve_model(config.model)
    tokenizer = load_tokenizer(model_path)
    kept, dropped = training.preference_rows(pairs, tokenizer, config.max_length)
    rows = [row for _, row in kept]
    if not rows:
        raise ConfigError(
            f"reward: all {len(pairs)} pairs of {data_file} are longer than max_length={config.max_length} "
            "tokens; raise reward.max_length"
        )
    train_rows, held_rows = split_heldout(rows, config.heldout_fraction, config.seed)
    print(
        f"[{STAGE}] {len(train_rows)} pairs to train, {len(held_rows)} held out, {dropped} dropped",
        flush=True,
    )

    args = training.training_arguments(
        TrlRewardConfig,
        config,
        tempfile.mkdtemp(prefix="distilflow-reward-"),
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
    )
    # A string model lets TRL load it as AutoModelForSequenceClassification(num_labels=1): a causal LM
    # folder gets a fresh scalar head, a reward folder keeps its own.
    trainer = RewardTrainer(
        model=model_path, args=args, train_dataset=Dataset.from_list(train_rows), processing_class=tokenizer
    )
    training.quiet_trainer(trainer, STAGE)
    accuracy_before = pairwise_accuracy(trainer.model, tokenizer, train_rows)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)

    first, final = training.first_last(training.logged(trainer.state.log_history, "loss"))
    result = RewardResult(
        model_uri=uris.join(out.uri, "model"),
        first_loss=first,
        final_loss=final,
        train_accuracy_before=accuracy_before,
        train_accuracy=pairwise_accuracy(model, tokenizer, train_rows),
        heldout_accuracy=pairwise_accuracy(model, tokenizer, held_rows),
        steps=trainer.state.global_step,
        rows_used=len(train_rows),
        rows_heldout=len(held_rows),
        rows_dropped=dropped,
    )
    print(
        f"[{STAGE}] pairwise accuracy: train {result.train_accuracy_before:.3f} -> {result.train_accuracy:.3f}, "
        f"held-out {result.heldout_accuracy}",
        flush=True,
    )
    card = training.model_card(
        STAGE,
        config.model,
        data_file,
        result.model_dump(),
        config.to_dict(),
        "AutoModelForSequenceClassification",
    )
    training.save_trained(trainer, result.model_uri, card)
    out.finish(
        result=result.model_dump(),
        inputs={"data": data_file, "model": config.model},
        outputs={"model": result.model_uri},
        counts={
            "rows_read": len(pairs),
            "rows_used": len(train_rows),
            "rows_heldout": len(held_rows),
            "rows_dropped": dropped,
        },
        metrics={
            "first_loss": first,
            "final_loss": final,
            "train_accuracy_before": result.train_accuracy_before,
            "train_accuracy": result.train_accuracy,
            "heldout_accuracy": result.heldout_accuracy,
            "steps": result.steps,
        },
    )
    return result
