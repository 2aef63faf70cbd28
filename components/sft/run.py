"""The `sft` stage: supervised fine-tuning of the student with TRL's ``SFTTrainer``."""

from __future__ import annotations

from typing import Any

from distilflow import records, tracking
from distilflow import uri as uris
from distilflow.components.sft.config import SftConfig, SftResult
from distilflow.errors import ConfigError
from distilflow.outputs import StageOutput
from distilflow.prompts import recorded_prompt

STAGE = "sft"


def build_rows(
    examples: list[records.SftExample], tokenizer: Any, max_length: int, chat_template: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Conversational rows for TRL and how many examples were dropped for being too long.

    Each row renders with the student's own chat template; ``enable_thinking`` travels per row in
    ``chat_template_kwargs``, which TRL forwards to ``apply_chat_template``. Reasoning goes where the
    template expects it: ``reasoning_content`` for templates that place it (Qwen3: the ``<think>``
    block), folded into the content as ``<think>...</think>`` for templates that ignore it (Qwen2.5),
    and left out of rows with ``enable_thinking=false`` (they teach answering without thinking).
    Lengths are measured the same way TRL tokenizes (``chat_template`` is the one TRL uses, None for
    the tokenizer's own), so no kept row is truncated.
    """
    from distilflow.training.data import chat_length, message_dicts, renders_reasoning

    rows: list[dict[str, Any]] = []
    dropped = 0
    with_thinking = any(ex.enable_thinking is not None for ex in examples)
    fold = not renders_reasoning(chat_template or tokenizer.chat_template)
    for ex in examples:
        messages = message_dicts(ex.messages, fold_reasoning=fold, drop_reasoning=ex.enable_thinking is False)
        kwargs = {"enable_thinking": ex.enable_thinking} if ex.enable_thinking is not None else {}
        if chat_length(tokenizer, messages, chat_template=chat_template, **kwargs) > max_length:
            dropped += 1
            continue
        row: dict[str, Any] = {"messages": messages}
        if with_thinking:
            # one column schema for all rows; None leaves the template's default (thinking on for Qwen3)
            row["chat_template_kwargs"] = {"enable_thinking": ex.enable_thinking}
        rows.append(row)
    return rows, dropped


def training_template(tokenizer: Any, config: SftConfig) -> str | None:
    """The chat template TRL will render with: None for the student's own, or TRL's training variant.

    Assistant-only loss needs ``{% generation %}`` markers. TRL swaps in a patched copy of known
    templates (Qwen2.5, Qwen3, Llama 3, ...) that lack them; for any other template, fail early with
    the fix instead of deep inside the trainer.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if not config.assistant_only_loss or has_generation_markers(tokenizer.chat_template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        raise ConfigError(
            f"sft.assistant_only_loss=true needs a chat template with {{% generation %}} markers around assistant "
            f"turns; the template of {config.model} has none and TRL has no training variant of it. Set "
            "sft.assistant_only_loss=false or give the student a template that marks assistant tokens"
        ) from None


def trainer_class(curriculum: bool) -> type:
    """``SFTTrainer`` with a step as lean as a bare loop, and in dataset order when ``curriculum`` is on.

    TRL 1.16's ``SFTTrainer`` computes entropy and token accuracy of every token in its fused LM head and
    reads them, and the batch's token count, back to the host in every ``compute_loss`` (three syncs a
    micro-batch). This subclass asks the fused head for the log-probabilities alone and computes the
    same loss, ``-sum(log p) / tokens`` (``num_items_in_batch`` when the Trainer counts over the
    accumulated micro-batches), with nothing read back; the logged loss, grad norm and learning rate
    come from the Trainer as before, and ``distilflow.training.throughput`` counts the tokens on the
    device. Options TRL computes differently (a custom loss function, label smoothing, DFT, MoE aux loss,
    sequence parallelism) and evaluation go through TRL's own ``compute_loss``.

    The Trainer shuffles with a ``RandomSampler``; curate writes ``sft.jsonl`` in curriculum order
    (easy to hard), which a shuffle would undo. A ``SequentialSampler`` keeps it (with several
    processes, accelerate deals consecutive batches out to the ranks, so the global order stays).
    """
    import torch
    from trl import SFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    class LeanSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            add_fused_lm_head(model, outputs=("log_probs",))  # no entropy, no top-1 flags
            parallel = self.accelerator.parallelism_config
            self.lean_loss = (
                self.compute_loss_func is None
                and self.label_smoother is None
                and self.args.loss_type in ("nll", "chunked_nll")
                and not self.aux_loss_enabled
                and not (parallel is not None and parallel.sp_enabled)
            )

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not self.lean_loss or not self.model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -outputs.log_probs.sum() / torch.as_tensor(tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every rank's tokens and DDP averages the gradients over ranks
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return loss

    if not curriculum:
        return LeanSFTTrainer

    class CurriculumSFTTrainer(LeanSFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            from torch.utils.data import SequentialSampler

            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return SequentialSampler(dataset)

    return CurriculumSFTTrainer


def attention(config: SftConfig, gpu: bool) -> str | None:
    """The ``attn_implementation`` to load the student with: the config's, else flash-attention's varlen
    kernel for packed rows on a GPU where ``flash_attn`` is installed, else transformers' default (sdpa).

    Packed (padding-free) rows carry position ids that restart at 0 for every row; transformers 5.17
    keeps the rows apart with them under every kernel: flash-attention's varlen kernel takes the row
    boundaries, sdpa, eager and flex_attention a block-diagonal causal mask.
    """
    import importlib.util

    if config.attn_implementation:
        return config.attn_implementation
    if config.packing and gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def make_trainer(
    config: SftConfig, rows: list[dict[str, Any]], tokenizer: Any, model_path: str, scratch: str
) -> Any:
    """The SFT trainer for ``rows`` (checkpoints, when enabled, go to ``scratch`` first); it counts the
    tokens it trains on (``distilflow.training.throughput``)."""
    from datasets import Dataset
    from trl import SFTConfig

    from distilflow.training.arguments import lora_config, on_gpu, training_arguments
    from distilflow.training.callbacks import quiet_trainer
    from distilflow.training.kernels import liger_arguments
    from distilflow.training.throughput import count_tokens

    gpu = on_gpu()
    peft_config = lora_config(config)
    init_kwargs: dict[str, Any] = {"dtype": "float32"}
    attn = attention(config, gpu)
    if attn:
        init_kwargs["attn_implementation"] = attn
    if config.packing:
        print(
            f"[{STAGE}] packing: padding-free rows of up to {config.max_length} tokens, kept apart by position "
            f"ids (attention: {attn or 'sdpa'})",
            flush=True,
        )
    args = training_arguments(
        SFTConfig,
        config,
        scratch,
        max_length=config.max_length,
        packing=config.packing,  # best-fit decreasing: padding-free batches with position ids
        assistant_only_loss=config.assistant_only_loss,
        model_init_kwargs=init_kwargs,
        **liger_arguments(config.use_liger_kernel, model_path, STAGE, gpu),
        warmup_steps=config.warmup_steps,
    )
    trainer = trainer_class(config.curriculum)(
        model=model_path,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    count_tokens(trainer, STAGE)
    return quiet_trainer(trainer, STAGE)


def run(config: SftConfig) -> SftResult:
    """Fine-tune the student on curated chats and save it with its tokenizer to ``<output_uri>/model``.

    Reads ``sft.jsonl`` (``SftExample`` rows) from curate's finished output (or a JSONL file), renders each
    chat with the student's chat template (reasoning inside the template's thinking block, per-row
    ``enable_thinking``), drops and counts rows longer than ``max_length`` tokens, trains with
    ``SFTTrainer`` (optionally LoRA, merged before saving; in file order with ``curriculum``), uploads a
    checkpoint every ``save_steps`` steps to ``<output_uri>/checkpoints``, and writes the loss and
    learning-rate curves to ``<output_uri>/report.html``.

    With ``processes`` > 1 (``auto``: one per GPU) and not already under a distributed launcher, it
    starts itself under ``torchrun`` on this node (data parallel, or DeepSpeed ZeRO with ``deepspeed``).
    A rerun of a finished output returns the stored result; a rerun of an unfinished one (preempted,
    killed) with the same config continues from its newest complete checkpoint, optimizer, schedule,
    RNG and data position included (see ``distilflow.training.checkpointing.resume_point`` for a changed config).
    With ``launcher: trainjob`` (or ``dlc``) it trains nothing here: ``distilflow.launch.trainjob.launch``
    submits a Kubeflow TrainJob (``distilflow.launch.dlc.launch`` a PAI-DLC job) of ``nodes`` nodes that runs
    this stage with ``launcher: local`` and returns its result.
    With ``kd`` it trains on the teacher logits of a distill output instead (``kd.py``: CE mixed with a
    KL to the stored top-k; a student of another vocabulary is refused); with ``gkd``, on-policy
    distillation from a live teacher (``gkd.py``, TRL's ``GKDTrainer``).
    It prints the tokens trained, their padding share and tokens/s, counted from the batches trained on.
    """
    from distilflow.launch import dispatch, torchrun
    from distilflow.training.data import read_rows

    # many nodes: a TrainJob or a PAI-DLC job trains, this process waits for its result
    launched = dispatch(STAGE, config)
    if launched is not None:
        return SftResult.model_validate(launched)
    out = StageOutput(config.output_uri, STAGE)
    stored = out.reusable(config)
    if stored is not None:
        print(f"[{STAGE}] reusing finished output {out.uri}", flush=True)
        return SftResult.model_validate(stored["result"])

    data_file = config.data_uri
    skip = config.if_no_examples == "skip"
    examples: list[records.SftExample] = []  # kd reads distill's logits (streamed while training)
    if config.kd is None:
        examples = read_rows(data_file, "sft", records.SftExample, "sft data", allow_empty=skip)
        if not examples:
            return skip_training(config, out, f"{data_file} holds no sft examples (curate kept no trace)")
    if torchrun.needs_launch(config):  # several GPUs: one process each, under torchrun
        return SftResult.model_validate(torchrun.launch(STAGE, config))
    was_complete = out.is_complete()
    out.begin(config)
    with tracking.training_run(
        config, STAGE, out.uri
    ):  # MLflow / TensorBoard / W&B, when tracking asks for it
        return train(config, out, data_file, examples, was_complete)


def chat_trainer(
    config: SftConfig,
    data_file: str,
    examples: list[records.SftExample],
    tokenizer: Any,
    model_path: str,
    scratch: str,
) -> tuple[Any, tuple[int, int, int, int]]:
    """The trainer over chats (plain SFT, or on-policy GKD with ``gkd``) and the row counts (read,
    used, dropped for length, rejected for control tokens)."""
    from distilflow.training.data import without_template_tokens

    template = training_template(tokenizer, config)
    kept, rejected = without_template_tokens(examples, STAGE)
    if not kept:
        raise ConfigError(
            f"sft: every example of {data_file} holds chat-template control tokens; clean the data"
        )
    rows, dropped = build_rows(kept, tokenizer, config.max_length, template)
    print(f"[{STAGE}] {len(rows)} examples, {dropped} dropped (> {config.max_length} tokens)", flush=True)
    if not rows:
        raise ConfigError(
            f"sft: all {len(kept)} examples of {data_file} are longer than max_length={config.max_length} "
            "tokens; raise sft.max_length"
        )
    if config.gkd is not None:
        from distilflow.components.sft.gkd import make_gkd_trainer

        trainer = make_gkd_trainer(config, rows, tokenizer, model_path, scratch)
    else:
        trainer = make_trainer(config, rows, tokenizer, model_path, scratch)
    return trainer, (len(examples), len(rows), dropped, rejected)


def skip_training(config: SftConfig, out: StageOutput, reason: str) -> SftResult:
    """``if_no_examples: skip``: train nothing; publish the starting model unchanged as this stage's
    model, the result saying so (``trained`` false, ``skipped`` the reason)."""
    from distilflow.models import resolve_model

    print(
        f"[{STAGE}] training skipped: {reason}; the model published is the starting model {config.model}, "
        "unchanged (if_no_examples: skip)",
        flush=True,
    )
    out.begin(config)
    model_uri = uris.join(out.uri, "model")
    uris.upload_dir(resolve_model(config.model), model_uri)
    result = SftResult(
        model_uri=model_uri,
        first_loss=None,
        final_loss=None,
        steps=0,
        rows_used=0,
        rows_dropped=0,
        seed=config.seed,
        trained=False,
        skipped=reason,
    )
    out.finish(result, inputs={"data": config.data_uri, "model": config.model}, outputs={"model": model_uri})
    return result


def train(
    config: SftConfig,
    out: StageOutput,
    data_file: str,
    examples: list[records.SftExample],
    was_complete: bool = False,
) -> SftResult:
    """The training part of ``run`` (heavy imports live here)."""
    from distilflow.models import load_tokenizer, resolve_model
    from distilflow.training.checkpointing import scratch_dir, train_resumable
    from distilflow.training.report import first_last, logged, write_report
    from distilflow.training.save import lineage, model_card, save_trained
    from distilflow.training.throughput import throughput

    model_path = resolve_model(config.model)
    tokenizer = load_tokenizer(model_path)
    scratch = scratch_dir(STAGE, out.uri)
    if config.kd is not None:
        from distilflow.components.sft.kd import make_kd_trainer

        trainer, read, dropped = make_kd_trainer(config, tokenizer, model_path, scratch)
        counts = (read, read - dropped, dropped, 0)
    else:
        trainer, counts = chat_trainer(config, data_file, examples, tokenizer, model_path, scratch)
    start_step = train_resumable(trainer, out.uri, config, STAGE, was_complete)

    history = trainer.state.log_history
    first, final = first_last(logged(history, "loss"))
    read, used, dropped, rejected = counts
    result = SftResult(
        model_uri=uris.join(out.uri, "model"),
        first_loss=first,
        final_loss=final,
        steps=trainer.state.global_step,
        rows_read=read,
        rows_used=used,
        rows_dropped=dropped,
        rows_rejected=rejected,
        resumed_from_step=start_step or None,
        seed=config.seed,
        loss="kd" if config.kd is not None else "gkd" if config.gkd is not None else "ce",
        final_ce=first_last(logged(history, "ce"))[1],
        final_divergence=first_last(logged(history, "divergence"))[1],
        **throughput(trainer),
    )
    card = model_card(
        STAGE,
        config.model,
        data_file,
        result.model_dump(),
        config.to_dict(),
        origin=lineage(config.data_uri),
    )
    save_trained(trainer, result.model_uri, card)
    curves = ("loss", "ce", "divergence", "learning_rate", "grad_norm")
    report = write_report(out.uri, STAGE, history, curves, result.model_dump())
    out.finish(
        result,
        inputs={"data": data_file, "model": config.model},
        outputs={"model": result.model_uri, "report": report, **tracking.published(result)},
        student_prompt=recorded_prompt(config.data_uri),
    )
    return result
