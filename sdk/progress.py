"""Progress lines a human can follow in KFP logs: count, rate and ETA, at most every few seconds."""

from __future__ import annotations

import time


class Progress:
    def __init__(self, stage: str, what: str, total: int, every_s: float = 5.0):
        self.stage, self.what, self.total, self.every_s = stage, what, total, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            print(self.line(now), flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"{left:.0f}s" if left != float("inf") else "?"
        return f"[{self.stage}] {self.what}: {self.done}/{self.total} ({pct:.0f}%) {rate:.2f}/s ETA {eta}"
