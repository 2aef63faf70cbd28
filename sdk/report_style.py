"""One look for every stage's HTML report: a stylesheet, numbers rounded for reading, tables (never a
Python dict), and inline SVG charts with labelled axes and several ticks. Self-contained pages: no
script, no external file, so KFP's HTML viewer and a browser show the same thing.

Each stage's ``report.py`` builds its page from these pieces (``page``, ``kv_table``, ``table``,
``line_chart``, ``bar_chart``, ``histogram_bins``); nothing here knows a stage.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px auto;
max-width:1100px;padding:0 16px;color:#1d2330;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin:0 0 4px}h1 code{font-size:.9em}
h2{font-size:1.15em;margin:28px 0 8px;padding-bottom:4px;border-bottom:1px solid #e3e6ec}
h3{font-size:1em;margin:18px 0 6px}
.subtitle{color:#5b6478;margin:0 0 16px;font-size:.92em}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #dde1e8;padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:#f3f5f8;font-weight:600}
tbody th{background:#fafbfc;font-weight:500;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.inner{margin:0;font-size:12px}table.inner td,table.inner th{padding:1px 6px;border-color:#eef0f4}
.charts{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0}figcaption{font-size:12px;color:#5b6478;max-width:560px}
svg text{font-family:inherit}
pre{white-space:pre-wrap;background:#f6f7f9;padding:8px;font-size:12px}
details{margin:4px 0}summary{cursor:pointer}
.note{color:#5b6478;font-size:.9em}
.bad{color:#b42318;font-weight:600}.good{color:#067647;font-weight:600}
"""


def fmt(value: Any) -> str:
    """A value as a person reads it: about three significant digits, thousands separated, no
    16-digit floats, "-" for nothing, yes/no for booleans, lists joined by commas."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        size = abs(value)
        if size == 0:
            return "0"
        if size >= 1000:
            return f"{value:,.0f}"
        if size >= 0.001:
            decimals = max(0, 2 - math.floor(math.log10(size)))
            return f"{value:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:.0f}"
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    return str(value)


def cell(value: Any) -> str:
    """A table cell: numbers right-aligned and rounded, a mapping as a small table of its own."""
    if isinstance(value, dict):
        if not value:
            return "<td>-</td>"
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th>{cell(v)}</tr>" for k, v in value.items())
        return f'<td><table class="inner">{rows}</table></td>'
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{fmt(value)}</td>' if numeric else f"<td>{html.escape(fmt(value))}</td>"


def _id(table_id: str | None) -> str:
    return f' id="{html.escape(table_id)}"' if table_id else ""


def kv_table(rows: dict[str, Any] | Iterable[tuple[str, Any]], table_id: str | None = None) -> str:
    """A two-column table of named values (a summary)."""
    items = rows.items() if isinstance(rows, dict) else rows
    body = "".join(f"<tr><th>{html.escape(str(k))}</th>{cell(v)}</tr>" for k, v in items)
    return f'<table class="kv"{_id(table_id)}><tbody>{body}</tbody></table>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str | None = None, css_class: str = ""
) -> str:
    """A table with a header row; cells formatted by ``cell``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    cls = f' class="{html.escape(css_class)}"' if css_class else ""
    return f"<table{_id(table_id)}{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def records_table(rows: list[dict[str, Any]], table_id: str | None = None) -> str:
    """A table of records (dicts with the same keys), or "none" when there are none."""
    if not rows:
        return f'<p class="note"{_id(table_id)}>none</p>'
    headers = list(rows[0])
    return table(headers, [[r.get(h) for h in headers] for r in rows], table_id)


def page(title: str, body: str, subtitle: str = "") -> str:
    """A whole self-contained HTML page in the shared style."""
    sub = f'<p class="subtitle">{html.escape(subtitle)}</p>' if subtitle else ""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
        f"<body><h1>{html.escape(title)}</h1>{sub}{body}</body></html>\n"
    )


