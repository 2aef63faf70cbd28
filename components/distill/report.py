"""distill's report: the run's figures and a histogram of output lengths, as Markdown and HTML
(``report.md``, ``report.html`` in the stage output; the HTML is the step's KFP report), in the shared
report style (``distilflow.report_style``).

Throughput is labelled by how the teachers generate: endpoint teachers send requests (requests sent,
requests answered per second, mean request latency); in-process teachers (transformers, vLLM) send
none, so their figures are traces per second and the mean time of the ``generate()`` call a trace was
generated in; a mix of both is labelled per answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distilflow import report_style as rs

if TYPE_CHECKING:
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import DistillResult
    from distilflow.records import Trace


def length_histogram(tokens: list[int], max_bins: int = 20) -> list[tuple[int, int, int]]:
    """``(low, high, count)`` of output lengths (in tokens) over bins of a round width (``high`` exclusive):
    about log2(n) + 1 bins, at least 5 when the lengths differ (``report_style.histogram_bins``)."""
    return [(int(lo), int(hi), n) for lo, hi, n in rs.histogram_bins(tokens, max_bins)]


def generation_kind(config: DistillConfig | None) -> str:
    """``endpoint``, ``in-process`` or ``mixed`` (unknown for a merge of shards: ``mixed``)."""
    if config is None:
        return "mixed"
    kinds = {"endpoint" if t.backend == "openai" else "in-process" for t in config.teacher_list}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def throughput(result: DistillResult, kind: str) -> list[tuple[str, Any]]:
    """The speed figures, labelled for how the answers were generated."""
    if kind == "endpoint":
        return [
            ("requests sent (retries included)", result.requests),
            ("requests sent per second (retries included)", result.requests_per_s),
            ("traces received per second", result.traces_per_s),
            ("mean request latency (s)", result.mean_latency_s),
            ("completion tokens per second", result.tokens_per_s),
        ]
    if kind == "in-process":
        return [
            ("generation", "in-process generate() calls (no requests)"),
            ("traces generated per second", result.traces_per_s),
            ("mean time of the generate() call a trace was in (s)", result.mean_latency_s),
            ("completion tokens per second", result.tokens_per_s),
        ]
    return [
        ("answers (requests sent, retries included, plus in-process answers)", result.requests),
        ("answers per second", result.traces_per_s),
        ("requests sent per second (retries included)", result.requests_per_s),
        ("mean wait per answer: request latency or generate() call (s)", result.mean_latency_s),
        ("completion tokens per second", result.tokens_per_s),
    ]


def summary(
    result: DistillResult, config: DistillConfig | None, extra: list | None = None
) -> list[tuple[str, Any]]:
    """The figures of the run, in reading order, each a plain value or a small mapping."""
    teachers: Any = (
        {t.display_name: f"{t.backend}: {t.model}" for t in config.teacher_list} if config else result.teacher
    )
    asked = f"{result.problems} x {config.n}" if config else result.problems
    return [
        *(extra or []),
        ("teachers", teachers),
        ("problems x samples", asked),
        ("traces written", result.traces),
        ("traces by teacher", result.by_teacher),
        ("resumed from shards of an interrupted run", result.resumed),
        ("answers taken from the cache", result.cache_hits),
        ("rows failed after retries", result.failed),
        ("failed rows by error", result.failures_by_kind),
        ("failed attempts by error (retried or not)", result.errors_by_kind),
        ("rejected (chat-template control tokens)", result.rejected),
        ("prompt tokens (this run)", result.prompt_tokens),
        ("completion tokens (this run)", result.completion_tokens),
        *throughput(result, generation_kind(config)),
        ("seconds generating", result.wall_s),
        ("finish reasons", result.finish_reasons),
    ]


def _caption(result: DistillResult, traces: list[Trace]) -> str:
    hit = result.finish_reasons.get("length", 0)
    note = f"; {hit} of {len(traces)} stopped at max_new_tokens (raise it)" if hit else ""
    return f"{len(traces)} traces{note}"


def render_markdown(
    result: DistillResult, traces: list[Trace], config: DistillConfig | None, extra: list | None = None
) -> str:
    rows = "\n".join(f"| {k} | {rs.fmt(v)} |" for k, v in summary(result, config, extra))
    hist = length_histogram([t.tokens for t in traces])
    top = max((c for _, _, c in hist), default=1) or 1
    bars = "\n".join(f"{lo:>7}-{hi - 1:<7} {'#' * round(40 * c / top):<40} {c}" for lo, hi, c in hist)
    return (
        f"# distill\n\n| figure | value |\n|---|---|\n{rows}\n\n"
        f"## Output length (completion tokens per trace)\n\n{_caption(result, traces)}\n\n"
        f"```\n{bars or '(no traces)'}\n```\n"
    )


def render_html(
    result: DistillResult, traces: list[Trace], config: DistillConfig | None, extra: list | None = None
) -> str:
    hist = length_histogram([t.tokens for t in traces])
    bars = [(f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo), n) for lo, hi, n in hist]
    chart = rs.bar_chart(bars, "Output length", "completion tokens per trace", "traces", "length-histogram")
    body = (
        f"<h2>Figures</h2>{rs.kv_table(summary(result, config, extra), 'figures')}"
        f"<h2>Output length</h2>{rs.figure(chart, _caption(result, traces))}"
    )
    return rs.page("distill report", body, f"teacher answers with chains of thought: {result.teacher}")
