"""Checkpoints in object storage, and resuming from them.

The protocol (written here once; the functions below name their step):

1. Every ``save_steps`` optimizer steps every process writes its part of ``checkpoint-<step>`` to its
   node's local scratch folder (``scratch_dir``): model, optimizer, scheduler and trainer state with
   the data position from rank 0; one RNG state per rank; ZeRO or FSDP shards per rank.
2. Rank 0 removes what an interrupted upload of the same step left in object storage; every process
   lists its node's files and all lists are exchanged (which also waits for rank 0).
3. Each process uploads its share to ``<output_uri>/checkpoints/checkpoint-<step>/`` (``assign_uploads``:
   a file named for a rank, e.g. ``rng_state_3.pth``, by that rank; shared files spread over the
   processes of the node holding them), then writes its done marker ``_ranks/rank-<r>.json``.
4. After a barrier rank 0 checks that every rank's marker is there, writes ``_COMPLETE`` last (the
   config fingerprint, the world size and the file list), then deletes all but the newest
   ``save_total_limit`` complete checkpoints. A process that dies before its marker leaves the
   checkpoint incomplete: the job fails at the barrier, and a checkpoint without ``_COMPLETE`` is
   never used.
5. A rerun of an unfinished stage with the same config (``resume_point`` says which checkpoints stay)
   downloads the newest complete checkpoint on every node and continues from it, each rank with its
   own RNG state (``train_resumable``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from typing import Any, NamedTuple

from distilflow import uri as uris
from distilflow.errors import ConfigError

CHECKPOINTS = "checkpoints"
"""Folder under a stage's output URI holding ``checkpoint-<step>/`` folders."""


CHECKPOINT_MARKER = "_COMPLETE"
"""Written last into an uploaded checkpoint folder; a folder without it is never resumed from."""


class Checkpoint(NamedTuple):
    step: int
    uri: str
    marker: dict[str, Any] | None
    """The parsed completion marker, None when the folder has none (an interrupted upload)."""


