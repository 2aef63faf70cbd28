"""Helpers shared by the training stages (sft, dpo, reward, rl); heavy imports stay inside functions.

What lives here is used unchanged by two or more stages: finding a stage's JSONL input, counting the
tokens a chat renders to, TRL argument defaults for CPU and GPU, a progress callback for KFP logs,
reading losses back from ``trainer.state.log_history``, and saving the trained model (merged when
LoRA was used) with its tokenizer and a model card to an output URI.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from distilflow import uri as uris
from distilflow.errors import ConfigError
from distilflow.outputs import require_complete


def resolve_data(data_uri: str, default_name: str, what: str) -> tuple[str, dict[str, Any] | None]:
    """The JSONL file a stage reads, and the upstream manifest when it came from a stage output.

    Args:
        data_uri: An upstream stage output folder (its completion marker is required) or a ``.jsonl``
            file used as is.
        default_name: File to read inside a stage output folder, e.g. ``sft.jsonl``.
        what: How error messages name this input, e.g. ``"sft data"``.

    Returns:
        ``(file_uri, manifest)``; ``manifest`` is None for a direct JSONL file.

    Raises:
        IncompleteOutputError: The folder has no completion marker.
        ConfigError: The folder is complete but holds no ``default_name``.
    """
    if data_uri.rstrip("/").endswith(".jsonl"):
        return data_uri, None
    manifest = require_complete(data_uri, what)
    file_uri = uris.join(data_uri, default_name)
    if not uris.exists(file_uri):
        raise ConfigError(
            f"{what}: {data_uri} is a finished stage output but has no {default_name}; point data_uri at the "
            f"output of the stage that writes {default_name} (or at a .jsonl file)"
        )
    return file_uri, manifest


def message_dicts(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Chat messages as plain dicts for ``datasets``/chat templates; ``reasoning_content`` only where set."""
    out = []
    for m in messages:
        d = {"role": m.role, "content": m.content}
        if m.reasoning_content is not None:
            d["reasoning_content"] = m.reasoning_content
        out.append(d)
    return out


def chat_length(tokenizer: Any, messages: list[dict[str, Any]], **template_kwargs: Any) -> int:
    """Number of tokens ``messages`` render to with the tokenizer's chat template (as TRL tokenizes them)."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **template_kwargs)[
        "input_ids"
    ]
    return len(ids)


def preference_rows(
    pairs: Sequence[Any], tokenizer: Any, max_length: int
) -> tuple[list[tuple[Any, dict[str, Any]]], int]:
    """Conversational prompt/chosen/rejected rows for TRL and how many pairs were too long.

    A pair is dropped when prompt+chosen or prompt+rejected renders to more than ``max_length``
    tokens: TRL would truncate (DPO) or silently filter (reward) it.

    Returns:
        ``([(pair, row), ...], dropped)``, keeping each source ``PreferencePair`` beside its row.
    """
    kept = []
    dropped = 0
    for pair in pairs:
        prompt, chosen, rejected = (message_dicts(m) for m in (pair.prompt, pair.chosen, pair.rejected))
        if (
            max(chat_length(tokenizer, prompt + chosen), chat_length(tokenizer, prompt + rejected))
            > max_length
        ):
            dropped += 1
            continue
        kept.append((pair, {"prompt": prompt, "chosen": chosen, "rejected": rejected}))
    return kept, dropped


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def training_arguments(cls: type, config: Any, output_dir: str, **extra: Any) -> Any:
    """A TRL ``*Config`` (``cls``) filled from a stage config's common fields, with CPU-safe defaults.

    bf16 mixed precision and gradient checkpointing only on a GPU: TRL defaults ``bf16=True``, which
    raises on a CPU without bf16, and checkpointing only costs time on small CPU runs. Checkpoints are
    not written (``save_strategy="no"``): the stage saves the final model itself.

    Args:
        cls: ``trl.SFTConfig``, ``trl.DPOConfig``, ``trl.RewardConfig`` or ``trl.GRPOConfig``.
        config: The stage config; reads max_steps, num_train_epochs, learning_rate,
            per_device_train_batch_size, gradient_accumulation_steps, logging_steps and seed.
        output_dir: A local scratch folder for the trainer (``save_trained`` removes it).
        **extra: Stage-specific arguments (override the defaults).
    """
    gpu = on_gpu()
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": config.max_steps,
        "num_train_epochs": config.num_train_epochs,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": gpu,
        "gradient_checkpointing": gpu,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": gpu,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        # fp32 master weights everywhere; on a GPU bf16 comes from autocast (mixed precision), as TRL intends
        "model_init_kwargs": {"dtype": "float32"},
    }
    kwargs.update(extra)
    return cls(**kwargs)


LOGGED_KEYS = ("loss", "reward", "reward_std", "rewards/accuracies", "accuracy", "kl", "learning_rate")
"""Logged values worth a line in KFP logs (TRL logs many more; they stay in ``log_history``)."""


def progress_callback(stage: str) -> Any:
    """A ``TrainerCallback`` printing step, rate, ETA and the latest logged values, for KFP logs."""
    from transformers import TrainerCallback

    from distilflow.progress import Progress

    class _ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(stage, "steps", state.max_steps, every_s=float("inf"))

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.progress.done = state.global_step
            shown = {k: v for k, v in (logs or {}).items() if k in LOGGED_KEYS}
            values = " ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, (int, float)))
            if not values:  # the end-of-training summary: the stage prints its own result
                return
            print(f"{self.progress.line()} {values}", flush=True)

    return _ProgressCallback()


def quiet_trainer(trainer: Any, stage: str) -> Any:
    """Swap the trainer's raw log-dict printer for the progress callback; return the trainer."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_callback(stage))
    return trainer


