"""The curate HTML report, in the shared report style: judge counts, rows in/out per filter, RV and CD
histograms and RV-by-CD heat maps before and after selection (inline SVG with ids, no scripts, no
external files) and sample rows."""

from __future__ import annotations

import html
from typing import Any

from distilflow import report_style as rs
from distilflow.components.curate.select import filter_flow

CELL = 24


def histogram_svg(counts: list[int], title: str, chart_id: str, axis: str = "score") -> str:
    """A bar chart of counts for the scores 0..9 (each bar: scores in [i, i+1))."""
    bars = [(str(i), n) for i, n in enumerate(counts)]
    return rs.bar_chart(bars, title, f"{axis} (bin i holds [i, i+1))", "traces", chart_id, width=380)


def heatmap_svg(grid: list[list[int]], title: str, chart_id: str) -> str:
    """RV (rows, 9 at the top) by CD (columns) counts as shaded cells, both axes labelled."""
    top = max(max(row) for row in grid) or 1
    left, head, size = 52, 28, CELL * 10
    cells = []
    for rv in range(10):
        for cd in range(10):
            n = grid[rv][cd]
            shade = 255 - round(200 * n / top)
            x, y = left + cd * CELL, head + (9 - rv) * CELL
            cells.append(
                f'<rect class="cell" x="{x}" y="{y}" width="{CELL}" height="{CELL}" stroke="#fff" '
                f'fill="rgb({shade},{shade},255)"><title>RV {rv}, CD {cd}: {n}</title></rect>'
            )
            if n:
                colour = "#fff" if shade < 130 else "#1d2330"
                cells.append(
                    f'<text x="{x + CELL / 2}" y="{y + 16}" font-size="10" text-anchor="middle" '
                    f'fill="{colour}">{n}</text>'
                )
    labels = "".join(
        f'<text x="{left + i * CELL + CELL / 2}" y="{head + size + 14}" font-size="11" text-anchor="middle">{i}</text>'
        f'<text x="{left - 6}" y="{head + (9 - i) * CELL + 16}" font-size="11" text-anchor="end">{i}</text>'
        for i in range(10)
    )
    mid = head + size / 2
    return (
        f'<svg id="{chart_id}" class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{size + left + 16}" '
        f'height="{size + head + 44}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="{left}" y="18" font-size="14" font-weight="600">{html.escape(title)}</text>{"".join(cells)}'
        f'{labels}<text x="{left + size / 2}" y="{head + size + 36}" font-size="12" text-anchor="middle">'
        f'cognitive difficulty (CD)</text><text x="14" y="{mid}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid})">reasoning verbosity (RV)</text></svg>'
    )


COUNTS = {
    "traces": "traces read",
    "judge_failures": "traces left unscored (unreadable judgment)",
    "rows_in": "scored rows entering selection",
    "kept": "rows kept",
    "sft_rows": "SFT examples written",
    "pairs": "preference pairs written",
    "contamination_problems": "problems matching an evaluation problem",
    "judge_requests": "judge requests sent",
    "cache_hits": "judgments from the cache",
    "judge_tokens": "judge tokens",
}


def _charts(grid: list[list[int]], when: str, what: str) -> str:
    rv = [sum(row) for row in grid]
    cd = [sum(grid[r][c] for r in range(10)) for c in range(10)]
    return (
        '<div class="charts">'
        + histogram_svg(rv, f"RV ({what})", f"hist-rv-{when}", "reasoning verbosity (RV)")
        + histogram_svg(cd, f"CD ({what})", f"hist-cd-{when}", "cognitive difficulty (CD)")
        + heatmap_svg(grid, f"RV by CD ({what})", f"heat-{when}")
        + "</div>"
    )


def render(stats: dict[str, Any], title: str = "curate report") -> str:
    """The report page for ``SelectionStats.to_dict()`` plus judge counts."""
    flow = [
        [name, rows_in, rows_in - rows_out, rows_out]
        for name, rows_in, rows_out in filter_flow(stats["rows_in"], stats["dropped"])
    ]
    counts = [(label, stats[k]) for k, label in COUNTS.items() if k in stats]
    counts += [(k.replace("_", " "), v) for k, v in stats["answers"].items()]
    failures = [[k, v] for k, v in (stats.get("judge_failures_by_kind") or {}).items()]
    body = (
        f"<h2>Counts</h2>{rs.kv_table(counts, 'counts')}"
        "<h2>Unreadable judgments (the trace is left unscored)</h2>"
        + (
            rs.table(["judged quantity", "unreadable judgments"], failures, "judge-failures")
            if failures
            else '<p class="note" id="judge-failures">none</p>'
        )
        + "<h2>Rows in and out per filter (each row counts at the first filter it fails)</h2>"
        + rs.table(["filter", "rows in", "dropped", "rows out"], flow, "filters")
        + f"<h2>Before selection</h2>{_charts(stats['grid_before'], 'before', 'all scored traces')}"
        + f"<h2>After selection</h2>{_charts(stats['grid_after'], 'after', 'kept')}"
        + f"<h2>Sample kept rows</h2>{rs.records_table(stats['samples_kept'], 'samples-kept')}"
        + f"<h2>Sample dropped rows</h2>{rs.records_table(stats['samples_dropped'], 'samples-dropped')}"
    )
    return rs.page(title, body, "judge scores, answer checks and selection")
