"""dpo with ``rank``: rank-DPO pairs, the teacher's answer chosen over the current student's own.

For every curated SFT example (the prompt and the teacher's answer), the start model (the current
student, usually sft's output) answers the same prompt once; the pair is (prompt, chosen = the
teacher's answer, rejected = the student's). This is EasyDistill's rank-DPO: DPO (Rafailov et al.
2023) whose negatives are the student's own mistakes, on-policy for the student, rather than a worse
teacher trace. A prompt the student answers exactly as the teacher gives no pair (counted).

Beta, as CogPO (DistilQwen2.5-R1) gives it per pair: with ``rank.pair_beta``,
``beta = pair_beta * (1 + pair_beta_scale * gap)``, the gap in [0, 1] from the answer checks
(``distilflow.preference.CORRECT_RANK``: verified right 2 > unverified 1 > wrong 0, halved): a right
teacher against a wrong student is 1, against a right student 0. ``dpo.per_sample_beta`` and
``dpo.beta`` apply as for curate's pairs. References come from curate's ``scored`` rows (same ids).

The student's answers go through the teacher cache (``<output_uri>/cache``): a rerun samples none of
them again. The pairs are written to ``<output_uri>/rank_pairs.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distilflow import records
from distilflow import uri as uris
from distilflow.components.dpo.config import DpoConfig
from distilflow.errors import ConfigError

PAIRS = "rank_pairs.jsonl"


@dataclass
class RankPairs:
    """What rank-DPO built: the pairs, the prompts left out as ties, the student's accuracy."""

    pairs: list[records.PreferencePair]
    ties: int
    student_accuracy: float | None


def references(data_uri: str) -> dict[str, records.Scored]:
    """curate's scored rows by id (the answer check of every trace), or none for a plain JSONL."""
    if data_uri.rstrip("/").endswith(".jsonl"):
        return {}
    try:
        return {r.id: r for r in records.iter_output_rows(data_uri, "scored", records.Scored)}
    except ConfigError:  # an output without scored rows: no references
        return {}


def student_answers(
    config: DpoConfig, model_path: str, prompts: list[list[dict]], cache_uri: str
) -> list[Any]:
    """One answer of the start model to each prompt (through the teacher cache), as ``Completion``s."""
    from distilflow.teachers.cache import TeacherCache
    from distilflow.teachers.cached import CachedTeacher
    from distilflow.teachers.config import TeacherConfig

    rank = config.rank
    student = TeacherConfig(
        backend="transformers",
        model=model_path,
        name="student",
        max_new_tokens=rank.max_new_tokens,  # type: ignore[union-attr]
        temperature=rank.temperature,  # type: ignore[union-attr]
        top_p=rank.top_p,  # type: ignore[union-attr]
        seed=rank.seed,  # type: ignore[union-attr]
        batch_size=rank.batch_size,  # type: ignore[union-attr]
    )
    teacher = CachedTeacher(student, TeacherCache(cache_uri))
    try:
        return [row[0] for row in teacher.generate(prompts, n=1)]
    finally:
        teacher.close()  # free the memory before the trainer loads the policy


def pair_beta(config: DpoConfig, teacher_rank: int, student_rank: int) -> float | None:
    """CogPO's per-pair beta for a (teacher, student) answer-check gap; None without rank.pair_beta."""
    rank = config.rank
    if rank is None or rank.pair_beta is None:
        return None
    gap = max(teacher_rank - student_rank, 0) / 2
    return round(rank.pair_beta * (1 + rank.pair_beta_scale * gap), 6)


def build(
    config: DpoConfig, model_path: str, examples: list[records.SftExample], cache_uri: str
) -> RankPairs:
    """Rank-DPO pairs from curate's SFT examples (see the module docstring)."""
    from distilflow.answers import is_correct
    from distilflow.preference import CORRECT_RANK
    from distilflow.training.data import message_dicts

    checks = references(config.data_uri)
    prompts = [message_dicts(ex.messages[:-1]) for ex in examples]
    answers = student_answers(config, model_path, prompts, cache_uri)
    pairs, ties, right, checked = [], 0, 0, 0
    for ex, answer in zip(examples, answers, strict=True):
        chosen = ex.messages[-1]
        said = ((answer.reasoning or "").strip(), answer.content.strip())
        if said == ((chosen.reasoning_content or "").strip(), chosen.content.strip()):
            ties += 1  # no preference between two equal answers
            continue
        scored = checks.get(ex.id)
        student_ok = None
        if scored is not None and scored.reference:
            student_ok = is_correct(answer.content or answer.reasoning, scored.reference, scored.domain)
            right, checked = right + int(student_ok), checked + 1
        teacher_ok = scored.correct if scored is not None else None
        rejected = records.Message(
            role="assistant", content=answer.content, reasoning_content=answer.reasoning or None
        )
        pairs.append(
            records.PreferencePair(
                id=f"{ex.id}/rank",
                prompt=ex.messages[:-1],
                chosen=[chosen],
                rejected=[rejected],
                beta=pair_beta(config, CORRECT_RANK[teacher_ok], CORRECT_RANK[student_ok]),
            )
        )
    accuracy = right / checked if checked else None
    print(
        f"[dpo] rank-DPO: {len(pairs)} pairs (teacher over student), {ties} ties left out; student accuracy "
        f"{'n/a' if accuracy is None else f'{accuracy:.3f}'} on {checked} checked prompts",
        flush=True,
    )
    if not pairs:
        raise ConfigError(
            f"dpo.rank: the student answered all {len(examples)} prompts of {config.data_uri} exactly as the "
            "teacher; there is nothing to prefer. Raise dpo.rank.temperature or skip dpo"
        )
    return RankPairs(pairs, ties, accuracy)


def pairs_file(output_uri: str) -> str:
    return uris.join(output_uri, PAIRS)
