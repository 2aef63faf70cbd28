"""Helpers shared by the training stages (sft, dpo, reward, rl); heavy imports stay inside functions.

What lives here is used unchanged by two or more stages: finding a stage's JSONL input, counting the
tokens a chat renders to, TRL argument defaults for CPU and GPU, a progress callback for KFP logs,
checkpoints in object storage and resuming from them, reading losses back from
``trainer.state.log_history``, an HTML report of the curves, and saving the trained model (merged
when LoRA was used) with its tokenizer and a model card to an output URI.

Checkpoints: the trainer writes ``checkpoint-<step>`` to its local scratch folder every ``save_steps``
optimizer steps (model, optimizer, scheduler, RNG states, trainer state with the data position); the
main process uploads it to ``<output_uri>/checkpoints/checkpoint-<step>/`` and writes
``_COMPLETE`` there last, then deletes all but the newest ``save_total_limit`` complete checkpoints.
A rerun of an unfinished stage with the same config downloads the newest complete checkpoint and
continues from it; a checkpoint without its marker (killed during the upload) is never used.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from pydantic import Field

from distilflow import uri as uris
from distilflow.config import BaseConfig
from distilflow.errors import ConfigError
from distilflow.outputs import require_complete


class ScaleAndCheckpointFields(BaseConfig):
    """Config fields shared unchanged by the sft and dpo stages: processes per node, DeepSpeed, and
    checkpoints in object storage. Plain fields, no behaviour."""

    processes: int | Literal["auto"] = Field(
        "auto",
        description="Training processes on this node: auto = one per visible GPU (1 on a CPU); more than 1 "
        "makes the stage launch itself with torchrun (data parallel, or ZeRO with deepspeed)",
    )
    deepspeed: Literal["none", "zero2", "zero3"] = Field(
        "none",
        description="DeepSpeed ZeRO stage for multi-GPU runs (launch with torchrun/accelerate, one process "
        "per GPU): zero2 shards optimizer states and gradients, zero3 also the parameters",
    )
    offload: bool = Field(
        False, description="With deepspeed: offload optimizer states (and zero3 parameters) to CPU memory"
    )
    save_steps: int = Field(
        200,
        ge=0,
        description="Write a checkpoint (model, optimizer, scheduler, RNG states, data position) to "
        "<output_uri>/checkpoints every this many optimizer steps; 0 writes none",
    )
    save_total_limit: int = Field(
        2, ge=1, description="Complete checkpoints kept in <output_uri>/checkpoints"
    )
    resume: bool = Field(
        True,
        description="Continue an unfinished run from its newest complete checkpoint (same config); false "
        "deletes the checkpoints and trains from step 0",
    )


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


def renders_reasoning(chat_template: str | None) -> bool:
    """Whether a chat template places ``reasoning_content`` itself (Qwen3, QwQ) or ignores it (Qwen2.5)."""
    return "reasoning_content" in (chat_template or "")


def message_dicts(
    messages: Sequence[Any], fold_reasoning: bool = False, drop_reasoning: bool = False
) -> list[dict[str, Any]]:
    """Chat messages as plain dicts for ``datasets``/chat templates; ``reasoning_content`` only where set.

    Args:
        messages: ``Message`` records.
        fold_reasoning: Put the reasoning into the content as ``<think>\nR\n</think>\n\nC`` (how
            DeepSeek-R1 distilled Qwen2.5 students write it) for templates that ignore
            ``reasoning_content`` and would otherwise drop it silently.
        drop_reasoning: Leave the reasoning out (an example trained with thinking off).
    """
    out = []
    for m in messages:
        d = {"role": m.role, "content": m.content}
        if m.reasoning_content is not None and not drop_reasoning:
            if fold_reasoning:
                d["content"] = f"<think>\n{m.reasoning_content.strip()}\n</think>\n\n{m.content.lstrip()}"
            else:
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
    tokens: TRL would truncate (DPO) or silently filter (reward) it. Reasoning goes into the content
    (``<think>`` block) when the tokenizer's chat template ignores ``reasoning_content``.

    Returns:
        ``([(pair, row), ...], dropped)``, keeping each source ``PreferencePair`` beside its row.
    """
    kept = []
    dropped = 0
    fold = not renders_reasoning(tokenizer.chat_template)
    for pair in pairs:
        prompt, chosen, rejected = (message_dicts(m, fold) for m in (pair.prompt, pair.chosen, pair.rejected))
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


