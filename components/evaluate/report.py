"""Reports of the ``evaluate`` stage: comparison table, Markdown, and a self-contained HTML page
(comparison table, accuracy vs mean tokens scatter in inline SVG, per-difficulty breakdown,
sample failures, protocol and model identity per score)."""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

from distilflow import report_style as rs

COLUMNS = (
    ("model", "model"),
    ("benchmark", "benchmark"),
    ("accuracy", "accuracy (avg@k)"),
    ("pass", "pass@k"),
    ("mean_tokens", "mean tokens"),
    ("median_tokens", "median tokens"),
    ("mean_tokens_correct", "mean tokens (correct)"),
    ("accuracy_per_1k_tokens", "accuracy / 1k tokens"),
    ("truncation_rate", "truncated"),
    ("size", "problems x samples"),
)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def failure_view(row: dict[str, Any]) -> dict[str, Any]:
    """A failed answer, shortened for the report."""
    tests = row.get("tests") or {}
    first = tests.get("first_failure") or {}
    return {
        "problem_id": row["problem_id"],
        "sample": row["sample"],
        "difficulty": row.get("difficulty"),
        "reference": (row.get("reference") or "")[:200],
        "predicted": (row.get("predicted") or "")[:400] if row.get("predicted") is not None else None,
        "finish_reason": row.get("finish_reason"),
        "tokens": row.get("tokens"),
        "response_tail": (row.get("response") or "")[-600:],
        "test_status": first.get("status"),
    }


def comparison_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        m = r["metrics"]
        rows.append(
            {
                "model": r["model_name"],
                "benchmark": r["benchmark"],
                "accuracy": m["accuracy"],
                "pass": m["pass_at_k"],
                "k": m["samples"],
                "mean_tokens": m["mean_tokens"],
                "median_tokens": m["median_tokens"],
                "mean_tokens_correct": m["mean_tokens_correct"],
                "accuracy_per_1k_tokens": m["accuracy_per_1k_tokens"],
                "truncation_rate": m["truncation_rate"],
                "size": f"{m['n_problems']} x {m['samples']}",
            }
        )
    return rows


def _cells(row: dict[str, Any]) -> list[str]:
    out = []
    for key, _ in COLUMNS:
        value = row[key]
        if key == "pass":
            out.append(f"{_fmt(value)} (k={row['k']})")
        elif key in ("mean_tokens", "median_tokens", "mean_tokens_correct"):
            out.append(_fmt(value, 1))
        else:
            out.append(_fmt(value))
    return out


def comparison_markdown(runs: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in comparison_rows(runs)]
    return "\n".join(lines) + "\n"


