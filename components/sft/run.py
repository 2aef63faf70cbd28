"""The `sft` stage: supervised fine-tuning of the student with TRL's ``SFTTrainer``."""

from __future__ import annotations

import tempfile
from typing import Any

from distilflow import records
from distilflow import uri as uris
from distilflow.components.sft.config import SftConfig, SftResult
from distilflow.errors import ConfigError
from distilflow.outputs import StageOutput

STAGE = "sft"


def build_rows(
    examples: list[records.SftExample], tokenizer: Any, max_length: int, chat_template: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Conversational rows for TRL and how many examples were dropped for being too long.

    Each row renders with the student's own chat template; ``enable_thinking`` travels per row in
    ``chat_template_kwargs``, which TRL forwards to ``apply_chat_template``. Lengths are measured the
    same way TRL tokenizes (``chat_template`` is the one TRL uses, None for the tokenizer's own), so no
    kept row is truncated.
    """
    from distilflow.training import chat_length, message_dicts

    rows: list[dict[str, Any]] = []
    dropped = 0
    with_thinking = any(ex.enable_thinking is not None for ex in examples)
    for ex in examples:
        messages = message_dicts(ex.messages)
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


def run(config: SftConfig) -> SftResult:
    """Fine-tune the student on curated chats and save it with its tokenizer to ``<output_uri>/model``.

    Reads ``sft.jsonl`` (``SftExample`` rows) from curate's finished output (or a JSONL file), renders each
    chat with the student's chat template (reasoning inside the template's thinking block, per-row
    ``enable_thinking``), drops and counts rows longer than ``max_length`` tokens, trains with
    ``SFTTrainer`` (optionally LoRA, merged before saving) and records the loss history.

    It does not pack sequences, keep a curriculum order (the trainer shuffles rows), or resume from a
    mid-training checkpoint: a rerun of a finished output returns the stored result, an unfinished one
    trains again from the start.
    """
    out = StageOutput(config.output_uri, STAGE)
    stored = out.reusable(config)
    if stored is not None:
        print(f"[{STAGE}] reusing finished output {out.uri}", flush=True)
        return SftResult.model_validate(stored["result"])

    from distilflow.training import resolve_data

    data_file, _ = resolve_data(config.data_uri, "sft.jsonl", "sft data")
    examples = records.read_jsonl(data_file, records.SftExample)
    out.begin(config)
    return train(config, out, data_file, examples)


def train(
    config: SftConfig, out: StageOutput, data_file: str, examples: list[records.SftExample]
) -> SftResult:
    """The training part of ``run`` (heavy imports live here)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from distilflow import training
    from distilflow.models import load_tokenizer, resolve_model

    model_path = resolve_model(config.model)
    tokenizer = load_tokenizer(model_path)
    template = training_template(tokenizer, config)
    rows, dropped = build_rows(examples, tokenizer, config.max_length, template)
    print(f"[{STAGE}] {len(rows)} examples, {dropped} dropped (> {config.max_length} tokens)", flush=True)
    if not rows:
        raise ConfigError(
            f"sft: all {len(examples)} examples of {data_file} are longer than max_length={config.max_length} "
            "tokens; raise sft.max_length"
        )

    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    scratch = tempfile.mkdtemp(prefix="distilflow-sft-")
    args = training.training_arguments(
        SFTConfig,
        config,
        scratch,
        max_length=config.max_length,
        packing=False,  # padding-free packing needs flash-attention to keep sequences apart
        assistant_only_loss=config.assistant_only_loss,
    )
    trainer = SFTTrainer(
        model=model_path,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    training.quiet_trainer(trainer, STAGE)
    trainer.train()

    first, final = training.first_last(training.logged(trainer.state.log_history, "loss"))
    result = SftResult(
        model_uri=uris.join(out.uri, "model"),
        first_loss=first,
        final_loss=final,
        steps=trainer.state.global_step,
        rows_used=len(rows),
        rows_dropped=dropped,
    )
    card = training.model_card(STAGE, config.model, data_file, result.model_dump(), config.to_dict())
    training.save_trained(trainer, result.model_uri, card)
    out.finish(
        result=result.model_dump(),
        inputs={"data": data_file, "model": config.model},
        outputs={"model": result.model_uri},
        counts={"rows_read": len(examples), "rows_used": len(rows), "rows_dropped": dropped},
        metrics={"first_loss": first, "final_loss": final, "steps": result.steps},
    )
    return result