def nice_number(value: float, round_: bool = True) -> float:
    """1, 2 or 5 times a power of ten near ``value`` (Heckbert, "Nice numbers for graph labels", 1990)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    frac = value / 10**exp
    if round_:
        nice = 1 if frac < 1.5 else 2 if frac < 3 else 5 if frac < 7 else 10
    else:
        nice = 1 if frac <= 1 else 2 if frac <= 2 else 5 if frac <= 5 else 10
    return nice * 10**exp


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` evenly spaced round ticks covering ``[low, high]`` (Heckbert's loose labelling)."""
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.5 or 1.0
        low, high = low - pad, high + pad
    step = nice_number(nice_number(high - low, False) / max(count - 1, 1), True)
    start, stop = math.floor(low / step) * step, math.ceil(high / step) * step
    n = round((stop - start) / step)
    return [round(start + i * step, 12) for i in range(n + 1)]


def histogram_bins(values: Sequence[float], max_bins: int = 20) -> list[tuple[float, float, int]]:
    """``(low, high, count)`` over bins of a round width (1, 2 or 5 times a power of ten) aligned to
    multiples of it; about Sturges' number of bins (log2 n + 1), at most ``max_bins``. Integer data
    gets integer widths."""
    if not values:
        return []
    low, high = min(values), max(values)
    if low == high:
        return [(low, high, len(values))]
    target = min(max_bins, max(5, math.ceil(math.log2(len(values))) + 1))
    width = nice_number((high - low) / target, True)
    if all(float(v).is_integer() for v in values):
        width = max(1.0, math.ceil(width))
    start = math.floor(low / width) * width
    n = max(1, math.floor((high - start) / width) + 1)
    counts = [0] * n
    for v in values:
        counts[min(n - 1, int((v - start) // width))] += 1
    return [(start + i * width, start + (i + 1) * width, c) for i, c in enumerate(counts)]


class _Frame:
    """A plot area with its scales: data coordinates to SVG pixels."""

    def __init__(self, width: int, height: int, xs: list[float], ys: list[float], left: int = 70):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, 20, 34, 52
        self.xticks = nice_ticks(min(xs), max(xs), 6)
        self.yticks = nice_ticks(min(ys), max(ys), 5)

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, value: float) -> float:
        lo, hi = self.xticks[0], self.xticks[-1]
        return self.left + (value - lo) / ((hi - lo) or 1) * self.plot_w

    def y(self, value: float) -> float:
        lo, hi = self.yticks[0], self.yticks[-1]
        return self.top + (1 - (value - lo) / ((hi - lo) or 1)) * self.plot_h

    def axes(self, title: str, x_label: str, y_label: str, x_ticks: bool = True) -> list[str]:
        esc = html.escape
        parts = [f'<text x="{self.left}" y="18" font-size="14" font-weight="600">{esc(title)}</text>']
        for t in self.yticks:
            y = self.y(t)
            parts.append(
                f'<line class="grid" x1="{self.left}" x2="{self.left + self.plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                'stroke="#e6e8ee"/>'
                f'<text class="ytick" x="{self.left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
                f"{fmt(float(t))}</text>"
            )
        if x_ticks:
            for t in self.xticks:
                x = self.x(t)
                parts.append(
                    f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.top + self.plot_h}" y2="{self.top + self.plot_h + 4}" '
                    f'stroke="#555"/><text class="xtick" x="{x:.1f}" y="{self.top + self.plot_h + 17}" '
                    f'font-size="11" text-anchor="middle">{fmt(float(t))}</text>'
                )
        base, mid_y = self.top + self.plot_h, self.top + self.plot_h / 2
        parts.append(
            f'<line x1="{self.left}" x2="{self.left + self.plot_w}" y1="{base}" y2="{base}" stroke="#555"/>'
            f'<line x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{base}" stroke="#555"/>'
            f'<text class="xlabel" x="{self.left + self.plot_w / 2:.1f}" y="{self.height - 8}" font-size="12" '
            f'text-anchor="middle">{esc(x_label)}</text>'
            f'<text class="ylabel" x="16" y="{mid_y:.1f}" font-size="12" text-anchor="middle" '
            f'transform="rotate(-90 16 {mid_y:.1f})">{esc(y_label)}</text>'
        )
        return parts


def _svg(chart_id: str, title: str, width: int, height: int, parts: list[str]) -> str:
    return (
        f'<svg id="{html.escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="{html.escape(title)}">{"".join(parts)}</svg>'
    )


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    chart_id: str,
    width: int = 520,
    height: int = 270,
    aria: str | None = None,
) -> str:
    """Lines through every point of each series (each point marked, its value in a tooltip), with
    ticks and labels on both axes and a legend when there are several series."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return f'<p class="note" id="{html.escape(chart_id)}">{html.escape(title)}: nothing was logged</p>'
    frame = _Frame(width, height, [p[0] for p in points], [p[1] for p in points])
    parts = frame.axes(title, x_label, y_label)
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        coords = [(frame.x(x), frame.y(y)) for x, y in pts]
        line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        for (x, y), (cx, cy) in zip(pts, coords, strict=True):
            tip = html.escape(f"{name}: {x_label} {fmt(x)}, {y_label} {fmt(y)}")
            parts.append(
                f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="2.6" fill="{colour}"><title>{tip}</title></circle>'
            )
        if len(series) > 1:
            lx = frame.left + frame.plot_w - 150
            ly = frame.top + 12 + 16 * i
            parts.append(
                f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                f'<text x="{lx + 14}" y="{ly}" font-size="11">{html.escape(name)}</text>'
            )
    return _svg(chart_id, aria or title, width, height, parts)


def bar_chart(
    bars: Sequence[tuple[str, float]],
    title: str,
    x_label: str,
    y_label: str,
    chart_id: str,
    width: int | None = None,
    height: int = 260,
) -> str:
    """Vertical bars, one per ``(label, value)``, each labelled below and its value in a tooltip;
    ticks on the value axis (zero-based)."""
    if not bars:
        return f'<p class="note" id="{html.escape(chart_id)}">{html.escape(title)}: no data</p>'
    width = width or max(360, 90 + 34 * len(bars))
    rotate = max(len(label) for label, _ in bars) * 6 > (width - 90) / len(bars)
    height += 26 if rotate else 0
    frame = _Frame(width, height, [0, len(bars)], [0.0, max(v for _, v in bars) or 1.0])
    frame.bottom += 26 if rotate else 0
    frame.yticks = [t for t in frame.yticks if t >= 0] or [0.0, 1.0]
    parts = frame.axes(title, x_label, y_label, x_ticks=False)
    slot = frame.plot_w / len(bars)
    for i, (label, value) in enumerate(bars):
        x, y = frame.left + i * slot, frame.y(value)
        bar_h = frame.top + frame.plot_h - y
        tip = html.escape(f"{label}: {fmt(value)}")
        parts.append(
            f'<rect class="bar" x="{x + slot * 0.12:.1f}" y="{y:.1f}" width="{slot * 0.76:.1f}" height="{bar_h:.1f}" '
            f'fill="#4a7ebb"><title>{tip}</title></rect>'
        )
        tx, ty = x + slot / 2, frame.top + frame.plot_h + 15
        turn = f' transform="rotate(-35 {tx:.1f} {ty})"' if rotate else ""
        anchor = "end" if rotate else "middle"
        parts.append(
            f'<text class="xtick" x="{tx:.1f}" y="{ty}" font-size="10" text-anchor="{anchor}"{turn}>'
            f"{html.escape(label)}</text>"
        )
    return _svg(chart_id, title, width, height, parts)


def figure(svg: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{cap}</figure>"