def comparison_csv(runs: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    rows = comparison_rows(runs)
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["model"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _metric_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    k = m["samples"]
    rows = [(f"accuracy (avg@{k})", _fmt(m["accuracy"]))]
    rows += [(f"pass@{kk}", _fmt(v)) for kk, v in m["pass_k"].items()]
    rows += [
        ("mean output tokens", _fmt(m["mean_tokens"], 1)),
        ("median output tokens", _fmt(m["median_tokens"], 1)),
        ("mean tokens, correct answers", _fmt(m["mean_tokens_correct"], 1)),
        ("median tokens, correct answers", _fmt(m["median_tokens_correct"], 1)),
        ("accuracy per 1,000 tokens", _fmt(m["accuracy_per_1k_tokens"])),
        ("truncated answers", _fmt(m["truncated"])),
        ("problems", str(m["n_problems"])),
        ("samples per problem", str(k)),
    ]
    return rows


def _identity_text(model: dict[str, Any]) -> str:
    digest = model.get("content_sha256") or model.get("files_sha256") or model.get("hash")
    return f"`{model.get('uri')}` ({model.get('hash', 'files')} sha256 `{digest}`, files sha256 `{model.get('files_sha256', '-')}`)"


def render_markdown(runs: list[dict[str, Any]]) -> str:
    lines = ["# Evaluation", "", "## Comparison", "", comparison_markdown(runs)]
    for r in runs:
        m = r["metrics"]
        lines += [f"## {r['model_name']} on {r['benchmark']}", "", f"Model: {_identity_text(r['model'])}", ""]
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _metric_rows(m)]
        lines += ["", "| difficulty | answers | accuracy | mean tokens |", "|---|---|---|---|"]
        for level, d in m["by_difficulty"].items():
            lines.append(f"| {level} | {d['n_answers']} | {d['accuracy']:.4f} | {d['mean_tokens']:.1f} |")
        lines += ["", "### Protocol", "", "| setting | value |", "|---|---|"]
        for key, value in r["protocol"].items():
            shown = json.dumps(value, ensure_ascii=False).replace("|", "\\|")
            lines.append(f"| {key} | `{shown}` |")
        lines.append("")
    return "\n".join(lines) + "\n"


def scatter_svg(runs: list[dict[str, Any]], width: int = 640, height: int = 360) -> str:
    """Accuracy (y) against mean output tokens (x): one point per model and benchmark."""
    pad_l, pad_r, pad_t, pad_b = 60, 160, 20, 45
    pts = [
        (r["model_name"], r["benchmark"], r["metrics"]["mean_tokens"], r["metrics"]["accuracy"]) for r in runs
    ]
    xticks = rs.nice_ticks(0.0, max([p[2] for p in pts] + [1.0]) * 1.05, 6)
    xmax = xticks[-1]
    models = list(dict.fromkeys(p[0] for p in pts))
    colour = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(x: float) -> float:
        return pad_l + pw * x / xmax

    def sy(y: float) -> float:
        return pad_t + ph * (1 - y)

    parts = [
        f"<svg id='scatter' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='accuracy vs mean output tokens'>",
        f"<line x1='{pad_l}' y1='{pad_t + ph}' x2='{pad_l + pw}' y2='{pad_t + ph}' stroke='#333'/>",
        f"<line x1='{pad_l}' y1='{pad_t}' x2='{pad_l}' y2='{pad_t + ph}' stroke='#333'/>",
    ]
    for i in range(6):
        y = i / 5
        parts.append(
            f"<text x='{pad_l - 8}' y='{sy(y) + 4:.1f}' font-size='11' text-anchor='end'>{y:.1f}</text>"
        )
    for x in xticks:
        parts.append(
            f"<text x='{sx(x):.1f}' y='{pad_t + ph + 16}' font-size='11' text-anchor='middle'>{rs.fmt(x)}</text>"
        )
    parts.append(
        f"<text x='{pad_l + pw / 2}' y='{height - 6}' font-size='12' text-anchor='middle'>mean output tokens</text>"
    )
    parts.append(
        f"<text x='14' y='{pad_t + ph / 2}' font-size='12' text-anchor='middle' "
        f"transform='rotate(-90 14 {pad_t + ph / 2})'>accuracy</text>"
    )
    placed: list[tuple[float, float, float]] = []
    for model, bench, x, y in pts:
        label = html.escape(f"{model} / {bench}: accuracy {y:.3f}, {x:.0f} tokens")
        parts.append(
            f"<circle class='point' cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='6' fill='{colour[model]}' "
            f"fill-opacity='0.8' data-model='{html.escape(model)}' data-benchmark='{html.escape(bench)}'>"
            f"<title>{label}</title></circle>"
        )
        # Label a point only where it does not overprint an earlier label (the tooltip always names it).
        lx, ly = sx(x) + 8, sy(y) - 6
        width = 6 * len(bench)
        if all(lx + width < px or px + pw_ < lx or abs(ly - py) > 12 for px, py, pw_ in placed):
            placed.append((lx, ly, width))
            parts.append(f"<text x='{lx:.1f}' y='{ly:.1f}' font-size='10'>{html.escape(bench)}</text>")
    for i, model in enumerate(models):
        y = pad_t + 14 + i * 18
        parts.append(
            f"<rect x='{pad_l + pw + 14}' y='{y - 9}' width='10' height='10' fill='{colour[model]}'/>"
        )
        parts.append(f"<text x='{pad_l + pw + 30}' y='{y}' font-size='11'>{html.escape(model)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_cells(row: dict[str, Any]) -> list[Any]:
    """A comparison row for the HTML page: values rounded by ``report_style.fmt``, pass@k with its k."""
    return [f"{rs.fmt(row['pass'])} (k={row['k']})" if key == "pass" else row[key] for key, _ in COLUMNS]


def render_html(runs: list[dict[str, Any]]) -> str:
    comparison = rs.table(
        [h for _, h in COLUMNS], [_html_cells(r) for r in comparison_rows(runs)], css_class="comparison"
    )
    difficulty_rows = []
    for r in runs:
        for level, d in r["metrics"]["by_difficulty"].items():
            difficulty_rows.append(
                [r["model_name"], r["benchmark"], level, d["n_answers"], d["accuracy"], d["mean_tokens"]]
            )
    difficulty = rs.table(
        ["model", "benchmark", "difficulty", "answers", "accuracy", "mean tokens"],
        difficulty_rows,
        css_class="difficulty",
    )
    failures = []
    for r in runs:
        for f in r["failures"]:
            failures.append(
                "<details class='failure'><summary>"
                + html.escape(
                    f"{r['model_name']} / {r['benchmark']} / {f['problem_id']} #{f['sample']}: "
                    f"predicted {f['predicted'] if f['predicted'] is not None else '(none)'!s:.80} "
                    f"vs reference {f['reference']!s:.80}"
                    + (f" [{f['test_status']}]" if f.get("test_status") else "")
                    + f", {f['tokens']} tokens, {f['finish_reason']}"
                )
                + f"</summary><pre>{html.escape(f['response_tail'])}</pre></details>"
            )
    sections = []
    for r in runs:
        proto = [[k, json.dumps(v, ensure_ascii=False)] for k, v in r["protocol"].items()]
        ident = [[k, json.dumps(v, ensure_ascii=False)] for k, v in r["model"].items()]
        sections.append(
            f"<h3>{html.escape(r['model_name'])} on {html.escape(r['benchmark'])}</h3>"
            + _table(["metric", "value"], [list(x) for x in _metric_rows(r["metrics"])], "metrics")
            + "<h4>Model</h4>"
            + _table(["field", "value"], ident, "identity")
            + "<h4>Protocol</h4>"
            + _table(["setting", "value"], proto, "protocol")
        )
    body = (
        f"<h2>Comparison</h2>{comparison}<h2>Accuracy vs mean output tokens</h2>{scatter_svg(runs)}"
        f"<h2>By difficulty</h2>{difficulty}"
        f"<h2>Sample failures</h2>{''.join(failures) or '<p>none</p>'}"
        f"<h2>Scores, models and protocols</h2>{''.join(sections)}"
    )
    return rs.page("Evaluation", body, "accuracy and tokens spent, under a pinned protocol")
