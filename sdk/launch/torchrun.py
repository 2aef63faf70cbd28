"""Self-launch on one node: a training stage that wants several processes (one per GPU, or DeepSpeed/FSDP)
starts itself under ``torchrun`` and reads the result back from its finished output."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

from distilflow.outputs import require_complete

if TYPE_CHECKING:
    from distilflow.training.fields import ScaleAndCheckpointFields


def process_count(config: ScaleAndCheckpointFields) -> int:
    """Training processes for one launch: ``config.processes``, where ``"auto"`` is one per visible GPU
    (1 on a CPU)."""
    wanted = config.processes
    if wanted != "auto":
        return int(wanted)
    import torch

    return max(torch.cuda.device_count(), 1)


def needs_launch(config: ScaleAndCheckpointFields) -> bool:
    """Whether ``run`` must start ``torchrun`` itself: more than one process wanted (or DeepSpeed or FSDP,
    which need a launcher's environment even for one: without it accelerate trains unsharded), and this
    process is not already one of a distributed launch (torchrun, accelerate and a Kubeflow TrainJob set
    LOCAL_RANK)."""
    if "LOCAL_RANK" in os.environ:
        return False
    sharded = config.deepspeed != "none" or config.fsdp != "none"
    return process_count(config) > 1 or sharded


def launch(stage: str, config: Any) -> dict[str, Any]:
    """Run the stage as ``torchrun --standalone --nproc_per_node N -m distilflow.client.cli stage STAGE``.

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
        command += ["-m", "distilflow.client.cli", "stage", stage, "--config", path]
        print(f"[{stage}] launching {n} processes: torchrun --nproc_per_node={n}", flush=True)
        code = subprocess.call(command)
    if code != 0:
        raise DistilflowError(
            f"{stage}: torchrun with {n} processes exited with code {code}; the failing rank's traceback is "
            "in the log above. A rerun resumes from the newest complete checkpoint"
        )
    return require_complete(config.output_uri, f"{stage} output")["result"]
