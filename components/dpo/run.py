"""The `dpo` stage: preference optimisation with TRL's ``DPOTrainer``, with CogPO's per-sample beta."""

from __future__ import annotations

from typing import Any

from distilflow import records, tracking
from distilflow import uri as uris
from distilflow.components.dpo.config import DpoConfig, DpoResult
from distilflow.errors import ConfigError
from distilflow.outputs import StageOutput
from distilflow.prompts import recorded_prompt

STAGE = "dpo"


def build_rows(
    pairs: list[records.PreferencePair], tokenizer: Any, config: DpoConfig
) -> tuple[list[dict[str, Any]], int, bool]:
    """Conversational rows for TRL, the number dropped for length, and whether per-pair betas are used.

    A pair is dropped when prompt+chosen or prompt+rejected renders longer than ``max_length`` tokens
    (TRL would truncate it). With per-pair betas, every row gets a ``beta`` column; pairs without one
    take ``config.beta``.
    """
    from distilflow.training.data import preference_rows

    kept, dropped = preference_rows(pairs, tokenizer, config.max_length)
    use_beta = config.per_sample_beta and any(p.beta is not None for p, _ in kept)
    rows = []
    for pair, row in kept:
        if use_beta:
            row["beta"] = float(pair.beta if pair.beta is not None else config.beta)
        rows.append(row)
    return rows, dropped, use_beta


