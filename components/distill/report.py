"""distill's report: the run's figures and a histogram of output lengths, as Markdown and HTML
(``report.md``, ``report.html`` in the stage output; the HTML is the step's KFP report)."""

from __future__ import annotations

import collections
import html
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import DistillResult
    from distilflow.records import Trace


def length_histogram(tokens: list[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """``(low, high, count)`` over equal-width bins of output lengths (in tokens)."""
    if not tokens:
        return []
    low, high = min(tokens), max(tokens)
    width = max(1, math.ceil((high - low + 1) / bins))
    counts = collections.Counter((t - low) // width for t in tokens)
    return [(low + i * width, low + (i + 1) * width - 1, counts.get(i, 0)) for i in range(max(counts) + 1)]


def _summary(
    result: DistillResult, config: DistillConfig | None, extra: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    teachers = (
        ", ".join(f"{t.display_name} ({t.backend}: {t.model})" for t in config.teacher_list)
        if config
        else result.teacher
    )
    return (extra or []) + [
        ("teachers", teachers),
        ("traces by teacher", str(result.by_teacher)),
        ("problems x samples", f"{result.problems} x {config.n}" if config else str(result.problems)),
        ("traces written", str(result.traces)),
        ("resumed from shards", str(result.resumed)),
        ("requests sent (retries included)", str(result.requests)),
        ("cache hits", str(result.cache_hits)),
        ("failed rows", f"{result.failed} {result.failures_by_kind or ''}".strip()),
        ("rejected (chat-template control tokens)", str(result.rejected)),
        ("failed attempts by kind", str(result.errors_by_kind or {})),
        ("prompt / completion tokens (this run)", f"{result.prompt_tokens} / {result.completion_tokens}"),
        (
            "tokens/s, traces/s, requests/s (retries included)",
            f"{result.tokens_per_s:.1f}, {result.traces_per_s:.2f}, {result.requests_per_s:.2f}",
        ),
        ("mean request latency", f"{result.mean_latency_s:.3f} s"),
        ("finish reasons", str(result.finish_reasons)),
    ]


def render_markdown(
    result: DistillResult, traces: list[Trace], config: DistillConfig | None, extra: list | None = None
) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in _summary(result, config, extra))
    hist = length_histogram([t.tokens for t in traces])
    top = max((c for _, _, c in hist), default=1) or 1
    bars = "\n".join(f"{lo:>7}-{hi:<7} {'#' * round(40 * c / top):<40} {c}" for lo, hi, c in hist)
    return (
        f"# distill\n\n| | |\n|---|---|\n{rows}\n\n"
        f"## Output length (completion tokens per trace)\n\n```\n{bars or '(no traces)'}\n```\n"
    )


def render_html(
    result: DistillResult, traces: list[Trace], config: DistillConfig | None, extra: list | None = None
) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in _summary(result, config, extra)
    )
    hist = length_histogram([t.tokens for t in traces])
    top = max((c for _, _, c in hist), default=1) or 1
    bars = "".join(
        f"<tr><td>{lo}-{hi}</td><td><div style='background:#4a7;height:12px;width:{300 * c / top:.0f}px'>"
        f"</div></td><td>{c}</td></tr>"
        for lo, hi, c in hist
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>distill</title></head><body>"
        f"<h1>distill</h1><table>{rows}</table><h2>Output length (completion tokens per trace)</h2>"
        f"<table>{bars}</table></body></html>\n"
    )