def process_count(config: Any) -> int:
    """Training processes for one launch: ``config.processes``, where ``"auto"`` is one per visible GPU
    (1 on a CPU)."""
    wanted = getattr(config, "processes", 1)
    if wanted != "auto":
        return int(wanted)
    import torch

    return max(torch.cuda.device_count(), 1)


def needs_launch(config: Any) -> bool:
    """Whether ``run`` must start ``torchrun`` itself: more than one process wanted (or DeepSpeed, which
    needs a launcher's environment even for one), and this process is not already one of a distributed
    launch (torchrun, accelerate and a Kubeflow TrainJob set LOCAL_RANK)."""
    if "LOCAL_RANK" in os.environ:
        return False
    return process_count(config) > 1 or getattr(config, "deepspeed", "none") != "none"


def launch(stage: str, config: Any) -> dict[str, Any]:
    """Run the stage as ``torchrun --standalone --nproc_per_node N -m distilflow.cli stage STAGE``.

    The processes inherit this one's stdout/stderr (so their progress reaches the KFP log); the result
    is read back from the finished output's manifest.

    Returns:
        The stage's result, as stored in its manifest.

    Raises:
        DistilflowError: A training process failed (torchrun's exit code; the cause is in the log above).
    """
    import subprocess
    import sys

    from distilflow.errors import DistilflowError

    n = process_count(config)
    with tempfile.TemporaryDirectory(prefix=f"distilflow-{stage}-launch-") as tmp:
        path = os.path.join(tmp, f"{stage}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config.to_yaml())
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        command += ["-m", "distilflow.cli", "stage", stage, "--config", path]
        print(f"[{stage}] launching {n} processes: torchrun --nproc_per_node={n}", flush=True)
        code = subprocess.call(command)
    if code != 0:
        raise DistilflowError(
            f"{stage}: torchrun with {n} processes exited with code {code}; the failing rank's traceback is "
            "in the log above. A rerun resumes from the newest complete checkpoint"
        )
    return require_complete(config.output_uri, f"{stage} output")["result"]


def training_arguments(cls: type, config: Any, output_dir: str, **extra: Any) -> Any:
    """A TRL ``*Config`` (``cls``) filled from a stage config's common fields, with CPU-safe defaults.

    bf16 mixed precision only on a GPU: TRL defaults ``bf16=True``, which raises on a CPU without bf16.
    Gradient checkpointing follows ``config.gradient_checkpointing`` when the stage has that field and
    it is set, else it is on on a GPU only (it only costs time on small CPU runs). Checkpoints are
    written every ``config.save_steps`` steps when the stage has that field and it is positive (see
    ``train_resumable``, which uploads them); otherwise none (``save_strategy="no"``): the stage saves
    the final model itself. ``config.deepspeed`` (``zero2``/``zero3``, with ``config.offload``) adds a
    ``deepspeed_config`` (the stage must then run under torchrun/accelerate, one process per GPU).

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
        "gradient_checkpointing": gpu
        if getattr(config, "gradient_checkpointing", None) is None
        else config.gradient_checkpointing,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": gpu,
        # without it accelerate ignores torchrun's process group on a CPU and every rank trains alone
        "use_cpu": not gpu,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        # fp32 master weights everywhere; on a GPU bf16 comes from autocast (mixed precision), as TRL intends
        "model_init_kwargs": {"dtype": "float32"},
    }
    if getattr(config, "deepspeed", "none") != "none":
        kwargs["deepspeed"] = deepspeed_config(config.deepspeed, config.offload)
    if getattr(config, "save_steps", 0) > 0:
        # full checkpoints (optimizer, scheduler, RNG) so a rerun resumes exactly; the local copies are
        # scratch: train_resumable uploads each and keeps save_total_limit of them in object storage
        kwargs.update(
            save_strategy="steps", save_steps=config.save_steps, save_total_limit=1, save_only_model=False
        )
    kwargs.update(extra)
    return cls(**kwargs)


def deepspeed_config(zero: str, offload: bool = False) -> dict[str, Any]:
    """A DeepSpeed config for the transformers Trainer: ZeRO stage 2 or 3, optionally offloaded to CPU.

    Batch sizes, accumulation, clipping and precision are ``"auto"``: the Trainer fills them from its
    own arguments, so they cannot disagree. ZeRO-3 gathers full 16-bit weights when the model is saved
    (else ``save_pretrained`` writes empty shards); offload moves optimizer states (ZeRO-2/3) and
    parameters (ZeRO-3) to CPU memory, trading step time for GPU memory.

    Args:
        zero: ``"zero2"`` or ``"zero3"``.
        offload: Offload to CPU memory.
    """
    if zero not in ("zero2", "zero3"):
        raise ValueError(f"zero must be 'zero2' or 'zero3', got {zero!r}")
    stage = 2 if zero == "zero2" else 3
    zero_opt: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        zero_opt.update(allgather_partitions=True, reduce_scatter=True, allgather_bucket_size=5e8)
    else:
        zero_opt.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload:
        zero_opt["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero_opt["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero_opt,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000,  # the progress callback logs; DeepSpeed's own lines are noise in KFP logs
        "wall_clock_breakdown": False,
    }


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
            if not state.is_world_process_zero:  # one line per step in a multi-process run
                return
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


# ---- checkpoints in object storage ----

CHECKPOINTS = "checkpoints"
"""Folder under a stage's output URI holding ``checkpoint-<step>/`` folders."""

CHECKPOINT_MARKER = "_COMPLETE"
"""Written last into an uploaded checkpoint folder; a folder without it is never resumed from."""

RESUME_NEUTRAL = ("save_steps", "save_total_limit", "logging_steps", "resume")
"""Config fields that do not change what is trained: changing them does not prevent resuming."""


class Checkpoint(NamedTuple):
    step: int
    uri: str
    marker: dict[str, Any] | None
    """The parsed completion marker, None when the folder has none (an interrupted upload)."""


def checkpoint_config(config: Any) -> dict[str, Any]:
    """The config fields that shape training (all but ``RESUME_NEUTRAL``), as checkpoints record them."""
    return {k: v for k, v in config.to_dict().items() if k not in RESUME_NEUTRAL}


def checkpoint_fingerprint(config: Any) -> str:
    import hashlib

    blob = json.dumps(checkpoint_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def list_checkpoints(output_uri: str) -> list[Checkpoint]:
    """The ``checkpoint-<step>`` folders under ``<output_uri>/checkpoints``, oldest first."""
    root = uris.join(output_uri, CHECKPOINTS)
    fs, path = uris.filesystem(root)
    if not uris.is_local(root):
        fs.invalidate_cache(path)  # another pod (the killed run) wrote here
    if not fs.exists(path):
        return []
    found = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if not match:
            continue
        uri = uris.join(root, name)
        marker_uri = uris.join(uri, CHECKPOINT_MARKER)
        marker = json.loads(uris.read_text(marker_uri)) if uris.exists(marker_uri) else None
        found.append(Checkpoint(int(match.group(1)), uri, marker))
    return sorted(found)


def _download_dir(uri: str, local: str) -> str:
    if uris.is_local(uri):
        shutil.copytree(uris.local_path(uri), local, dirs_exist_ok=True)
        return local
    fs, path = uris.filesystem(uri)
    os.makedirs(local, exist_ok=True)
    fs.get(path.rstrip("/") + "/", local.rstrip("/") + "/", recursive=True)
    return local


def _remove_checkpoint(ckpt: Checkpoint) -> None:
    # the marker goes first: a folder half deleted by a crash is then incomplete, never resumed from
    with contextlib.suppress(FileNotFoundError):  # another process got there first
        uris.remove(uris.join(ckpt.uri, CHECKPOINT_MARKER))
        uris.remove(ckpt.uri, recursive=True)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def resume_point(output_uri: str, config: Any, stage: str, was_complete: bool) -> Checkpoint | None:
    """The checkpoint a (re)run continues from, after clearing checkpoints that must not be used.

    - ``config.resume`` false: every checkpoint is deleted; training starts at step 0.
    - Folders without a completion marker are deleted (an interrupted upload; never resumed from).
    - Complete checkpoints written with a config that trains differently (fields other than
      ``RESUME_NEUTRAL`` differ): deleted when the previous run finished (``was_complete``: a new config
      means new training, as for any stage); refused with a ``ConfigError`` naming the differing fields
      when it did not (a preempted run whose config was changed: resuming would mix two recipes, and
      starting over would throw away its progress without being asked).
    - Otherwise the newest complete checkpoint, or None when there is none.
    """
    found = list_checkpoints(output_uri)
    if not found:
        return None
    if not getattr(config, "resume", True):
        print(
            f"[{stage}] resume=false: deleting {len(found)} checkpoint(s); training from step 0", flush=True
        )
        for ckpt in found:
            _remove_checkpoint(ckpt)
        return None
    for ckpt in found:
        if ckpt.marker is None:
            print(
                f"[{stage}] ignoring incomplete checkpoint {ckpt.uri} (no {CHECKPOINT_MARKER}); deleting it",
                flush=True,
            )
            _remove_checkpoint(ckpt)
    complete = [c for c in found if c.marker is not None]
    fingerprint = checkpoint_fingerprint(config)
    other = [c for c in complete if c.marker.get("config_fingerprint") != fingerprint]
    if other and was_complete:
        print(
            f"[{stage}] the finished run's {len(other)} checkpoint(s) used another config; deleting them",
            flush=True,
        )
        for ckpt in other:
            _remove_checkpoint(ckpt)
    elif other:
        newest = other[-1]
        raise ConfigError(
            f"{stage}: {newest.uri} was written by an unfinished run with a different config "
            f"({_differences(newest.marker.get('config', {}), checkpoint_config(config))}). Rerun with the "
            f"same config to resume from step {newest.step}, or set {stage}.resume=false to delete the "
            f"checkpoints under {uris.join(output_uri, CHECKPOINTS)} and train from step 0"
        )
    same = [c for c in complete if c not in other]
    return same[-1] if same else None


def checkpoint_callback(output_uri: str, config: Any, stage: str) -> Any:
    """A ``TrainerCallback`` that uploads each checkpoint the trainer saves, marks it complete and
    keeps the newest ``config.save_total_limit`` complete ones under ``<output_uri>/checkpoints``.

    Only steps on the ``save_steps`` grid are saved: the trainer also saves after the last step,
    which would upload the optimizer state once more just before the final model is written.
    """
    from transformers import TrainerCallback

    root = uris.join(output_uri, CHECKPOINTS)
    recipe = checkpoint_config(config)
    fingerprint = checkpoint_fingerprint(config)

    class _UploadCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and state.global_step % config.save_steps:
                control.should_save = False
            return control

        def on_save(self, args, state, control, **kwargs):
            from accelerate import PartialState

            PartialState().wait_for_everyone()  # every rank has written its part of the checkpoint
            if state.is_world_process_zero:
                name = f"checkpoint-{state.global_step}"
                dest = uris.join(root, name)
                uris.remove(dest, recursive=True)  # leftovers of an earlier, interrupted upload
                uris.upload_dir(os.path.join(args.output_dir, name), dest)
                marker = {
                    "step": state.global_step,
                    "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "config_fingerprint": fingerprint,
                    "config": recipe,
                }
                uris.write_text(uris.join(dest, CHECKPOINT_MARKER), json.dumps(marker, indent=2))
                print(f"[{stage}] checkpoint step {state.global_step} -> {dest}", flush=True)
                complete = [c for c in list_checkpoints(output_uri) if c.marker is not None]
                for old in complete[: -config.save_total_limit]:
                    _remove_checkpoint(old)
            PartialState().wait_for_everyone()
            return control

    return _UploadCheckpoints()


def _load_optimizer_on_cpu(trainer: Any) -> None:
    """Work around a transformers/torch mismatch that breaks resuming a multi-process CPU run.

    With several processes the Trainer loads ``optimizer.pt`` with ``map_location=args.device``, which
    is ``cpu:0`` on a CPU; torch 2.13 cannot restore storages to ``cpu:0`` (only to ``cpu``). GPU runs
    are not affected. Patched on this trainer instance only, for the duration of the load.
    """
    import torch

    load_state = trainer._load_optimizer_and_scheduler

    def load_on_cpu(checkpoint: Any) -> Any:
        real_load = torch.load

        def cpu_load(*args: Any, **kwargs: Any) -> Any:
            where = kwargs.get("map_location")
            if isinstance(where, torch.device) and where.type == "cpu":
                kwargs["map_location"] = "cpu"
            return real_load(*args, **kwargs)

        torch.load = cpu_load
        try:
            return load_state(checkpoint)
        finally:
            torch.load = real_load

    trainer._load_optimizer_and_scheduler = load_on_cpu


def train_resumable(trainer: Any, output_uri: str, config: Any, stage: str, was_complete: bool) -> int:
    """``trainer.train()``, continuing from the newest usable checkpoint under ``output_uri``.

    With ``config.save_steps > 0`` each checkpoint is uploaded as the trainer writes it (see
    ``checkpoint_callback``). The checkpoint carries model, optimizer, scheduler and RNG states and the
    trainer state, so the step counter, learning rate schedule and data position continue where they
    stopped (the trainer skips the batches already seen in the current epoch).

    Args:
        trainer: A transformers/TRL trainer built with ``training_arguments``.
        output_uri: The stage's output folder.
        config: The stage config (``save_steps``, ``save_total_limit``, ``resume``).
        stage: The stage name, for logs and errors.
        was_complete: Whether the output held a finished run before this one began.

    Returns:
        The trainer's step counter when training began: the checkpoint's step on a resume, else 0.
    """
    from transformers import TrainerCallback

    class _StartStep(TrainerCallback):
        step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            _StartStep.step = state.global_step  # after the trainer loaded the checkpoint's state

    start, local = None, None
    if config.save_steps > 0:
        # the main process clears unusable checkpoints first; the others then find the same newest one
        with trainer.args.main_process_first(local=False, desc="checkpoint selection"):
            start = resume_point(output_uri, config, stage, was_complete)
    if start is not None:
        local = os.path.join(trainer.args.output_dir, f"checkpoint-{start.step}")
        with trainer.args.main_process_first(local=True, desc="checkpoint download"):
            if not os.path.exists(os.path.join(local, CHECKPOINT_MARKER)):  # one download per node
                print(f"[{stage}] resuming from {start.uri} (step {start.step})", flush=True)
                _download_dir(start.uri, local)
    if config.save_steps > 0:
        trainer.add_callback(checkpoint_callback(output_uri, config, stage))
    trainer.add_callback(_StartStep())
    if local is not None and trainer.args.device.type == "cpu" and trainer.args.world_size > 1:
        _load_optimizer_on_cpu(trainer)
    trainer.train(resume_from_checkpoint=local)
    return _StartStep.step


def logged(log_history: list[dict[str, Any]], key: str) -> list[float]:
    """Values of ``key`` in training logs, in step order (the end-of-training summary has other keys)."""
    return [float(entry[key]) for entry in log_history if key in entry]


def first_last(values: list[float]) -> tuple[float | None, float | None]:
    return (values[0], values[-1]) if values else (None, None)


# ---- report ----

REPORT = "report.html"


def _svg_plot(points: list[tuple[float, float]], title: str, width: int = 560, height: int = 220) -> str:
    """One line plot (steps on x) as inline SVG: the curve, its range on both axes, the title."""
    pad_l, pad_r, pad_t, pad_b = 64, 16, 24, 32
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    xr, yr = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    coords = [(pad_l + (x - x0) / xr * plot_w, pad_t + (1 - (y - y0) / yr) * plot_h) for x, y in points]
    line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    dots = "".join(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2"/>' for cx, cy in coords)
    esc = html.escape
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{esc(title)}" font-family="sans-serif" font-size="11">'
        f'<text x="{pad_l}" y="14" font-size="13" font-weight="bold">{esc(title)}</text>'
        f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end">{y1:.4g}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end">{y0:.4g}</text>'
        f'<text x="{pad_l}" y="{height - 12}">{x0:g}</text>'
        f'<text x="{pad_l + plot_w}" y="{height - 12}" text-anchor="end">{x1:g}</text>'
        f'<text x="{pad_l + plot_w / 2}" y="{height - 4}" text-anchor="middle">step</text>'
        f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>'
        f'<g fill="#1f77b4">{dots}</g></svg>'
    )


def curves(log_history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """``(step, value)`` for every training log entry holding ``key``."""
    import math

    return [
        (float(e["step"]), float(e[key]))
        for e in log_history
        if key in e and "step" in e and isinstance(e[key], (int, float)) and math.isfinite(e[key])
    ]


def report_html(
    stage: str, log_history: list[dict[str, Any]], keys: Sequence[str], summary: dict[str, Any]
) -> str:
    """A self-contained HTML page: the run's summary table and one SVG plot per logged key."""
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in summary.items())
    plots = []
    for key in keys:
        points = curves(log_history, key)
        if points:
            plots.append(f"<figure>{_svg_plot(points, key)}</figure>")
    body = "".join(plots) or "<p>No training values were logged.</p>"
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>distilflow {esc(stage)} report</title>'
        "<style>body{font-family:sans-serif;margin:1em}th{text-align:left;padding-right:1em}"
        "figure{display:inline-block;margin:0.5em}</style></head>"
        f"<body><h1>distilflow <code>{esc(stage)}</code></h1><table>{rows}</table>{body}</body></html>\n"
    )


def write_report(
    output_uri: str,
    stage: str,
    log_history: list[dict[str, Any]],
    keys: Sequence[str],
    summary: dict[str, Any],
) -> str:
    """Write ``report_html`` to ``<output_uri>/report.html``; return its URI."""
    uri = uris.join(output_uri, REPORT)
    uris.write_text(uri, report_html(stage, log_history, keys, summary))
    return uri


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
    # no process may finish the stage (write its completion marker) before the model is uploaded
    trainer.accelerator.wait_for_everyone()
    if not uris.is_local(uri):
        shutil.rmtree(local, ignore_errors=True)
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # the trainer's scratch folder
    return uri


def scratch_dir(stage: str, output_uri: str) -> str:
    """A local folder for the trainer's own files (checkpoints before upload), shared by the processes
    of one launch on a node: each rank writes its RNG state (and ZeRO shards) into the same
    ``checkpoint-<step>`` folder that the main process uploads."""
    import hashlib

    # torchrun gives every rank of a launch the same run id; a single process gets its own folder
    launch = os.environ.get("TORCHELASTIC_RUN_ID") or str(os.getpid())
    key = hashlib.sha256(f"{output_uri}|{launch}".encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"distilflow-{stage}-{key}")
    os.makedirs(path, exist_ok=True)
    return path
