"""reward's report (``report.html``): the training curves, the calibration gate's verdict and figures,
and the held-out accuracy by CD bin and by label source, in the shared report style."""

from __future__ import annotations

import html
from typing import Any

from distilflow import report_style as rs

STAGE = "reward"


def gate_section(result: dict[str, Any]) -> str:
    """The gate's verdict, its figures and the held-out accuracy tables."""
    gate = result.get("gate") or {}
    verdict = "passed" if gate.get("passed") else "FAILED: the model was not published"
    css = "good" if gate.get("passed") else "bad"
    keys = ("heldout_accuracy", "min_heldout_accuracy", "label_agreement", "min_label_agreement")
    parts = [f'<h2 id="gate" class="{css}">Calibration gate: {html.escape(verdict)}</h2>']
    parts.append(rs.kv_table([(k.replace("_", " "), gate.get(k)) for k in keys], "gate-figures"))
    parts += [f'<p class="failure bad">{html.escape(f)}</p>' for f in gate.get("failures") or []]
    for title, key in (
        ("Held-out accuracy by CD bin", "heldout_accuracy_by_cd"),
        ("Held-out accuracy by label source", "heldout_accuracy_by_source"),
    ):
        rows = [
            [name, cell.get("accuracy"), cell.get("pairs")] for name, cell in (result.get(key) or {}).items()
        ]
        parts.append(f"<h2>{html.escape(title)}</h2>" + rs.table(["group", "accuracy", "pairs"], rows, key))
    return "".join(parts)


def report_page(history: list[dict[str, Any]], result: dict[str, Any]) -> str:
    """The training curves (loss, accuracy, margin, learning rate), the gate and accuracy by CD bin."""
    from distilflow.training.report import report_html

    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}
    keys = ("loss", "accuracy", "margin", "learning_rate")
    return report_html(STAGE, history, keys, summary, extra=gate_section(result))
