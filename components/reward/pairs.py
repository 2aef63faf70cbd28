"""Reward data: preference pairs from curate, each problem's CD, and teacher-judged pairwise preferences.

Pairs are ordered by verified correctness (right > unverified > wrong), then by how close the trace's
reasoning verbosity (RV) is to the target for the problem's cognitive difficulty (CD), then by logic:
curate's own rule (``distilflow.preference``, after OmniThought arXiv:2505.10937 and CogPO /
DistilQwen2.5-R1 arXiv:2504.09802), applied with the settings curate ran with. ``preference.jsonl``
holds one best-vs-worst pair per problem; ``scored.jsonl`` gives up to ``pairs_per_problem`` pairs
per problem.

The judge (any teacher backend) compares two answers of the same problem. Each pair is shown twice,
A then B and B then A, so a judge that favours a position cannot decide a pair: with ``p_ab`` the
probability that the first answer is better when A comes first and ``p_ba`` the same when B comes
first, A wins when ``p_ab > 0.5`` and ``p_ba < 0.5``, B wins when both are the other way round, and any
other combination (including a tie) is inconsistent: the pair is dropped and counted. The
position-debiased probability that A is better is ``(p_ab + 1 - p_ba) / 2``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from distilflow import records
from distilflow import uri as uris
from distilflow.outputs import RESOLVED_CONFIG
from distilflow.preference import (
    PROBLEM_FILTERS,
    RvTargets,
    assistant,
    mean_cd,
    pair_target,
    preference_key,
    prompt_messages,
)
from distilflow.records import Message, PreferencePair, Scored

PAIRWISE_TEMPLATE = """You are comparing two answers to the same problem. The better answer reaches the correct \
final answer; between two equally correct answers, the better one reasons soundly with no more words than the \
problem needs.

Problem:
{problem}

Answer 1:
{first}

Answer 2:
{second}

