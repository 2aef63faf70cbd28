"""Trainer callbacks for KFP logs: one progress line per logged step (step, rate, ETA, the values worth
reading) instead of transformers' raw log dicts."""

from __future__ import annotations

from typing import Any

LOGGED_KEYS = ("loss", "reward", "reward_std", "rewards/accuracies", "accuracy", "kl", "learning_rate")
"""Logged values worth a line in KFP logs (TRL logs many more; they stay in ``log_history``)."""


def _duration(seconds: float) -> str:
    """``1:02:03`` (or ``?`` when unknown) for progress lines."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(stage: str, step: int, total: int, start_step: int, elapsed: float) -> str:
    """``[stage] step 30/100 (30%) 1.50 steps/s ETA 0:00:47``.

    The rate counts the steps taken by this process only, so a run resumed at step 20 does not show
    the checkpoint's 20 steps as done in no time (which would make the ETA far too short).
    """
    taken = step - start_step
    rate = taken / elapsed if elapsed > 0 and taken > 0 else 0.0
    left = (total - step) / rate if rate > 0 else float("inf")
    pct = 100.0 * step / total if total else 100.0
    return f"[{stage}] step {step}/{total} ({pct:.0f}%) {rate:.2f} steps/s ETA {_duration(left)}"


def progress_callback(stage: str) -> Any:
    """A ``TrainerCallback`` printing step, rate, ETA and the latest logged values, for KFP logs."""
    import time

    from transformers import TrainerCallback

    class _ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            # called after a resumed trainer loaded the checkpoint's state: global_step is where it goes on
            self.start_step, self.start = state.global_step, time.monotonic()
            if state.is_world_process_zero and state.global_step:
                print(f"[{stage}] continuing at step {state.global_step}/{state.max_steps}", flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:  # one line per step in a multi-process run
                return
            shown = {k: v for k, v in (logs or {}).items() if k in LOGGED_KEYS}
            values = " ".join(f"{k}={v:.4g}" for k, v in shown.items() if isinstance(v, (int, float)))
            if not values:  # the end-of-training summary: the stage prints its own result
                return
            line = progress_line(
                stage, state.global_step, state.max_steps, self.start_step, time.monotonic() - self.start
            )
            print(f"{line} {values}", flush=True)

    return _ProgressCallback()


def quiet_trainer(trainer: Any, stage: str) -> Any:
    """Swap the trainer's raw log-dict printer for the progress callback; return the trainer."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_callback(stage))
    return trainer
