"""Shared by the step-overhead tests: count the values a training step reads back to the host.

On a GPU every such read (``.item()``, ``float(t)``, ``if t:``, ``.tolist()``) waits for the device; on a
CPU it costs nothing, but it happens at the same places, so counting the reads on a CPU finds the syncs a
GPU step would have. ``HostReads`` is a ``TorchFunctionMode`` (it sees every tensor method call) that
records each read with the phase of training it happened in: ``step`` (from ``on_step_begin`` to
``on_step_end``: forward, backward, optimizer) or ``between`` (logging, saving, fetching the next batch).
Reads inside transformers' attention-mask builder (``masking_utils``: is the padding mask all ones?) are
the model's own, made by a bare loop's forward too; they are kept apart.
"""

from __future__ import annotations

import collections
import traceback
from typing import Any

from distilflow.training.lean import HOST_READS

MODEL_OWN = ("transformers/masking_utils.py",)


def host_reads(trainer: Any) -> Any:
    """A ``HostReads`` mode bound to ``trainer`` through a callback marking the step phase."""
    from torch.overrides import TorchFunctionMode
    from transformers import TrainerCallback

    class HostReads(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.phase = "between"
            self.reads: collections.Counter = collections.Counter()
            self.model_own = 0
            self.where: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in HOST_READS:
                frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
                origin = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
                if any(own in origin for own in MODEL_OWN):
                    self.model_own += 1
                else:
                    self.reads[self.phase] += 1
                    if self.phase == "step":
                        self.where.append(f"{func.__name__} at {origin}")
            return func(*args, **(kwargs or {}))

    mode = HostReads()

    class _Phase(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            mode.phase = "step"

        def on_step_end(self, args, state, control, **kwargs):
            mode.phase = "between"

    trainer.add_callback(_Phase())
    return mode
