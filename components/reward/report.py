"""reward's report (``report.html``): the training curves, the calibration gate's verdict and figures,
and the held-out accuracy by CD bin and by label source."""

from __future__ import annotations

import html
from typing import Any

STAGE = "reward"


def report_page(history: list[dict[str, Any]], result: dict[str, Any]) -> str:
    """The training curves (loss, accuracy, margin, learning rate), the gate and accuracy by CD bin."""
    from distilflow.training.report import report_html

    gate = result.get("gate") or {}
    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}
    page = report_html(STAGE, history, ("loss", "accuracy", "margin", "learning_rate"), summary)
    esc = html.escape
    verdict = "passed" if gate.get("passed") else "FAILED: the model was not published"
    lines = [f'<h2 id="gate">Calibration gate: {esc(verdict)}</h2><table id="gate-figures">']
    for key in ("heldout_accuracy", "min_heldout_accuracy", "label_agreement", "min_label_agreement"):
        lines.append(f"<tr><th>{key}</th><td>{esc(str(gate.get(key)))}</td></tr>")
    lines.append("</table>")
    for failure in gate.get("failures") or []:
        lines.append(f"<p class='failure'>{esc(failure)}</p>")
    for title, key in (
        ("Held-out accuracy by CD bin", "heldout_accuracy_by_cd"),
        ("by label source", "heldout_accuracy_by_source"),
    ):
        table = result.get(key) or {}
        lines.append(
            f'<h2>{esc(title)}</h2><table id="{key}"><tr><th>group</th><th>accuracy</th><th>pairs</th></tr>'
        )
        for name, cell in table.items():
            acc = cell.get("accuracy")
            shown = "n/a" if acc is None else f"{acc:.3f}"
            lines.append(f"<tr><td>{esc(name)}</td><td>{shown}</td><td>{cell.get('pairs')}</td></tr>")
        lines.append("</table>")
    return page.replace("</h1>", "</h1>" + "".join(lines), 1)
