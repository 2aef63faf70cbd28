"""Pre-annotated corpora: traces that already carry RV, CD and logic scores (OmniThought's layout, or
any source mapped onto ``records.Scored``), read into curate's judged rows without a judge call.

The scores are taken as given on distilflow's scales (RV and CD 0-9, logic 0-1); a source scoring on
another scale is refused unless its ``score_ranges`` maps it (``distilflow.sources``). Answers are
checked against a reference where the corpus has one and states no verdict itself; rows whose text
holds chat-template control tokens are rejected as in judging. Selection then runs exactly as after
judging (``run.select_and_publish``): this reproduces ThoughtX's data mix from the released
annotations (OmniThought, Cai et al. 2025, arXiv:2505.10937).
"""

from __future__ import annotations

from typing import Any

from distilflow.records import Scored, template_tokens
from distilflow.sources import describe, iter_records

REPORT_EVERY = 100_000


def annotator(config: Any) -> str:
    """The name a corpus's scores go by in the result: the corpus and its layout."""
    return f"annotated: {describe(config.corpus)}"


def load_corpus(config: Any, judged_path: str, judged: Any) -> Any:
    """Write the corpus's Scored rows (``kept`` false) to ``judged_path``; fill and return ``judged``
    (rows read, rejected for template tokens; no requests, no judge failures)."""
    from distilflow.components.curate.run import check_answer

    print(f"[curate] reading scored traces from {describe(config.corpus)}; no judge is called", flush=True)
    with open(judged_path, "w", encoding="utf-8") as out:
        for row in iter_records(config.corpus, Scored):
            judged.traces += 1
            if judged.traces % REPORT_EVERY == 0:  # the total is unknown until the corpus is read
                print(f"[curate] {judged.traces} scored traces read", flush=True)
            if template_tokens(row.problem, row.reasoning, row.content):
                judged.rejected += 1
                continue
            out.write(_verified(row, check_answer).model_dump_json() + "\n")
    print(
        f"[curate] {judged.traces} scored traces read, {judged.rejected} rejected (template tokens)",
        flush=True,
    )
    return judged


def _verified(row: Scored, check_answer: Any) -> Scored:
    """The row with its answer checked against its reference, unless the corpus gave a verdict."""
    if row.correct is not None:
        return row
    correct, predicted = check_answer(row)
    return row.model_copy(update={"correct": correct, "predicted": row.predicted or predicted, "kept": False})
