"""Small corpora in the published layouts of released datasets, written by the tests (no download).

``omnithought_rows``: rows in OmniThought's layout (alibaba-pai/OmniThought, dataset card): one row per
``question``, its chains of thought in the ``reasoning`` list, each with ``thought``, ``solution``,
``full_response``, ``teacher``, ``thought_correctness_verify`` and ``Reasoning_Verbosity`` /
``Cognitive_Difficulty`` structs ``{level, judge}`` on a 0-9 scale.
"""

from __future__ import annotations

import io
from typing import Any


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    """``rows`` as a Parquet file (pyarrow infers nested structs and lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def omnithought_trace(teacher: str, rv: int, cd: int, valid: bool, answer: str) -> dict[str, Any]:
    thought = "Let me think. " * (rv + 1)
    solution = f"The answer is \\boxed{{{answer}}}."
    return {
        "thought": thought,
        "solution": solution,
        "full_response": f"<think>{thought}</think>{solution}",
        "teacher": teacher,
        "thought_correctness_verify": valid,
        "Reasoning_Verbosity": {"level": rv, "judge": "QwQ-32B"},
        "Cognitive_Difficulty": {"level": cd, "judge": "QwQ-32B"},
    }


def omnithought_rows(problems: int = 6) -> list[dict[str, Any]]:
    """``problems`` questions with three chains each: RV 2/5/8, CD growing with the question, the
    middle chain judged invalid on odd questions; every answer is the question's number."""
    rows = []
    for q in range(problems):
        cd = min(9, q * 9 // max(problems - 1, 1))
        traces = [
            omnithought_trace("DeepSeek-R1", 2, cd, True, str(q)),
            omnithought_trace("QwQ-32B", 5, cd, q % 2 == 0, str(q)),
            omnithought_trace("DeepSeek-R1", 8, cd, True, str(q)),
        ]
        rows.append({"question": f"Question {q}: what is {q} plus zero?", "reasoning": traces})
    return rows
