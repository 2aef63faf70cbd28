"""Saving the trained model: merged when LoRA was used (also under ZeRO-3/FSDP), with its tokenizer and
a model card (data, teachers, recipe, metrics) to an output URI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any

from distilflow import uri as uris
from distilflow.errors import ConfigError


def uses_fsdp(trainer: Any) -> bool:
    return getattr(trainer, "is_fsdp_enabled", False)


def params_sharded(trainer: Any) -> bool:
    """Whether each process holds only a shard of the parameters (DeepSpeed ZeRO-3 or FSDP)."""
    if uses_fsdp(trainer):
        return True
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def lineage(data_uri: str) -> dict[str, Any]:
    """Where a training stage's data came from, read from the upstream outputs' manifests and configs.

    Best effort: a ``.jsonl`` file given directly, or outputs written by hand, yield less (never an
    error). Keys, when found: ``curate`` (its output URI), ``curate_recipe`` (curate's resolved config,
    the selection recipe), ``curate_counts``, ``distill`` (the traces' output URI) and ``teachers``
    (``name: model`` of every teacher in distill's resolved config).
    """
    from distilflow.config import load_yaml
    from distilflow.outputs import MANIFEST, RESOLVED_CONFIG

    found: dict[str, Any] = {}
    if data_uri.rstrip("/").endswith(".jsonl"):
        return found
    try:
        manifest = json.loads(uris.read_text(uris.join(data_uri, MANIFEST)))
        found["curate"] = data_uri
        found["curate_counts"] = manifest.get("counts", {})
        if uris.exists(uris.join(data_uri, RESOLVED_CONFIG)):
            recipe = load_yaml(uris.read_text(uris.join(data_uri, RESOLVED_CONFIG))) or {}
            found["curate_recipe"] = {k: v for k, v in recipe.items() if k not in ("output_uri", "data_uri")}
        traces = (manifest.get("inputs") or {}).get("traces")
        if traces and not traces.endswith("traces.jsonl"):
            found["corpus"] = traces  # curate selected from a scored corpus, not a distill output
        elif traces:
            distill = traces.rsplit("/", 1)[0] if traces.endswith(".jsonl") else traces
            found["distill"] = distill
            resolved = uris.join(distill, RESOLVED_CONFIG)
            if uris.exists(resolved):
                cfg = load_yaml(uris.read_text(resolved)) or {}
                teachers = [cfg["teacher"]] if cfg.get("teacher") else list(cfg.get("teachers") or [])
                found["teachers"] = {
                    t.get("name") or str(t.get("model", "?")).rstrip("/").split("/")[-1]: t.get("model")
                    for t in teachers
                    if isinstance(t, dict)
                }
    except Exception as exc:  # a model card never fails a finished training run
        found["lineage_error"] = f"{type(exc).__name__}: {exc}"
    return found


def model_card(
    stage: str,
    base_model: str,
    data: str,
    result: dict[str, Any],
    config: dict[str, Any],
    auto_class: str = "AutoModelForCausalLM",
    origin: dict[str, Any] | None = None,
) -> str:
    """A README.md: what the model is, its data and teacher(s), the recipe, the metrics, how to load it.

    Args:
        stage: The training stage.
        base_model: The model training started from.
        data: The JSONL file trained on.
        result: The stage's result (losses, steps, rows used and dropped, ...): the metrics section.
        config: The stage's config: the training recipe.
        auto_class: The transformers class that loads the model.
        origin: ``lineage(config["data_uri"])``: upstream curate output, its recipe and counts, teachers.
    """
    origin = origin or {}
    teachers = origin.get("teachers") or {}
    front = (
        f"---\nlibrary_name: transformers\ntags:\n- distilflow\n- {stage}\n"
        f"base_model: {json.dumps(base_model)}\n---\n"
    )
    lines = [
        front,
        f"# distilflow `{stage}` model\n",
        f"Trained by the distilflow `{stage}` stage from `{base_model}` on `{data}`.\n",
        "## Data\n",
        f"- file: `{data}`",
        f"- rows used: {result.get('rows_used', '?')}, dropped for length: {result.get('rows_dropped', '?')}"
        f" (max_length {config.get('max_length', '?')} tokens; longer rows are dropped, never truncated)",
    ]
    if origin.get("curate"):
        lines.append(f"- curated by: `{origin['curate']}`")
    if origin.get("curate_counts"):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(origin["curate_counts"].items()))
        lines.append(f"- curate counts: {counts}")
    if origin.get("distill"):
        lines.append(f"- traces from: `{origin['distill']}`")
    lines.append("\n## Teacher\n")
    if teachers:
        lines += [f"- {name}: `{model}`" for name, model in sorted(teachers.items())]
    else:
        lines.append("- not recorded (the data was not read from a distill -> curate output)")
    lines += [
        "\n## Metrics\n",
        *(f"- {k}: {v}" for k, v in result.items()),
        "\n## Recipe\n",
        f"`{stage}` config:\n",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```\n",
    ]
    if origin.get("curate_recipe"):
        lines += [
            "`curate` config (data selection):\n",
            "```json",
            json.dumps(origin["curate_recipe"], indent=2, sort_keys=True, default=str),
            "```\n",
        ]
    lines += [
        "## Use\n",
        "```python",
        f"from transformers import {auto_class}, AutoTokenizer",
        f'model = {auto_class}.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")  # the chat template is included',
        "```",
    ]
    return "\n".join(lines) + "\n"


def merge_lora(adapter_dir: str, out_dir: str, base_model: str, model_class: type, dtype: Any = None) -> Any:
    """Load ``base_model``, apply the saved LoRA adapter, merge it into the weights and save the result.

    This is how a LoRA model trained with sharded parameters (DeepSpeed ZeRO-3, FSDP) is merged: no
    process holds the whole model during training, so the Trainer gathers the adapter (``save_model``)
    and one process merges it into a fresh copy of the base on the CPU. Merged weights are
    ``W + (lora_alpha / r) * B @ A`` for every adapted layer (peft's ``merge_and_unload``).

    Args:
        adapter_dir: A folder written by ``PeftModel.save_pretrained`` (adapter_config.json + weights).
        out_dir: Where the merged model goes (Hugging Face format, no tokenizer).
        base_model: The local folder of the model the adapter was trained on.
        model_class: The transformers class of the base (e.g. ``Qwen3ForCausalLM``).
        dtype: Weights' dtype while merging and saving (default float32, as the stages train).

    Returns:
        The merged model (on the CPU).
    """
    import torch
    from peft import PeftModel

    with _zero3_off():  # else from_pretrained would partition the copy across processes that are not there
        base = model_class.from_pretrained(base_model, dtype=dtype or torch.float32)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(out_dir)
    return merged


@contextlib.contextmanager
def _zero3_off():
    """Hide the Trainer's DeepSpeed ZeRO-3 config from transformers/peft for a moment (one process works
    alone on a plain CPU model)."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover - transformers without the integration
        yield
        return
    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = ref


def _lora_base(model: Any) -> str:
    config = next(iter(model.peft_config.values()))
    base = getattr(config, "base_model_name_or_path", None)
    if not base or not os.path.isdir(base):
        raise ConfigError(
            f"cannot merge the LoRA adapter: its base model folder {base!r} is not on this node "
            "(train from a local folder or a URI distilflow materializes)"
        )
    return base


def save_trained(trainer: Any, uri: str, card: str) -> str:
    """Save the trained model and tokenizer in Hugging Face format, plus ``README.md``, to ``uri``.

    A LoRA model is merged into its base first, so downstream stages load a plain model: in place on
    the main process when every process holds the full model; with sharded parameters (ZeRO-3, FSDP)
    the Trainer gathers the adapter to the main process, which merges it into a fresh CPU copy of the
    base (``merge_lora``). A full model trained under ZeRO-3 or FSDP is gathered by the Trainer
    (ZeRO-3: ``stage3_gather_16bit_weights_on_model_save``; FSDP: a full state dict). Object storage
    gets a local copy uploaded in one go; only the main process writes and uploads. Every process
    must call it (gathering is collective).

    Returns:
        ``uri``.
    """
    from peft import PeftModel

    main = trainer.is_world_process_zero()
    local = uris.local_path(uri) if uris.is_local(uri) else tempfile.mkdtemp(prefix="distilflow-model-")
    if uses_fsdp(trainer):  # checkpoints are sharded per rank; the final model is one full state dict
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel) and params_sharded(trainer):
        adapter = tempfile.mkdtemp(prefix="distilflow-adapter-")
        trainer.save_model(adapter)  # collective: gathers the trainable (adapter) weights to the main process
        if main:
            merge_lora(adapter, local, _lora_base(model), type(model.get_base_model()))
            trainer.processing_class.save_pretrained(local)
        shutil.rmtree(adapter, ignore_errors=True)
    elif isinstance(model, PeftModel):
        # save_model would write the adapter only; downstream stages expect full weights
        if main:
            model.merge_and_unload().save_pretrained(local)
            trainer.processing_class.save_pretrained(local)
    else:
        trainer.save_model(local)
    if main:
        with open(os.path.join(local, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        for stale in ("training_args.bin",):  # pickled TrainingArguments: not needed to load, not portable
            path = os.path.join(local, stale)
            if os.path.exists(path):
                os.remove(path)
        uris.upload_dir(local, uri)
    # no process may finish the stage (write its completion marker) before the model is uploaded
    trainer.accelerator.wait_for_everyone()
    if not uris.is_local(uri):
        shutil.rmtree(local, ignore_errors=True)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # the trainer's scratch folder
    return uri
