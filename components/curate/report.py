"""The curate HTML report: judge counts, rows in/out per filter, RV and CD histograms, RV-by-CD heat
maps before and after selection (inline SVG with ids, no scripts, no external files) and sample rows."""

from __future__ import annotations

import html
from typing import Any

from distilflow.components.curate.select import filter_flow

BAR_W, BAR_H = 28, 120
CELL = 26


def histogram_svg(counts: list[int], title: str, chart_id: str) -> str:
    """A bar chart of counts for the scores 0..9 (each bar: scores in [i, i+1))."""
    top = max(counts) or 1
    width, height = BAR_W * len(counts) + 40, BAR_H + 50
    bars = []
    for i, n in enumerate(counts):
        h = round(BAR_H * n / top)
        x, y = 30 + i * BAR_W, 20 + BAR_H - h
        bars.append(
            f'<rect class="bar" x="{x}" y="{y}" width="{BAR_W - 4}" height="{h}" fill="#4a7ebb">'
            f"<title>{i}: {n}</title></rect>"
            f'<text x="{x + 10}" y="{BAR_H + 35}" font-size="11">{i}</text>'
        )
    return (
        f'<svg id="{chart_id}" class="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}"><text x="4" y="13" font-size="12">{html.escape(title)}</text>{"".join(bars)}</svg>'
    )


def heatmap_svg(grid: list[list[int]], title: str, chart_id: str) -> str:
    """RV (rows, 9 at the top) by CD (columns) counts as shaded cells."""
    top = max(max(row) for row in grid) or 1
    size = CELL * 10
    cells = []
    for rv in range(10):
        for cd in range(10):
            n = grid[rv][cd]
            shade = 255 - round(200 * n / top)
            x, y = 30 + cd * CELL, 20 + (9 - rv) * CELL
            cells.append(
                f'<rect class="cell" x="{x}" y="{y}" width="{CELL}" height="{CELL}" '
                f'fill="rgb({shade},{shade},255)"><title>RV {rv}, CD {cd}: {n}</title></rect>'
            )
    labels = "".join(
        f'<text x="{30 + i * CELL + 9}" y="{size + 34}" font-size="10">{i}</text>'
        f'<text x="14" y="{20 + (9 - i) * CELL + 16}" font-size="10">{i}</text>'
        for i in range(10)
    )
    return (
        f'<svg id="{chart_id}" class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{size + 40}" '
        f'height="{size + 60}">'
        f'<text x="4" y="13" font-size="12">{html.escape(title)}</text>{"".join(cells)}{labels}'
        f'<text x="{size // 2}" y="{size + 52}" font-size="11">CD</text></svg>'
    )


def _table(rows: list[dict[str, Any]], table_id: str) -> str:
    if not rows:
        return f'<p id="{table_id}">none</p>'
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def render(stats: dict[str, Any], title: str = "curate report") -> str:
    """The report page for ``SelectionStats.to_dict()`` plus judge counts."""
    before, after = stats["grid_before"], stats["grid_after"]
    rv_before = [sum(row) for row in before]
    cd_before = [sum(before[rv][cd] for rv in range(10)) for cd in range(10)]
    rv_after = [sum(row) for row in after]
    cd_after = [sum(after[rv][cd] for rv in range(10)) for cd in range(10)]
    flow = [
        {"filter": name, "rows in": rows_in, "dropped": rows_in - rows_out, "rows out": rows_out}
        for name, rows_in, rows_out in filter_flow(stats["rows_in"], stats["dropped"])
    ]
    summary = [
        {"what": k, "value": stats.get(k)}
        for k in (
            "traces",
            "judge_failures",
            "rows_in",
            "kept",
            "sft_rows",
            "pairs",
            "contamination_problems",
            "judge_requests",
            "cache_hits",
            "judge_tokens",
        )
        if k in stats
    ] + [{"what": k, "value": v} for k, v in stats["answers"].items()]
    failures = [
        {"judged quantity": k, "unreadable judgments": v}
        for k, v in (stats.get("judge_failures_by_kind") or {}).items()
    ]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:20px}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:12px;text-align:left;max-width:420px}}
.charts{{display:flex;flex-wrap:wrap;gap:16px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Counts</h2>{_table(summary, "counts")}
<h2>Unreadable judgments (the trace is left unscored)</h2>{_table(failures, "judge-failures")}
<h2>Rows in and out per filter (each row counts at the first filter it fails)</h2>{_table(flow, "filters")}
<h2>Before selection</h2><div class="charts">
{histogram_svg(rv_before, "RV (all scored traces)", "hist-rv-before")}
{histogram_svg(cd_before, "CD (all scored traces)", "hist-cd-before")}
{heatmap_svg(before, "RV by CD (all scored traces)", "heat-before")}</div>
<h2>After selection</h2><div class="charts">
{histogram_svg(rv_after, "RV (kept)", "hist-rv-after")}
{histogram_svg(cd_after, "CD (kept)", "hist-cd-after")}
{heatmap_svg(after, "RV by CD (kept)", "heat-after")}</div>
<h2>Sample kept rows</h2>{_table(stats["samples_kept"], "samples-kept")}
<h2>Sample dropped rows</h2>{_table(stats["samples_dropped"], "samples-dropped")}
</body></html>
"""
