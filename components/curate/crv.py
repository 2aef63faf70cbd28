"""CRV refinement (Critique-Rethink-Verify, DistilQwen2.5-R1: Cai et al. 2025, arXiv:2504.09802).

For each scored trace: a critic labels the reasoning easy / medium / hard *for the named student
size* (the judge model with ``crv_critic_v1``, or the judged CD against two thresholds); easy ones
are expanded (``crv_expand_v1``), hard ones simplified (``crv_simplify_v1``); a rewrite replaces
the original only if it states the same final answer as the original and, with a reference, is
still correct. Every decision is recorded on the row (``crv_level``, ``crv_outcome``). Traces
with a wrong answer are not rewritten.
"""

from __future__ import annotations

import re
from typing import Any

from distilflow import answers
from distilflow.records import Scored

LEVEL_RE = re.compile(r"<level>\s*(easy|medium|hard)\s*</level>", re.IGNORECASE)
THINK_RE = re.compile(r"<think>(.*?)</think>(.*)", re.DOTALL)
REWRITE_TEMPLATES = {"easy": "crv_expand_v1", "hard": "crv_simplify_v1"}
OUTCOMES = {"easy": "expanded", "hard": "simplified"}


def _chat(template: str, row: Scored, student: str) -> list[dict]:
    from distilflow import templates

    text = templates.load(template).render(
        problem=row.problem,
        reasoning=row.reasoning or "(none)",
        answer=row.content or "(none)",
        student=student,
    )
    return [{"role": "user", "content": text}]


def critic_levels(
    teacher: Any, rows: list[Scored], student: str, method: str, easy_below: float, hard_above: float
) -> list[str | None]:
    """easy / medium / hard per row; None where the critic's reply has no <level> tag."""
    if method == "cd":
        return ["easy" if r.cd < easy_below else "hard" if r.cd > hard_above else "medium" for r in rows]
    replies = teacher.generate([_chat("crv_critic_v1", r, student) for r in rows], n=1)
    levels = []
    for (reply,) in replies:
        found = LEVEL_RE.findall(reply.reasoning + "\n" + reply.content)
        levels.append(found[-1].lower() if found else None)
    return levels


def split_rewrite(reasoning: str, content: str) -> tuple[str, str] | None:
    """(reasoning, answer section) of a rewrite: the teacher's own split, or a <think> block in the text."""
    if reasoning.strip():
        return reasoning.strip(), content.strip()
    match = THINK_RE.search(content)
    if match and match.group(1).strip():
        return match.group(1).strip(), match.group(2).strip()
    return None


def verify(row: Scored, reasoning: str, content: str) -> str | None:
    """Why a rewrite must not replace ``row`` (None: it may): its answer must be the original's and,
    with a reference, still correct."""
    if row.predicted is None:
        return "the original states no final answer to compare with"
    new = answers.extract_answer(content, row.domain)
    if new is None:
        return "the rewrite states no final answer"
    if not answers.is_correct(content, row.predicted, row.domain):
        return f"answer changed: {row.predicted!r} -> {new!r}"
    if row.reference is not None and not answers.is_correct(content, row.reference, row.domain):
        return "the rewrite's answer does not match the reference"
    return None


def refine(teacher: Any, rows: list[Scored], config: Any) -> tuple[list[Scored], list[int]]:
    """CRV over a batch: rows with crv_level/crv_outcome set (and rewritten text where verified), and
    the indices of the rewritten rows (to be scored again)."""
    out = list(rows)
    todo = [i for i, r in enumerate(rows) if r.correct is not False]
    for i, r in enumerate(rows):
        if r.correct is False:
            out[i] = r.model_copy(update={"crv_outcome": "skipped: wrong answer"})
    levels = critic_levels(
        teacher,
        [rows[i] for i in todo],
        config.crv_student,
        config.crv_critic,
        config.crv_easy_below,
        config.crv_hard_above,
    )
    rewrite = []
    for i, level in zip(todo, levels, strict=True):
        if level is None:
            out[i] = rows[i].model_copy(update={"crv_outcome": "rejected: the critic gave no <level>"})
        elif level == "medium":
            out[i] = rows[i].model_copy(update={"crv_level": level, "crv_outcome": "unchanged"})
        else:
            rewrite.append((i, level))
    if not rewrite:
        return out, []
    chats = [_chat(REWRITE_TEMPLATES[level], rows[i], config.crv_student) for i, level in rewrite]
    replies = teacher.generate(chats, n=1)
    changed = []
    for (i, level), (reply,) in zip(rewrite, replies, strict=True):
        parts = split_rewrite(reply.reasoning, reply.content)
        why = "the rewrite has no <think> reasoning" if parts is None else verify(rows[i], *parts)
        if why is not None:
            out[i] = rows[i].model_copy(update={"crv_level": level, "crv_outcome": f"rejected: {why}"})
            continue
        reasoning, content = parts
        out[i] = rows[i].model_copy(
            update={
                "reasoning": reasoning,
                "content": content,
                "tokens": reply.tokens,
                "predicted": answers.extract_answer(content, rows[i].domain),
                "crv_level": level,
                "crv_outcome": OUTCOMES[level],
            }
        )
        changed.append(i)
    return out, changed