def logged(log_history: list[dict[str, Any]], key: str) -> list[float]:
    """Values of ``key`` in training logs, in step order (the end-of-training summary has other keys)."""
    return [float(entry[key]) for entry in log_history if key in entry]


def first_last(values: list[float]) -> tuple[float | None, float | None]:
    return (values[0], values[-1]) if values else (None, None)


def model_card(
    stage: str,
    base_model: str,
    data: str,
    result: dict[str, Any],
    config: dict[str, Any],
    auto_class: str = "AutoModelForCausalLM",
) -> str:
    """A short README.md: what the model is, where it came from, what the run measured, how to load it."""
    front = f"---\nlibrary_name: transformers\ntags:\n- distilflow\n- {stage}\nbase_model: {json.dumps(base_model)}\n---\n"
    lines = [
        front,
        f"# distilflow `{stage}` model\n",
        f"Trained by the distilflow `{stage}` stage from `{base_model}` on `{data}`.\n",
        "## Result\n",
        *(f"- {k}: {v}" for k, v in result.items()),
        "\n## Config\n",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```\n",
        "## Use\n",
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer",
        f'model = {auto_class}.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")  # the chat template is included',
        "```",
    ]
    return "\n".join(lines) + "\n"


def save_trained(trainer: Any, uri: str, card: str) -> str:
    """Save the trained model and tokenizer in Hugging Face format, plus ``README.md``, to ``uri``.

    A LoRA model is merged into its base first, so downstream stages load a plain model. Object
    storage gets a local copy uploaded in one go; only the main process saves and uploads.

    Returns:
        ``uri``.
    """
    from peft import PeftModel

    local = uris.local_path(uri) if uris.is_local(uri) else tempfile.mkdtemp(prefix="distilflow-model-")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel):
        # save_model would write the adapter only; downstream stages expect full weights
        if trainer.is_world_process_zero():
            model.merge_and_unload().save_pretrained(local)
            trainer.processing_class.save_pretrained(local)
    else:
        trainer.save_model(local)
    if trainer.is_world_process_zero():
        with open(os.path.join(local, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        for stale in ("training_args.bin",):  # pickled TrainingArguments: not needed to load, not portable
            path = os.path.join(local, stale)
            if os.path.exists(path):
                os.remove(path)
        uris.upload_dir(local, uri)
    if not uris.is_local(uri):
        shutil.rmtree(local, ignore_errors=True)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # the trainer's scratch folder
    return uri