def trainer_class() -> tuple[type, type]:
    """``DPOTrainer`` and its collator, extended to apply a per-pair beta (CogPO).

    TRL 1.16's DPO loss multiplies by the scalar ``self.beta``; every use is elementwise over the
    batch, so a ``[batch]`` tensor of betas gives each pair its own beta. The collator carries the
    ``beta`` column into the batch, and ``compute_loss`` swaps it in for one step. Rows without a
    ``beta`` column train exactly as plain DPO.
    """
    from dataclasses import dataclass

    import torch
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    @dataclass
    class BetaCollator(DataCollatorForPreference):
        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = super().torch_call(examples)
            if "beta" in examples[0]:
                batch["beta"] = torch.tensor([float(e["beta"]) for e in examples], dtype=torch.float32)
            return batch

    class CogPOTrainer(DPOTrainer):
        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if "beta" not in self._signature_columns:  # else the Trainer drops the column as unused
                self._signature_columns = [*self._signature_columns, "beta"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            beta = inputs.pop("beta", None)
            if beta is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            default, self.beta = self.beta, beta
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                self.beta = default

    return CogPOTrainer, BetaCollator


def make_trainer(
    config: DpoConfig, rows: list[dict[str, Any]], tokenizer: Any, model_path: str, ref_model: Any = None
) -> Any:
    """Build the trainer.

    ``ref_model`` (a model or a local model folder) is the frozen reference; None makes TRL use the
    start model: a second frozen copy for full fine-tuning, or the policy with its adapter switched
    off with LoRA (no copy).
    """
    from datasets import Dataset
    from trl import DPOConfig

    from distilflow.training.arguments import lora_config, on_gpu, training_arguments
    from distilflow.training.callbacks import quiet_trainer
    from distilflow.training.checkpointing import scratch_dir
    from distilflow.training.kernels import liger_arguments
    from distilflow.training.throughput import count_tokens

    trainer_cls, collator_cls = trainer_class()
    args = training_arguments(
        DPOConfig,
        config,
        scratch_dir(STAGE, config.output_uri),
        beta=config.beta,
        loss_type=[config.loss_type],
        max_length=config.max_length,
        **liger_arguments(config.use_liger_kernel, model_path, STAGE, on_gpu()),
    )
    if isinstance(ref_model, str):
        # loaded after the arguments exist, so that under ZeRO-3 it is partitioned as it loads
        from transformers import AutoModelForCausalLM

        ref_model = AutoModelForCausalLM.from_pretrained(ref_model, **(args.model_init_kwargs or {}))
    peft_config = lora_config(config)
    collator = collator_cls(pad_token_id=tokenizer.pad_token_id, max_length=config.max_length)
    trainer = trainer_cls(
        model=model_path,
        ref_model=ref_model,
        args=args,
        data_collator=collator,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    count_tokens(trainer, STAGE)
    return quiet_trainer(trainer, STAGE)


def run(config: DpoConfig) -> DpoResult:
    """Optimise the policy on preference pairs and save it with its tokenizer to ``<output_uri>/model``.

    Reads ``preference.jsonl`` (``PreferencePair`` rows, conversational prompt/chosen/rejected) from
    curate's finished output (or a JSONL file), drops and counts pairs longer than ``max_length``,
    and trains with DPO against ``ref_model`` (default: the start model; with LoRA the policy with its
    adapter off). Pairs carrying ``beta`` are weighted with their own beta (CogPO) unless
    ``per_sample_beta`` is off.

    Every ``save_steps`` steps a checkpoint goes to ``<output_uri>/checkpoints``; a rerun of an
    unfinished output with the same config continues from the newest complete one (a rerun of a
    finished output returns the stored result). Loss, reward margin and accuracy and learning-rate
    curves go to ``<output_uri>/report.html``. With ``processes`` > 1 it starts itself under
    ``torchrun`` (see the sft stage); with ``launcher: trainjob`` or ``dlc`` a job of ``nodes`` nodes
    trains and this process waits for its result. With ``rank`` (rank-DPO) it builds the pairs itself
    from curate's SFT examples, the start model's own answers rejected (``rank.py``). It does not
    precompute reference log-probabilities or sync the reference model.
    """
    from distilflow.launch import dispatch, torchrun
    from distilflow.training.data import read_rows

    # many nodes: a TrainJob or a PAI-DLC job trains, this process waits for its result
    launched = dispatch(STAGE, config)
    if launched is not None:
        return DpoResult.model_validate(launched)
    out = StageOutput(config.output_uri, STAGE)
    stored = out.reusable(config)
    if stored is not None:
        print(f"[{STAGE}] reusing finished output {out.uri}", flush=True)
        return DpoResult.model_validate(stored["result"])

    if config.rank is None:
        pairs, built = read_rows(config.data_uri, "preference", records.PreferencePair, "dpo data"), None
    else:  # rank-DPO: the student answers first (cached, so processes under torchrun only read them)
        built = rank_pairs(config, out)
        pairs = built.pairs
    if torchrun.needs_launch(config):  # several GPUs: one process each, under torchrun
        return DpoResult.model_validate(torchrun.launch(STAGE, config))
    was_complete = out.is_complete()
    out.begin(config)
    with tracking.training_run(config, STAGE, out.uri):  # MLflow / TensorBoard / W&B, when asked for
        return train(config, out, pairs, was_complete, built)


def rank_pairs(config: DpoConfig, out: StageOutput) -> Any:
    """Rank-DPO pairs (``rank.build``) from curate's SFT examples, also written to ``rank_pairs.jsonl``."""
    from distilflow.components.dpo import rank
    from distilflow.models import resolve_model
    from distilflow.training.data import read_rows

    examples = read_rows(config.data_uri, "sft", records.SftExample, "dpo.rank data")
    built = rank.build(config, resolve_model(config.model), examples, out.path("cache"))
    records.write_jsonl(rank.pairs_file(out.uri), built.pairs)
    return built


def train(
    config: DpoConfig,
    out: StageOutput,
    pairs: list[records.PreferencePair],
    was_complete: bool = False,
    built: Any = None,
) -> DpoResult:
    """The training part of ``run``: rows, trainer, training, then the result, model, report and
    manifest (heavy imports live here)."""
    from distilflow.models import load_tokenizer, resolve_model
    from distilflow.training.checkpointing import train_resumable
    from distilflow.training.data import without_template_tokens

    data_file = config.data_uri
    model_path = resolve_model(config.model)
    tokenizer = load_tokenizer(model_path)
    read = len(pairs)
    pairs, rejected = without_template_tokens(pairs, STAGE)
    if not pairs:
        raise ConfigError(
            f"dpo: every pair of {data_file} holds chat-template control tokens; clean the data"
        )
    rows, dropped, use_beta = build_rows(pairs, tokenizer, config)
    print(f"[{STAGE}] {len(rows)} pairs, {dropped} dropped (> {config.max_length} tokens)", flush=True)
    if not rows:
        raise ConfigError(
            f"dpo: all {len(pairs)} pairs of {data_file} are longer than max_length={config.max_length} tokens; "
            "raise dpo.max_length"
        )
    ref_path = resolve_model(config.ref_model) if config.ref_model else None
    trainer = make_trainer(config, rows, tokenizer, model_path, ref_path)
    start_step = train_resumable(trainer, out.uri, config, STAGE, was_complete)
    result = result_of(trainer, out, config, (read, len(rows), dropped, rejected), use_beta, start_step)
    if built is not None:
        update = {
            "rank_pairs": len(built.pairs),
            "rank_ties": built.ties,
            "student_accuracy": built.student_accuracy,
        }
        result = result.model_copy(update=update)
    betas = [row["beta"] for row in rows] if use_beta else [config.beta]
    publish(trainer, out, config, result, {"beta_min": min(betas), "beta_max": max(betas)})
    return result


def result_of(
    trainer: Any,
    out: StageOutput,
    config: DpoConfig,
    rows: tuple[int, int, int, int],
    use_beta: bool,
    start_step: int,
) -> DpoResult:
    """What the run produced, read from the trainer's log; ``rows`` is (read, used, dropped, rejected)."""
    from distilflow.training.report import first_last, logged
    from distilflow.training.throughput import throughput

    history = trainer.state.log_history
    first, final = first_last(logged(history, "loss"))
    read, used, dropped, rejected = rows
    return DpoResult(
        model_uri=uris.join(out.uri, "model"),
        first_loss=first,
        final_loss=final,
        final_reward_accuracy=first_last(logged(history, "rewards/accuracies"))[1],
        steps=trainer.state.global_step,
        rows_read=read,
        rows_used=used,
        rows_dropped=dropped,
        rows_rejected=rejected,
        per_sample_beta=use_beta,
        final_reward_margin=first_last(logged(history, "rewards/margins"))[1],
        resumed_from_step=start_step or None,
        seed=config.seed,
        **throughput(trainer),
    )


def publish(
    trainer: Any, out: StageOutput, config: DpoConfig, result: DpoResult, betas: dict[str, float]
) -> None:
    """Save the model with its card, write the report, then the manifest (``betas``: the smallest and
    largest beta trained with)."""
    from distilflow.training.report import write_report
    from distilflow.training.save import lineage, model_card, save_trained

    card = model_card(
        STAGE,
        config.model,
        config.data_uri,
        result.model_dump(),
        config.to_dict(),
        origin=lineage(config.data_uri),
    )
    save_trained(trainer, result.model_uri, card)
    keys = ("loss", "rewards/margins", "rewards/accuracies", "learning_rate")
    report = write_report(out.uri, STAGE, trainer.state.log_history, keys, result.model_dump())
    out.finish(
        result,
        inputs={"data": config.data_uri, "model": config.model},
        outputs={"model": result.model_uri, "report": report, **tracking.published(result)}
        | ({"rank_pairs": uris.join(out.uri, "rank_pairs.jsonl")} if config.rank else {}),
        metrics=betas,
        student_prompt=recorded_prompt(config.data_uri),
    )