{instruction}"""
"""Version pairwise_v2 of the judge prompt (the answers' reasoning is shown inside <think> tags; v2: the logprobs
instruction says what each digit scores, read after the judge's answer_prefix)."""

INSTRUCTIONS = {
    "logprobs": "Which answer is better? Score 1 if answer 1 is better, 2 if answer 2 is. Reply with the single "
    "digit 1 or 2.",
    "generate": "Which answer is better? Explain briefly, then end with <choice>1</choice> or <choice>2</choice>.",
}
CHOICE_RE = re.compile(r"<choice>\s*([12])\s*</choice>")


@dataclass
class Pair:
    """A preference pair with where its label came from and its problem's CD (None when unknown)."""

    pair: PreferencePair
    cd: float | None = None
    source: str = "curate"
    problem: str = ""

    @property
    def group(self) -> str:
        """The problem the pair belongs to: pairs of one problem stay on one side of the held-out split."""
        return self.problem or self.pair.id.rsplit("/", 1)[0]


@dataclass
class JudgeCounts:
    judged: int = 0
    inconsistent: int = 0
    unparsed: int = 0
    disagreed: int = 0
    first_probs: list[float] = field(default_factory=list)

    @property
    def first_rate(self) -> float | None:
        return sum(self.first_probs) / len(self.first_probs) if self.first_probs else None


# ---------------------------------------------------------------- pairs from curate


def problem_of(pair_id: str) -> str:
    """curate names a pair ``<problem_id>/pair``."""
    return pair_id.rsplit("/", 1)[0] if "/" in pair_id else pair_id


def scored_rows(scored_uri: str) -> dict[str, list[Scored]]:
    """Scored traces by problem id, in file order, from curate's output folder (its scored shards) or a
    ``.jsonl`` file."""
    by_problem: dict[str, list[Scored]] = {}
    for row in records.iter_output_rows(scored_uri, "scored", Scored, unique_ids=False):
        by_problem.setdefault(row.problem_id, []).append(row)
    return by_problem


def selection_config(folder: str | None) -> Any:
    """The selection settings curate ran with (its resolved config), or curate's defaults."""
    import yaml

    from distilflow.components.curate.config import SelectConfig

    path = uris.join(folder, RESOLVED_CONFIG) if folder else None
    if path and uris.exists(path):
        data = yaml.safe_load(uris.read_text(path)) or {}
        return SelectConfig.model_validate({k: v for k, v in data.items() if k in SelectConfig.model_fields})
    return SelectConfig()


def pairs_from_preference(pairs: list[PreferencePair], scored: dict[str, list[Scored]]) -> list[Pair]:
    """curate's pairs, each with its problem's mean CD when scored.jsonl has the problem."""
    out = []
    for p in pairs:
        rows = scored.get(problem_of(p.id))
        out.append(Pair(p, mean_cd(rows) if rows else None, "curate", problem_of(p.id)))
    return out


def pairs_from_scored(scored: dict[str, list[Scored]], select: Any, per_problem: int) -> list[Pair]:
    """Up to ``per_problem`` ordered pairs per problem from its scored traces, widest gap first.

    Traces of problems curate dropped as contaminated or duplicated are not used.
    """
    targets = RvTargets(select)
    out = []
    for problem_id, rows in scored.items():
        rows = [r for r in rows if r.dropped_by not in PROBLEM_FILTERS]
        if len(rows) < 2:
            continue
        cd = mean_cd(rows)
        target = pair_target(rows, targets)

        def key(r: Scored, target: float = target) -> tuple:
            return preference_key(r, target)

        ranked = sorted(rows, key=lambda r: (key(r), r.id), reverse=True)
        candidates = []
        for i, better in enumerate(ranked):
            for worse in ranked[i + 1 :]:
                kb, kw = key(better), key(worse)
                if kb == kw:
                    continue
                gap = (kb[0] - kw[0], kb[1] - kw[1], kb[2] - kw[2])
                candidates.append((gap, better, worse))
        candidates.sort(key=lambda c: (c[0], c[1].id, c[2].id), reverse=True)
        prompt = prompt_messages(rows[0].problem, select.system_prompt)
        for k, (_, better, worse) in enumerate(candidates[:per_problem]):
            pair = PreferencePair(
                id=f"{problem_id}/pair-{k}",
                prompt=prompt,
                chosen=[assistant(better)],
                rejected=[assistant(worse)],
            )
            out.append(Pair(pair, cd, "curate", problem_id))
    return out


# ---------------------------------------------------------------- teacher-judged preferences


def answer_text(messages: list[Message]) -> str:
    """An answer as the judge reads it: reasoning in a <think> block, then the content."""
    parts = []
    for m in messages:
        if m.reasoning_content:
            parts.append(f"<think>\n{m.reasoning_content.strip()}\n</think>\n")
        parts.append(m.content.strip())
    return "\n".join(parts)


def judge_chat(pair: PreferencePair, first: list[Message], second: list[Message], mode: str) -> list[dict]:
    problem = next((m.content for m in reversed(pair.prompt) if m.role == "user"), pair.prompt[-1].content)
    text = PAIRWISE_TEMPLATE.format(
        problem=problem.strip(),
        first=answer_text(first),
        second=answer_text(second),
        instruction=INSTRUCTIONS[mode],
    )
    return [{"role": "user", "content": text}]


def first_probabilities(judge: Any, chats: list[list[dict]], mode: str) -> list[float | None]:
    """For each chat, the probability that answer 1 is better (None: an unreadable verdict, e.g. a
    logprobs verdict whose digits carry too little of the judge's probability)."""
    from distilflow.teachers.protocol import Unreadable

    if mode == "logprobs":
        verdicts = judge.digit_probs(chats, "12")
        return [None if isinstance(p, Unreadable) else p["1"] for p in verdicts]
    found: list[float | None] = []
    for (completion,) in judge.generate(chats, n=1):
        matches = CHOICE_RE.findall(completion.content) or CHOICE_RE.findall(completion.reasoning)
        found.append(None if not matches else 1.0 if matches[-1] == "1" else 0.0)
    return found


def verdict(p_ab: float, p_ba: float) -> str | None:
    """``"a"``, ``"b"`` or None (inconsistent) from the two orders' first-answer probabilities."""
    if p_ab > 0.5 and p_ba < 0.5:
        return "a"
    if p_ab < 0.5 and p_ba > 0.5:
        return "b"
    return None


def judge_pairs(
    pairs: list[Pair], judge: Any, mode: str, policy: str, batch_size: int = 64
) -> tuple[list[Pair], JudgeCounts]:
    """Judge every pair in both orders; return the pairs kept (see ``policy``) and the counts.

    Args:
        pairs: Candidate pairs; ``chosen`` is curate's preferred answer (A), ``rejected`` the other (B).
        judge: A teacher (``distilflow.teachers``): ``digit_probs`` in logprobs mode, ``generate`` otherwise.
        mode: ``logprobs`` or ``generate``.
        policy: ``label``: the judge's winner becomes ``chosen`` (source ``judge``); ``agree``: a pair is
            kept, as curate ordered it, only when the judge's winner is curate's chosen answer.
    """
    from distilflow.progress import Progress

    counts = JudgeCounts()
    kept: list[Pair] = []
    progress = Progress("reward", "pairs judged", len(pairs))
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        chats = []
        for item in batch:
            p = item.pair
            chats.append(judge_chat(p, p.chosen, p.rejected, mode))
            chats.append(judge_chat(p, p.rejected, p.chosen, mode))
        probs = first_probabilities(judge, chats, mode)
        for i, item in enumerate(batch):
            p_ab, p_ba = probs[2 * i], probs[2 * i + 1]
            counts.judged += 1
            if p_ab is None or p_ba is None:
                counts.unparsed += 1
                continue
            counts.first_probs += [p_ab, p_ba]
            winner = verdict(p_ab, p_ba)
            if winner is None:
                counts.inconsistent += 1
                continue
            counts.disagreed += winner == "b"
            if policy == "agree":
                if winner == "a":
                    kept.append(item)
                continue
            p = item.pair
            chosen, rejected = (p.chosen, p.rejected) if winner == "a" else (p.rejected, p.chosen)
            labelled = p.model_copy(update={"chosen": chosen, "rejected": rejected})
            kept.append(Pair(labelled, item.cd, "judge", item.problem))
        progress.update(len(batch))
    return kept, counts
