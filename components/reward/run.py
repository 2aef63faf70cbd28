"""The `reward` stage: a Bradley-Terry reward model trained with TRL's ``RewardTrainer``, gated on held-out pairs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from typing import Any

from distilflow import records, sources, tracking
from distilflow import uri as uris
from distilflow.components.reward import report
from distilflow.components.reward.config import RewardConfig, RewardResult
from distilflow.components.reward.pairs import (
    JudgeCounts,
    Pair,
    judge_pairs,
    pairs_from_preference,
    pairs_from_scored,
    scored_rows,
    selection_config,
)
from distilflow.errors import ConfigError, DistilflowError
from distilflow.outputs import StageOutput

STAGE = "reward"
PAIRS = "pairs.jsonl"
"""The pairs this stage trains and evaluates on (after judging), written before training: a rerun or the
processes of a multi-GPU launch read them back instead of judging again."""

PAIR_FIELDS = (
    "data_uri", "model", "pairs_from", "pairs_per_problem", "judge", "judge_mode", "judge_policy", "max_length",
)  # fmt: skip
"""Config fields that decide the pairs (and so whether ``pairs.jsonl`` can be reused)."""


class CalibrationGateError(DistilflowError):
    """The reward model ranks held-out pairs (or labels) worse than the configured threshold."""


# ---------------------------------------------------------------- data


def split_heldout(
    rows: list[Any], fraction: float, seed: int, group: Any = None
) -> tuple[list[Any], list[Any]]:
    """``(train, heldout)``: a seeded random ``fraction`` of the groups held out, at least one when
    fraction > 0 and never all. ``group(row)`` names a row's group (its problem); default: each row alone."""
    keys = [group(r) if group else i for i, r in enumerate(rows)]
    groups = list(dict.fromkeys(keys))
    if fraction <= 0 or len(groups) < 2:
        return list(rows), []
    random.Random(seed).shuffle(groups)
    n_held = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    held = set(groups[:n_held])
    return [r for r, k in zip(rows, keys, strict=True) if k not in held], [
        r for r, k in zip(rows, keys, strict=True) if k in held
    ]


