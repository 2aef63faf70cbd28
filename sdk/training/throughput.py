"""Tokens trained, padding share and tokens/s, counted from the batches the trainer actually trains on.

``count_tokens(trainer)`` wraps the trainer's ``training_step``: every micro-batch adds its real tokens
(``attention_mask`` ones; every token of a padding-free batch, whose rows are concatenated) and its token
slots (``input_ids`` elements, padding included) to sums kept on the device, so counting adds no sync to a
step. The sums are read when a progress line is printed and at the end of training, summed over the
processes of a multi-process run. Padding share = 1 - real / slots; tokens/s = real tokens / seconds from
the first to the last step of this run (model loading and saving excluded).
"""

from __future__ import annotations

import time
from typing import Any


def batch_tokens(inputs: dict[str, Any]) -> tuple[Any, int] | None:
    """``(real tokens as a device tensor, token slots)`` of one batch; None for a batch without
    ``input_ids`` (GRPO's trainer receives prompts, not token batches)."""
    ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
    if ids is None or not hasattr(ids, "numel"):
        return None
    mask = inputs.get("attention_mask")
    real = mask.sum() if mask is not None else ids.new_tensor(ids.numel())
    return real, ids.numel()


class TokenCounter:
    """Real tokens and token slots of the batches trained on, and the time training took."""

    def __init__(self) -> None:
        self._real: Any = None
        self.slots = 0
        self.batches = 0
        self.started: float | None = None
        self.ended: float | None = None
        self.summary: dict[str, Any] = {}

    def add(self, inputs: dict[str, Any]) -> None:
        counted = batch_tokens(inputs)
        if counted is None:
            return
        real, slots = counted
        self._real = real if self._real is None else self._real + real
        self.slots += slots
        self.batches += 1

    def totals(self, gather: Any = None, device: Any = None) -> tuple[int, int]:
        """``(real tokens, token slots)`` so far, in one host read; with ``gather`` (every process calls
        it) summed over the processes, on ``device`` for a process that counted nothing."""
        import torch

        real = self._real if self._real is not None else torch.zeros((), dtype=torch.int64, device=device)
        slots = torch.tensor(self.slots, dtype=torch.int64, device=real.device)
        both = torch.stack([real.reshape(()).long(), slots])
        if gather is not None:
            both = gather(both[None]).sum(0)
        found, all_slots = both.tolist()
        return int(found), int(all_slots)

    def rates(self, real: int, slots: int, now: float | None = None) -> dict[str, Any]:
        """``tokens_trained``, ``padding_share`` and ``tokens_per_second`` from counted totals."""
        end = now if now is not None else (self.ended or time.perf_counter())
        seconds = end - self.started if self.started is not None else 0.0
        return {
            "tokens_trained": real,
            "padding_share": (1.0 - real / slots) if slots else None,
            "tokens_per_second": real / seconds if seconds > 0 and real else None,
        }


def describe(summary: dict[str, Any]) -> str:
    """``123,456 tokens (7.3% padding), 10,037 tokens/s`` for logs."""
    pad, rate = summary.get("padding_share"), summary.get("tokens_per_second")
    text = f"{summary.get('tokens_trained', 0):,} tokens"
    text += f" ({pad:.1%} padding)" if pad is not None else ""
    return text + (f", {rate:,.0f} tokens/s" if rate is not None else "")


def count_tokens(trainer: Any, stage: str) -> TokenCounter:
    """Count the tokens of every batch ``trainer`` trains on (``TokenCounter``); print the totals at the
    end of training (rank 0) and keep them in ``counter.summary`` (read by ``throughput``). Returns the
    counter, also set as ``trainer.token_counter``."""
    from transformers import TrainerCallback

    counter = TokenCounter()
    step = trainer.training_step

    def counted_step(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        counter.add(inputs)
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = counted_step

    class _Throughput(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            counter.started = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            gather = trainer.accelerator.gather if args.world_size > 1 else None
            # the host waits here for the last step to finish
            real, slots = counter.totals(gather, args.device)
            counter.ended = time.perf_counter()
            counter.summary = counter.rates(real, slots)
            if state.is_world_process_zero and real:
                print(f"[{stage}] trained {describe(counter.summary)}", flush=True)

    trainer.add_callback(_Throughput())
    trainer.token_counter = counter
    return counter


def throughput(trainer: Any) -> dict[str, Any]:
    """The result fields ``tokens_trained``, ``padding_share`` and ``tokens_per_second`` of a trainer that
    ``count_tokens`` watched (empty when it did not, or before training ended)."""
    counter = getattr(trainer, "token_counter", None)
    return dict(counter.summary) if counter is not None else {}
