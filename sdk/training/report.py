"""What training logged: values read back from ``trainer.state.log_history``, and a self-contained HTML
report of the curves (``<output_uri>/report.html``) in the shared report style: one chart per logged
quantity with every logged point, steps on a labelled x axis, the quantity on a labelled y axis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from distilflow import report_style as rs
from distilflow import uri as uris


def logged(log_history: list[dict[str, Any]], key: str) -> list[float]:
    """Values of ``key`` in training logs, in step order (the end-of-training summary has other keys)."""
    return [float(entry[key]) for entry in log_history if key in entry]


def first_last(values: list[float]) -> tuple[float | None, float | None]:
    return (values[0], values[-1]) if values else (None, None)


REPORT = "report.html"

LABELS = {
    "loss": "training loss",
    "learning_rate": "learning rate",
    "grad_norm": "gradient norm",
    "accuracy": "accuracy",
    "kl": "KL divergence to the reference",
    "completions/mean_length": "mean completion length (tokens)",
    "margin": "reward margin",
    "reward": "mean reward",
    "rewards/chosen": "reward of chosen",
    "rewards/rejected": "reward of rejected",
    "rewards/margins": "reward margin",
    "rewards/accuracies": "pair accuracy",
}
"""How a logged key reads on an axis."""


def label(key: str) -> str:
    """How a logged key reads on an axis: ``LABELS``, else ``rewards/<term>/mean`` as "mean <term> reward"."""
    if key in LABELS:
        return LABELS[key]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "rewards" and parts[2] == "mean":
        return f"mean {parts[1].replace('_', ' ')} reward"
    return key.replace("_", " ")


def curves(log_history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """``(step, value)`` for every training log entry holding ``key``."""
    return [
        (float(e["step"]), float(e[key]))
        for e in log_history
        if key in e and "step" in e and isinstance(e[key], (int, float)) and math.isfinite(e[key])
    ]


def report_body(
    stage: str, log_history: list[dict[str, Any]], keys: Sequence[str], summary: dict[str, Any]
) -> str:
    """The summary table and one chart per logged key (the page without its frame)."""
    charts = []
    for key in keys:
        points = curves(log_history, key)
        if points:
            name = label(key)
            chart_id = f"curve-{key.replace('/', '-')}"
            chart = rs.line_chart({name: points}, name, "optimizer step", name, chart_id, aria=key)
            charts.append(rs.figure(chart, f"{len(points)} logged points"))
    body = "".join(charts) or '<p class="note">No training values were logged.</p>'
    flat = {k.replace("_", " "): v for k, v in summary.items() if not isinstance(v, (dict, list))}
    charts_div = f'<div class="charts">{body}</div>'
    return f"<h2>Summary</h2>{rs.kv_table(flat, 'summary')}<h2>Curves</h2>{charts_div}"


def report_html(
    stage: str,
    log_history: list[dict[str, Any]],
    keys: Sequence[str],
    summary: dict[str, Any],
    extra: str = "",
) -> str:
    """A self-contained HTML page: the run's summary table, one chart per logged key, then ``extra``."""
    body = report_body(stage, log_history, keys, summary) + extra
    return rs.page(f"distilflow {stage} report", body, f"{stage}: what training logged")


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
