"""validate's calibration probe of a logprobs judge: two judgments whose answers are obvious.

A judge read from its next-token digit probabilities works only when the score is the first token
it generates. A reasoning model (QwQ, DeepSeek-R1, Qwen3 thinking) starts with its chain of thought
unless the server continues a prefilled reply with thinking off (``judge.answer_prefix``); a server
may return no top logprobs at all. Each failure would surface only after the whole distill stage, as
a curate run whose every judgment is unreadable. So before any work starts, validate asks the judge
the very judgment the stage will ask, for an obviously low case and an obviously high case, through
the same backend code, and refuses the config with the fix named unless both are readable and
ordered: curate's logic rubric on broken and sound reasoning, and reward's pairwise comparison of a
right and a wrong answer in both orders.
"""

from __future__ import annotations

from typing import Any

from distilflow.errors import BackendError

PROBLEM = "What is 17 + 25?"
SOUND = (
    "17 + 25: add the tens, 10 + 20 = 30, then the ones, 7 + 5 = 12. 30 + 12 = 42. "
    "Check: 42 - 25 = 17. So the sum is 42."
)
BROKEN = "17 + 25: seventeen is a prime, so the sum is 17 * 25 = 9, and 9 + 1 = 7. So the sum is 7."
RIGHT, WRONG = "The answer is \\boxed{42}.", "The answer is \\boxed{7}."

FIXES = (
    "set {mode_field}: generate (the judge writes <score>N</score> after thinking), use a non-thinking judge, "
    "or serve the judge where a prefilled reply is continued with thinking off (vLLM or SGLang; "
    "{judge_field}.answer_prefix) and top logprobs are returned"
)


def curate_probe() -> tuple[list[list[dict]], str, str]:
    """The judgments of curate's probe (logic rubric: broken reasoning, then sound), their digits, and
    the quantity read."""
    from distilflow.components.curate.run import judge_chats
    from distilflow.records import Trace

    def trace(reasoning: str, answer: str) -> Trace:
        return Trace(
            id="probe/t/0",
            problem_id="probe",
            problem=PROBLEM,
            teacher="probe",
            sample=0,
            reasoning=reasoning,
            content=answer,
            tokens=1,
            finish_reason="stop",
        )

    chats = judge_chats([trace(BROKEN, WRONG), trace(SOUND, RIGHT)], "logic", "logprobs")
    return chats, "01", "1"


def reward_probe() -> tuple[list[list[dict]], str, str]:
    """The judgments of reward's probe (a wrong answer first, then a right one first), their digits,
    and the digit read (answer 1 is better)."""
    from distilflow.components.reward.pairs import judge_chat
    from distilflow.records import Message, PreferencePair

    right = [Message(role="assistant", content=RIGHT, reasoning_content=SOUND)]
    wrong = [Message(role="assistant", content=WRONG, reasoning_content=BROKEN)]
    pair = PreferencePair(
        id="probe/pair", prompt=[Message(role="user", content=PROBLEM)], chosen=right, rejected=wrong
    )
    return [judge_chat(pair, wrong, right, "logprobs"), judge_chat(pair, right, wrong, "logprobs")], "12", "1"


PROBES = {"curate": ("judge", "mode", curate_probe), "reward": ("judge", "judge_mode", reward_probe)}


def probed_judge(stage: str, cfg: Any) -> tuple[str, Any] | None:
    """(field, judge config) of a stage's logprobs judge on an endpoint, or None when it has none."""
    if stage not in PROBES:
        return None
    field, mode_field, _ = PROBES[stage]
    judge = getattr(cfg, field, None)
    if judge is None or getattr(cfg, mode_field) != "logprobs" or judge.backend != "openai":
        return None
    return field, judge


def probe(stage: str, judge: Any) -> str | None:
    """Ask the stage's two calibration judgments; None when both are readable and the high case scores
    above the low one, else the problem with its fix."""
    from distilflow.teachers import make_teacher
    from distilflow.teachers.protocol import Unreadable

    field, mode_field, build = PROBES[stage]
    where = f"{stage}.{field}"
    fixes = FIXES.format(mode_field=f"{stage}.{mode_field}", judge_field=where)
    chats, digits, read = build()
    teacher = make_teacher(judge)
    try:
        low, high = teacher.digit_probs(chats, digits)
    except BackendError as exc:
        return f"{where}: calibration probe of the logprobs judge failed: {exc}. Fix: {fixes}"
    finally:
        teacher.close()
    scores = []
    for case, found in (("low", low), ("high", high)):
        if isinstance(found, Unreadable):
            return (
                f"{where}: calibration probe: the judge's answer to the obviously {case} case is unreadable: "
                f"{found.reason} (a reasoning model thinking first, or a judge answering off the scale). "
                f"Fix: {fixes}"
            )
        scores.append(found[read])
    if scores[1] <= scores[0]:
        return (
            f"{where}: calibration probe: the judge gave the obviously high case {scores[1]:.2f} and the "
            f"obviously low case {scores[0]:.2f} (probability of {read!r}): its digits do not follow the "
            f"question. Fix: use a stronger judge, or {fixes}"
        )
    return None
