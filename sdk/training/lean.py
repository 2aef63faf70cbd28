"""A training step as lean as a bare PyTorch loop: no host-device sync in a step that does not log, the
batch copied to the GPU without blocking, collated beside the training process, and metrics kept on the
device until a log line reads them.

What a GPU step waits for when a value is read back to the host (``.item()``, ``float(t)``, ``if t:``): the
host stops queuing kernels until the device has caught up, and the device then idles while the host queues
the next ones. transformers' Trainer reads the loss back every micro-batch to filter NaN/inf losses
(``logging_nan_inf_filter``); TRL's SFT and reward trainers read back their logged metrics (entropy, token
accuracy, token counts, reward statistics) in every ``compute_loss``. The stages turn the first off here
(``lean_arguments``) and replace the second with ``DeviceMeans``: sums stay on the device and are read in
one transfer when the trainer logs (every ``logging_steps`` steps).

TRL's DPO trainer computes its logged metrics (``rewards/accuracies``, ``rewards/margins``, ... which the
dpo stage reports) inside its loss, so its reads stay (see ``components/dpo/README.md``).
"""

from __future__ import annotations

from typing import Any

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
"""Tensor methods that copy a value to the host and so wait for the device (a sync on a GPU)."""


def lean_arguments(gpu: bool) -> dict[str, Any]:
    """``TrainingArguments`` that keep a step free of host syncs and of batch preparation on its path.

    - ``logging_nan_inf_filter=False``: the Trainer would read every micro-batch's loss back to drop
      NaN/inf values from the logged mean (a sync per micro-batch); a NaN now shows in the logged loss.
    - ``include_num_input_tokens_seen="no"``: its count is read back every step; the stage counts the
      tokens on the device instead (``distilflow.training.throughput``).
    - ``optim="adamw_torch_fused"``: one fused kernel for the AdamW update (as a bare loop uses).
    - On a GPU, batches are collated by two worker processes ahead of the step and copied from pinned
      memory without blocking (``non_blocking``), so the host never waits for a copy.
    """
    kwargs: dict[str, Any] = {
        "logging_nan_inf_filter": False,
        "include_num_input_tokens_seen": "no",
        "optim": "adamw_torch_fused",
        "dataloader_pin_memory": gpu,
    }
    if gpu:
        kwargs.update(
            dataloader_num_workers=2,
            dataloader_persistent_workers=True,
            dataloader_prefetch_factor=2,
            accelerator_config={"non_blocking": True},
        )
    return kwargs


class DeviceMeans:
    """Means of per-step values kept on the device: ``add`` queues an addition (no sync), ``pop`` reads
    every mean in one transfer and starts over. A trainer adds in ``compute_loss`` and pops in ``log``."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: Any) -> None:
        """Add one step's value (a scalar tensor, detached here) to ``name``'s running sum."""
        value = value.detach().float()
        self._sums[name] = value if name not in self._sums else self._sums[name] + value
        self._counts[name] = self._counts.get(name, 0) + 1

    def pop(self, gather: Any = None) -> dict[str, float]:
        """The mean of each name since the last ``pop`` (one host read for all of them), then reset.

        Args:
            gather: ``accelerator.gather`` in a multi-process run: the means are averaged over ranks.
        """
        import torch

        if not self._sums:
            return {}
        names = list(self._sums)
        sums = torch.stack([self._sums[n].reshape(()) for n in names])
        if gather is not None:
            sums = gather(sums[None]).mean(0)
        values = sums.tolist()
        means = {n: v / self._counts[n] for n, v in zip(names, values, strict=True)}
        self._sums, self._counts = {}, {}
        return means