def pairs_fingerprint(config: RewardConfig) -> str:
    data = config.to_dict()
    blob = json.dumps({k: data.get(k) for k in PAIR_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def candidate_pairs(config: RewardConfig) -> tuple[list[Pair], str]:
    """Pairs from curate's output as ``pairs_from`` says, with each problem's CD; and the file read."""
    from distilflow.training.data import read_rows

    folder = None if config.data_uri.rstrip("/").endswith(".jsonl") else config.data_uri
    data_file = config.data_uri
    if config.pairs_from == "scored":
        pairs = pairs_from_scored(scored_rows(data_file), selection_config(folder), config.pairs_per_problem)
        if not pairs:
            raise ConfigError(
                f"reward: {data_file} has no problem with two traces that rank differently, so no pair can be "
                "made; sample more traces per problem (distill.n) or use pairs_from=preference"
            )
        return pairs, data_file
    preference = read_rows(data_file, "preference", records.PreferencePair, "reward data")
    scored = {}
    if folder:
        try:  # the traces' CD for accuracy by CD bin, when curate wrote them
            scored = scored_rows(folder)
        except ConfigError:
            scored = {}
    return pairs_from_preference(preference, scored), data_file


def build_pairs(config: RewardConfig, out: StageOutput) -> tuple[list[Pair], dict[str, Any], str]:
    """The pairs to train and evaluate on, their counts and the data file: read back from ``pairs.jsonl``
    when an earlier attempt with the same data settings wrote it, else built (and judged) and written."""
    path, meta_path = out.path(PAIRS), out.path("pairs.meta.json")
    fingerprint = pairs_fingerprint(config)
    if uris.exists(meta_path) and uris.exists(path):
        meta = json.loads(uris.read_text(meta_path))
        if meta.get("fingerprint") == fingerprint:
            rows = [json.loads(line) for line in uris.read_text(path).splitlines() if line.strip()]
            pairs = [
                Pair(records.PreferencePair.model_validate(r["pair"]), r["cd"], r["source"], r["problem"])
                for r in rows
            ]
            print(f"[{STAGE}] reusing {len(pairs)} pairs from {path}", flush=True)
            return pairs, meta["counts"], meta["data_file"]
    pairs, data_file = candidate_pairs(config)
    counts: dict[str, Any] = {"pairs_read": len(pairs)}
    if config.judge is not None:
        from distilflow.teachers.cache import TeacherCache
        from distilflow.teachers.cached import CachedTeacher

        # every verdict is stored as it arrives: a killed run's rerun asks only for the missing ones
        cache = TeacherCache(config.cache_uri or uris.join(config.output_uri, "cache"))
        judge = CachedTeacher(config.judge, cache)
        try:
            pairs, jc = judge_pairs(pairs, judge, config.judge_mode, config.judge_policy)
        finally:
            judge.close()
        counts.update(judge_counts(jc))
        counts.update(judge_requests=judge.asked, judge_cache_hits=cache.hits)
        print(
            f"[{STAGE}] judge: {jc.judged} pairs in both orders; {jc.inconsistent} inconsistent and "
            f"{jc.unparsed} unparsed dropped; {jc.disagreed} consistent verdicts against curate's order; "
            f"P(first shown wins) {jc.first_rate}",
            flush=True,
        )
        if not pairs:
            raise ConfigError(
                f"reward: the judge kept none of the {jc.judged} pairs ({jc.inconsistent} inconsistent across the "
                f"two orders, {jc.unparsed} unparsed): it may only pick by position. Use a stronger judge, "
                "judge_mode=generate, or no judge"
            )
    lines = [
        json.dumps(
            {"pair": p.pair.model_dump(mode="json"), "cd": p.cd, "source": p.source, "problem": p.problem}
        )
        for p in pairs
    ]
    uris.write_text(path, "\n".join(lines) + "\n")
    meta = {"fingerprint": fingerprint, "counts": counts, "data_file": data_file}
    uris.write_text(meta_path, json.dumps(meta, indent=2))
    return pairs, counts, data_file


def judge_counts(jc: JudgeCounts) -> dict[str, Any]:
    return {
        "pairs_judged": jc.judged,
        "judge_inconsistent": jc.inconsistent,
        "judge_unparsed": jc.unparsed,
        "judge_disagreed": jc.disagreed,
        "judge_first_rate": jc.first_rate,
    }


# ---------------------------------------------------------------- scoring and the gate


def pairwise_scores(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """``(score(prompt+chosen), score(prompt+rejected))`` of each row, tokenized as TRL trains.

    Sequences are scored one at a time so padding cannot shift a score.
    """
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    found = []
    with torch.no_grad():
        for row in rows:
            scores = []
            for side in ("chosen", "rejected"):
                ids = tokenizer.apply_chat_template(
                    row["prompt"] + row[side], tokenize=True, return_dict=True
                )
                input_ids = torch.tensor([ids["input_ids"]], device=device)
                scores.append(model(input_ids=input_ids).logits[0, 0].float().item())
            found.append((scores[0], scores[1]))
    model.train(was_training)
    return found


def pairwise_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float | None:
    """Fraction of rows whose chosen side scores above the rejected one (ties count as wrong)."""
    return accuracy(pairwise_scores(model, tokenizer, rows)) if rows else None


def accuracy(scores: list[tuple[float, float]]) -> float | None:
    return sum(c > r for c, r in scores) / len(scores) if scores else None


def wilson_low(wins: int, n: int, z: float = 1.96) -> float | None:
    """Lower end of the Wilson score interval of a proportion (95% by default)."""
    if n == 0:
        return None
    p = wins / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def bin_label(cd: float | None, edges: list[float]) -> str:
    if cd is None:
        return "unknown"
    last = len(edges) - 2
    for i, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False)):
        if cd < hi or i == last:  # the last bin is closed and takes anything above it
            return f"[{lo:g}, {hi:g}{']' if i == last else ')'}"
    return "unknown"


def by_group(scores: list[tuple[float, float]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Accuracy and pair count of the scores under each label."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for s, label in zip(scores, labels, strict=True):
        groups.setdefault(label, []).append(s)
    return {k: {"accuracy": accuracy(v), "pairs": len(v)} for k, v in groups.items()}


def cd_order(edges: list[float]) -> list[str]:
    return [bin_label((lo + hi) / 2, edges) for lo, hi in zip(edges, edges[1:], strict=False)] + ["unknown"]


def gate_verdict(config: RewardConfig, heldout: float | None, agreement: float | None) -> dict[str, Any]:
    """The calibration gate's figures and verdict (``passed``) and, when it failed, why."""
    failures = []
    if config.min_heldout_accuracy is not None and (heldout is None or heldout < config.min_heldout_accuracy):
        failures.append(
            f"held-out pairwise accuracy {heldout} < min_heldout_accuracy {config.min_heldout_accuracy}"
        )
    if config.min_label_agreement is not None and (
        agreement is None or agreement < config.min_label_agreement
    ):
        failures.append(
            f"agreement with labels_uri {agreement} < min_label_agreement {config.min_label_agreement}"
        )
    return {
        "min_heldout_accuracy": config.min_heldout_accuracy,
        "min_label_agreement": config.min_label_agreement,
        "heldout_accuracy": heldout,
        "label_agreement": agreement,
        "passed": not failures,
        "failures": failures,
    }


# ---------------------------------------------------------------- the stage


def run(config: RewardConfig) -> RewardResult:
    """Train a scalar reward model on preference pairs; publish it to ``<output_uri>/model`` only if it
    passes the calibration gate.

    Pairs come from curate (``pairs_from``: its best-vs-worst ``preference.jsonl`` or more pairs per problem
    from ``scored.jsonl``), ordered by verified correctness, then by RV fit to the problem's CD; an optional
    teacher ``judge`` sees both answers in both orders and labels (or filters) them, dropping and counting
    inconsistent pairs. Pairs longer than ``max_length`` are dropped and counted; whole problems are held
    out (``heldout_fraction``). ``AutoModelForSequenceClassification(num_labels=1)`` (full or LoRA) is
    trained with the Bradley-Terry pairwise loss, with checkpoints and resume as in the sft stage.

    The gate then measures held-out pairwise accuracy (by CD bin and by label source too) and the
    agreement with ``labels_uri``; below ``min_heldout_accuracy`` / ``min_label_agreement`` it raises
    ``CalibrationGateError`` with the figures, writes ``report.html`` and ``gate.json``, deletes the
    checkpoints and marks nothing complete, so no RL stage can start on the model. Otherwise the model,
    the report and the manifest (with the score mean/std that the rl stage standardises with) are written.
    It does not use per-pair margins or ensembles.
    """
    from distilflow.launch import dispatch, torchrun

    # many nodes: a TrainJob or a PAI-DLC job trains, this process waits for its result
    launched = dispatch(STAGE, config)
    if launched is not None:
        return RewardResult.model_validate(launched)
    out = StageOutput(config.output_uri, STAGE)
    stored = out.reusable(config)
    if stored is not None:
        print(f"[{STAGE}] reusing finished output {out.uri}", flush=True)
        return RewardResult.model_validate(stored["result"])

    labels = sources.read_records(config.labels_uri, records.PreferencePair) if config.labels_uri else []
    was_complete = out.is_complete()
    if "LOCAL_RANK" in os.environ:  # under torchrun: the main process builds (and judges) the pairs once
        from accelerate import PartialState

        first = PartialState().main_process_first()
    else:
        first = contextlib.nullcontext()
    with first:
        pairs, counts, data_file = build_pairs(config, out)
    if torchrun.needs_launch(config):  # several GPUs: one process each, under torchrun
        return RewardResult.model_validate(torchrun.launch(STAGE, config))
    out.begin(config)
    with tracking.training_run(config, STAGE, out.uri):  # MLflow / TensorBoard / W&B, when asked for
        return train(config, out, pairs, counts, data_file, labels, was_complete)


@dataclass
class Rows:
    """The pairs as the trainer sees them: trained on, held out (each with its ``Pair``), labelled."""

    train: list[dict[str, Any]]
    held: list[tuple[Pair, dict[str, Any]]]
    labels: list[dict[str, Any]]
    dropped: int
    rejected: int


def train(
    config: RewardConfig,
    out: StageOutput,
    pairs: list[Pair],
    counts: dict[str, Any],
    data_file: str,
    labels: list[records.PreferencePair],
    was_complete: bool,
) -> RewardResult:
    """The training part of ``run``: rows, training, the measurements and the gate, then the model and
    manifest (heavy imports live here)."""
    from distilflow.models import load_tokenizer, resolve_model
    from distilflow.training.checkpointing import scratch_dir, train_resumable

    model_path = resolve_model(config.model)
    tokenizer = load_tokenizer(model_path)
    rows = training_rows(config, pairs, labels, tokenizer, data_file)
    trainer = make_trainer(config, rows.train, tokenizer, model_path, scratch_dir(STAGE, out.uri))
    accuracy_before = pairwise_accuracy(trainer.model, tokenizer, rows.train)
    start_step = train_resumable(trainer, out.uri, config, STAGE, was_complete)
    result = measure(config, out, trainer, tokenizer, rows, counts, (accuracy_before, start_step))
    if trainer.is_world_process_zero():
        page = report.report_page(trainer.state.log_history, result.model_dump())
        uris.write_text(out.path("report.html"), page)
    if not result.gate["passed"]:
        fail_gate(trainer, out, result)
    publish(config, out, trainer, result, counts, data_file)
    return result


def training_rows(
    config: RewardConfig,
    pairs: list[Pair],
    labels: list[records.PreferencePair],
    tokenizer: Any,
    data_file: str,
) -> Rows:
    """Render the pairs (less those with control tokens or too long) and split off whole problems."""
    from distilflow.training.data import preference_rows, without_template_tokens

    clean, rejected = without_template_tokens([p.pair for p in pairs], STAGE)
    kept, dropped = preference_rows(clean, tokenizer, config.max_length)
    meta = {id(p.pair): p for p in pairs}
    items = [(meta[id(pair)], row) for pair, row in kept]
    if not items:
        raise ConfigError(
            f"reward: all {len(pairs)} pairs of {data_file} are longer than max_length={config.max_length} "
            "tokens; raise reward.max_length"
        )
    train_items, held_items = split_heldout(
        items, config.heldout_fraction, config.seed, lambda it: it[0].group
    )
    rows = Rows(
        train=[row for _, row in train_items],
        held=held_items,
        labels=[row for _, row in preference_rows(labels, tokenizer, config.max_length)[0]],
        dropped=dropped,
        rejected=rejected,
    )
    print(
        f"[{STAGE}] {len(rows.train)} pairs to train, {len(rows.held)} held out, {dropped} dropped "
        f"(> {config.max_length} tokens), {len(rows.labels)} labelled pairs to check",
        flush=True,
    )
    return rows


def measure(
    config: RewardConfig,
    out: StageOutput,
    trainer: Any,
    tokenizer: Any,
    rows: Rows,
    counts: dict[str, Any],
    start: tuple[float, int],
) -> RewardResult:
    """The trained model's figures: pairwise accuracies (held out, by CD bin and source, labels), the
    score distribution, the gate's verdict, the training log's losses and the judge's counts. ``start``
    is the training pairs' accuracy before training and the step training began at."""
    from distilflow.training.report import first_last, logged
    from distilflow.training.throughput import throughput

    accuracy_before, start_step = start

    model = trainer.accelerator.unwrap_model(trainer.model)
    held_rows = [row for _, row in rows.held]
    held_scores = pairwise_scores(model, tokenizer, held_rows)
    heldout = accuracy(held_scores)
    agreement = accuracy(pairwise_scores(model, tokenizer, rows.labels))
    evaluated = [s for pair in (held_scores or pairwise_scores(model, tokenizer, rows.train)) for s in pair]
    mean = sum(evaluated) / len(evaluated)
    by_cd = by_group(held_scores, [bin_label(it.cd, config.cd_bins) for it, _ in rows.held])
    first, final = first_last(logged(trainer.state.log_history, "loss"))
    result = RewardResult(
        model_uri=uris.join(out.uri, "model"),
        first_loss=first,
        final_loss=final,
        train_accuracy_before=accuracy_before,
        train_accuracy=pairwise_accuracy(model, tokenizer, rows.train),
        heldout_accuracy=heldout,
        steps=trainer.state.global_step,
        rows_used=len(rows.train),
        rows_heldout=len(held_rows),
        rows_dropped=rows.dropped,
        rows_rejected=rows.rejected,
        heldout_accuracy_low=wilson_low(sum(c > r for c, r in held_scores), len(held_scores)),
        heldout_accuracy_by_cd={k: by_cd[k] for k in cd_order(config.cd_bins) if k in by_cd},
        heldout_accuracy_by_source=by_group(held_scores, [it.source for it, _ in rows.held]),
        label_agreement=agreement,
        label_pairs=len(rows.labels),
        gate=gate_verdict(config, heldout, agreement),
        score_mean=mean,
        score_std=math.sqrt(sum((s - mean) ** 2 for s in evaluated) / len(evaluated)),
        **{
            k: counts.get(k, 0)
            for k in ("pairs_judged", "judge_inconsistent", "judge_unparsed", "judge_disagreed")
        },
        judge_first_rate=counts.get("judge_first_rate"),
        resumed_from_step=start_step or None,
        seed=config.seed,
        **throughput(trainer),
    )
    print(
        f"[{STAGE}] pairwise accuracy: train {result.train_accuracy_before:.3f} -> {result.train_accuracy:.3f}, "
        f"held-out {heldout} (95% low {result.heldout_accuracy_low}), by CD {result.heldout_accuracy_by_cd}, "
        f"labels {agreement}",
        flush=True,
    )
    return result


def publish(
    config: RewardConfig,
    out: StageOutput,
    trainer: Any,
    result: RewardResult,
    counts: dict[str, Any],
    data_file: str,
) -> None:
    """Save the reward model with its card, then write the manifest (``counts``: the pair building's)."""
    from distilflow.training.save import model_card, save_trained

    card = model_card(
        STAGE,
        config.model,
        data_file,
        result.model_dump(),
        config.to_dict(),
        "AutoModelForSequenceClassification",
    )
    save_trained(trainer, result.model_uri, card)
    out.finish(
        result,
        inputs={
            "data": data_file,
            "model": config.model,
            **({"labels": config.labels_uri} if config.labels_uri else {}),
        },
        outputs={
            "model": result.model_uri,
            "report": out.path("report.html"),
            "pairs": out.path(PAIRS),
            **tracking.published(result),
        },
        counts={k: v for k, v in counts.items() if isinstance(v, int)},
        metrics=gate_metrics(result),
    )


def fail_gate(trainer: Any, out: StageOutput, result: RewardResult) -> None:
    """Record the failed gate (``gate.json``), delete checkpoints and scratch, and raise with the figures."""
    from distilflow.training.checkpointing import CHECKPOINTS

    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        uris.write_text(out.path("gate.json"), json.dumps(result.model_dump(), indent=2, default=str))
        # the run is finished, only rejected: a rerun with a new config must start afresh, not resume
        uris.remove(uris.join(out.uri, CHECKPOINTS), recursive=True)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    bins = ", ".join(
        f"{k} {v['accuracy']:.3f} ({v['pairs']})" for k, v in result.heldout_accuracy_by_cd.items()
    )
    raise CalibrationGateError(
        f"reward: calibration gate failed: {'; '.join(result.gate['failures'])} "
        f"(held-out {result.rows_heldout} pairs, 95% low {result.heldout_accuracy_low}; by CD bin: {bins or 'n/a'}; "
        f"train accuracy {result.train_accuracy:.3f}). Nothing was published and the stage is not complete; "
        f"see {out.path('report.html')}. Fix the data (more or cleaner pairs, a judge), train longer, or lower "
        "reward.min_heldout_accuracy"
    )


def trainer_class() -> type:
    """TRL's ``RewardTrainer`` with nothing read back to the host in a step that does not log.

    TRL 1.16 computes the same Bradley-Terry loss, ``-log sigmoid(r_chosen - r_rejected)`` (plus
    ``center_rewards_coefficient * mean((r_chosen + r_rejected)^2)``), but reads the token count and the
    min/mean/max reward, accuracy and margin back to the host in every ``compute_loss`` (six syncs a
    micro-batch). Here accuracy, margin and mean reward stay on the device (``DeviceMeans``) until the
    trainer logs; evaluation goes through TRL's own ``compute_loss``.
    """
    from torch import nn
    from trl import RewardTrainer

    from distilflow.training.lean import DeviceMeans

    class LeanRewardTrainer(RewardTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.device_means = DeviceMeans()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            required = inputs.pop("margin", None)  # a pair's required margin, when the rows carry one
            outputs = model(**inputs)
            chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
            diff = chosen - rejected
            loss = -nn.functional.logsigmoid(diff if required is None else diff - required).mean()
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
            diff = diff.detach()
            self.device_means.add("accuracy", (diff > 0).float().mean())
            self.device_means.add("margin", diff.mean())
            self.device_means.add("mean_reward", outputs.logits.detach().mean())
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.model.training:
                gather = self.accelerator.gather if self.accelerator.num_processes > 1 else None
                logs.update(self.device_means.pop(gather))
            super().log(logs, start_time)

    return LeanRewardTrainer


def make_trainer(
    config: RewardConfig, rows: list[dict[str, Any]], tokenizer: Any, model_path: str, scratch: str
) -> Any:
    from datasets import Dataset
    from trl import RewardConfig as TrlRewardConfig

    from distilflow.training.arguments import lora_config, on_gpu, training_arguments
    from distilflow.training.callbacks import quiet_trainer
    from distilflow.training.kernels import liger_arguments
    from distilflow.training.throughput import count_tokens

    args = training_arguments(
        TrlRewardConfig,
        config,
        scratch,
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
        **liger_arguments(config.use_liger_kernel, model_path, STAGE, on_gpu()),
    )
    peft_config = lora_config(config, "SEQ_CLS")
    # A string model lets TRL load it as AutoModelForSequenceClassification(num_labels=1): a causal LM
    # folder gets a fresh scalar head, a reward folder keeps its own.
    trainer = trainer_class()(
        model=model_path,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    count_tokens(trainer, STAGE)
    return quiet_trainer(trainer, STAGE)


def gate_metrics(result: RewardResult) -> dict[str, float]:
    """Metrics beyond the result's own (``METRIC`` fields): the gate's verdict as 1/0 and the held-out
    accuracy of each CD bin."""
    found = {"gate_passed": 1.0 if result.gate.get("passed") else 0.0}
    for name, cell in result.heldout_accuracy_by_cd.items():
        if cell.get("accuracy") is not None:
            found[f"heldout_accuracy_cd_{name.strip('[]()').replace(', ', '_')}"] = cell["accuracy"]
    return found
