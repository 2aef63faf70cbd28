"""What training logged: values read back from ``trainer.state.log_history``, and a self-contained HTML
report of the curves (``<output_uri>/report.html``)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from distilflow import uri as uris


def logged(log_history: list[dict[str, Any]], key: str) -> list[float]:
    """Values of ``key`` in training logs, in step order (the end-of-training summary has other keys)."""
    return [float(entry[key]) for entry in log_history if key in entry]


def first_last(values: list[float]) -> tuple[float | None, float | None]:
    return (values[0], values[-1]) if values else (None, None)


REPORT = "report.html"


def _svg_plot(points: list[tuple[float, float]], title: str, width: int = 560, height: int = 220) -> str:
    """One line plot (steps on x) as inline SVG: the curve, its range on both axes, the title."""
    pad_l, pad_r, pad_t, pad_b = 64, 16, 24, 32
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    xr, yr = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    coords = [(pad_l + (x - x0) / xr * plot_w, pad_t + (1 - (y - y0) / yr) * plot_h) for x, y in points]
    line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    dots = "".join(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2"/>' for cx, cy in coords)
    esc = html.escape
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{esc(title)}" font-family="sans-serif" font-size="11">'
        f'<text x="{pad_l}" y="14" font-size="13" font-weight="bold">{esc(title)}</text>'
        f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 4}" text-anchor="end">{y1:.4g}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end">{y0:.4g}</text>'
        f'<text x="{pad_l}" y="{height - 12}">{x0:g}</text>'
        f'<text x="{pad_l + plot_w}" y="{height - 12}" text-anchor="end">{x1:g}</text>'
        f'<text x="{pad_l + plot_w / 2}" y="{height - 4}" text-anchor="middle">step</text>'
        f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>'
        f'<g fill="#1f77b4">{dots}</g></svg>'
    )


def curves(log_history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """``(step, value)`` for every training log entry holding ``key``."""
    import math

    return [
        (float(e["step"]), float(e[key]))
        for e in log_history
        if key in e and "step" in e and isinstance(e[key], (int, float)) and math.isfinite(e[key])
    ]


def report_html(
    stage: str, log_history: list[dict[str, Any]], keys: Sequence[str], summary: dict[str, Any]
) -> str:
    """A self-contained HTML page: the run's summary table and one SVG plot per logged key."""
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in summary.items())
    plots = []
    for key in keys:
        points = curves(log_history, key)
        if points:
            plots.append(f"<figure>{_svg_plot(points, key)}</figure>")
    body = "".join(plots) or "<p>No training values were logged.</p>"
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>distilflow {esc(stage)} report</title>'
        "<style>body{font-family:sans-serif;margin:1em}th{text-align:left;padding-right:1em}"
        "figure{display:inline-block;margin:0.5em}</style></head>"
        f"<body><h1>distilflow <code>{esc(stage)}</code></h1><table>{rows}</table>{body}</body></html>\n"
    )


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