def checkpoint_config(config: Any) -> dict[str, Any]:
    """The config fields that shape training (all but those declared ``RESUME_NEUTRAL``), as checkpoints
    record them."""
    from distilflow.training.fields import resume_neutral

    neutral = resume_neutral(config)
    return {k: v for k, v in config.to_dict().items() if k not in neutral}


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
      those declared ``RESUME_NEUTRAL`` differ): deleted when the previous run finished (``was_complete``: a new config
      means new training, as for any stage); refused with a ``ConfigError`` naming the differing fields
      when it did not (a preempted run whose config was changed: resuming would mix two recipes, and
      starting over would throw away its progress without being asked).
    - Otherwise the newest complete checkpoint, or None when there is none.
    """
    found = list_checkpoints(output_uri)
    if not found:
        return None
    if not config.resume:
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


RANK_MARKERS = "_ranks"
"""Folder inside an uploaded checkpoint: one done marker per training process, ``rank-<r>.json``."""


_RANK_FILE = re.compile(
    r"(?:^|/)(?:rng_state_(\d+)\.pth|(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_\w+\.pt|__(\d+)_\d+\.distcp)$"
)
"""Checkpoint files written by one rank: the Trainer's RNG states, DeepSpeed ZeRO shards,
torch.distributed.checkpoint (FSDP) shards."""


def rank_of_file(path: str) -> int | None:
    """The rank that wrote a checkpoint file when its name says so (``rng_state_3.pth``: 3), else None."""
    match = _RANK_FILE.search(path)
    if not match:
        return None
    return int(next(g for g in match.groups() if g is not None))


def local_files(folder: str) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``folder`` (empty when it does not exist)."""
    found: dict[str, int] = {}
    for top, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(top, name)
            found[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    return found


def assign_uploads(listings: dict[int, tuple[str, dict[str, int]]]) -> dict[int, list[str]]:
    """Which process uploads which file of a checkpoint, so that every file goes up exactly once.

    Args:
        listings: For every rank, ``(node, {path: size})``: the node it runs on (processes that see
            the same scratch folder) and the files of the checkpoint there.

    Returns:
        For every rank, the paths it uploads. A file named for a rank (``rng_state_<r>.pth``, a ZeRO or
        FSDP shard of rank r) goes to that rank when its node holds it. Any other file goes to a process
        on the node of the lowest rank holding it (rank 0's node for the model, optimizer and trainer
        state), spread over that node's processes by size so that large checkpoints upload in parallel.
    """
    holders: dict[str, list[int]] = {}
    size: dict[str, int] = {}
    for rank, (_, files) in sorted(listings.items()):
        for path, n in files.items():
            holders.setdefault(path, []).append(rank)
            size[path] = n
    plan: dict[int, list[str]] = {rank: [] for rank in listings}
    load = dict.fromkeys(listings, 0)
    shared = []
    for path, ranks in holders.items():
        owner = rank_of_file(path)
        if owner is not None and owner in ranks:
            plan[owner].append(path)
            load[owner] += size[path]
        else:
            shared.append(path)
    for path in sorted(shared, key=lambda p: (-size[p], p)):
        ranks = holders[path]
        node = listings[min(ranks)][0]
        candidates = [r for r in ranks if listings[r][0] == node]
        rank = min(candidates, key=lambda r: (load[r], r))
        plan[rank].append(path)
        load[rank] += size[path]
    return {rank: sorted(paths) for rank, paths in plan.items()}


def _upload_files(local_dir: str, paths: list[str], dest: str) -> None:
    """Copy ``local_dir/<path>`` to ``dest/<path>`` for every path (object stores: concurrently)."""
    if not paths:
        return
    if uris.is_local(dest):
        for path in paths:
            source, target = os.path.join(local_dir, path), uris.local_path(uris.join(dest, path))
            if os.path.abspath(source) != os.path.abspath(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
        return
    fs, root = uris.filesystem(dest)
    fs.put([os.path.join(local_dir, p) for p in paths], [f"{root.rstrip('/')}/{p}" for p in paths])


def _all_gather(obj: Any) -> list[Any]:
    """``obj`` from every process, in rank order (just ``[obj]`` without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_markers(checkpoint_uri: str) -> set[int]:
    """The ranks whose done marker is in an uploaded checkpoint folder."""
    root = uris.join(checkpoint_uri, RANK_MARKERS)
    fs, path = uris.filesystem(root)
    if not uris.is_local(root):
        fs.invalidate_cache(path)
    if not fs.exists(path):
        return set()
    found = set()
    for entry in fs.ls(path, detail=False):
        match = re.fullmatch(r"rank-(\d+)\.json", entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            found.add(int(match.group(1)))
    return found


def upload_checkpoint(
    local: str, dest: str, rank: int, world_size: int, node: str, marker: dict[str, Any]
) -> dict[int, tuple[str, dict[str, int]]]:
    """Steps 2-4 of the protocol (module docstring) for one checkpoint, but the rotation, which
    ``checkpoint_callback`` does: upload it from every process's node and mark it complete. Every step
    but the uploads is collective: every process calls it.

    Returns:
        Every rank's ``(node, files)``, for the caller to tidy local copies.
    """
    from distilflow.errors import DistilflowError

    if rank == 0:
        uris.remove(dest, recursive=True)  # leftovers of an earlier, interrupted upload
    listings = dict(enumerate(_all_gather((node, local_files(local)))))
    mine = assign_uploads(listings)[rank]
    _upload_files(local, mine, dest)
    done = {
        "rank": rank,
        "node": node,
        "files": mine,
        "bytes": sum(listings[rank][1][p] for p in mine),
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    uris.write_text(uris.join(dest, RANK_MARKERS, f"rank-{rank:05d}.json"), json.dumps(done, indent=2))
    _barrier()
    if rank == 0:
        missing = sorted(set(range(world_size)) - rank_markers(dest))
        if missing:
            raise DistilflowError(
                f"checkpoint {dest}: ranks {missing} wrote no done marker to {RANK_MARKERS}/ although every "
                "process passed the barrier after uploading; the checkpoint is left incomplete"
            )
        files = sorted({p for _, found in listings.values() for p in found})
        complete = {**marker, "world_size": world_size, "files": files}
        uris.write_text(uris.join(dest, CHECKPOINT_MARKER), json.dumps(complete, indent=2))
    _barrier()
    return listings


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def node_name(scratch: str) -> str:
    """Names the node a process runs on: processes that see the same scratch folder share a node."""
    import socket

    return f"{socket.gethostname()}:{os.path.realpath(scratch)}"


def checkpoint_callback(output_uri: str, config: Any, stage: str) -> Any:
    """A ``TrainerCallback`` that uploads each checkpoint the trainer saves from every node, marks it
    complete once every rank has uploaded its part (``upload_checkpoint``) and keeps the newest
    ``config.save_total_limit`` complete ones under ``<output_uri>/checkpoints``.

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

            process = PartialState()
            process.wait_for_everyone()  # every rank has written its part of the checkpoint
            name = f"checkpoint-{state.global_step}"
            local, dest = os.path.join(args.output_dir, name), uris.join(root, name)
            marker = {
                "step": state.global_step,
                "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "config_fingerprint": fingerprint,
                "config": recipe,
            }
            node = node_name(args.output_dir)
            listings = upload_checkpoint(
                local, dest, process.process_index, process.num_processes, node, marker
            )
            if state.is_world_process_zero:
                print(f"[{stage}] checkpoint step {state.global_step} -> {dest}", flush=True)
                complete = [c for c in list_checkpoints(output_uri) if c.marker is not None]
                for old in complete[: -config.save_total_limit]:
                    _remove_checkpoint(old)
            if node != listings[0][0] and process.is_local_main_process:
                # only rank 0's trainer rotates its local copies; other nodes' copies are uploaded now
                shutil.rmtree(local, ignore_errors=True)
            process.wait_for_everyone()
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
    stopped (the trainer skips the batches already seen in the current epoch). Every node downloads the
    checkpoint into its own scratch folder, so each rank finds its RNG state (and ZeRO/FSDP shard).

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
        saved_by = start.marker.get("world_size", 1)
        if saved_by != trainer.args.world_size and trainer.is_world_process_zero():
            print(
                f"[{stage}] warning: {start.uri} was written by {saved_by} process(es), this run has "
                f"{trainer.args.world_size}: ranks without an RNG state of their own start from fresh RNG "
                "states, and DeepSpeed/FSDP shards only load with the same number of processes",
                flush=True,
            )
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
