"""A simulated LLM judge for curate's rubrics: noisy next-token digit distributions, not exact scores.

It reads a judge prompt built from curate's templates (``judge_rv``, ``judge_cd``, ``judge_logic``:
the rubric's headline names the quantity, ``[Problem]``, ``[Reasoning]`` and ``[Final answer]`` hold the
trace), measures what a careful grader would (``true_score``), and answers the way a real judge model's
next token does (``next_token_distribution``): probability spread over neighbouring digits around a
centre that is off by a few tenths, with some mass on tokens that are not digits. The noise is a
deterministic function of the prompt, so the same question gets the same answer, as from a real
model at temperature 0.

What it measures:

* RV (0-9): words of reasoning per step of the problem (steps from the problem, else one per
  equation), on a log scale calibrated so that one bare line a step scores about 1 and 30 words a
  step 8 (``rv_of_words``); it never looks at which verbosity level made the chain.
* CD (0-9): ``tasks.cd_of`` of the problem's number of steps; for a text that is not one of the
  synthetic problems, its length (longer problems harder).
* logic (0/1): whether every equation in the reasoning is right modulo 10 and the final answer is
  the last value reached; a chain with the subtraction bug fails it.

Pure Python: no torch.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass

from distilflow.synthetic.tasks import apply, cd_of, parse_problem

# Headlines of curate's rubric templates (distilflow/templates/judge_*_v1.txt), one per quantity.
KINDS = {"rv": "REASONING VERBOSITY", "cd": "COGNITIVE DIFFICULTY", "logic": "LOGICAL CORRECTNESS"}
SECTIONS_RE = re.compile(
    r"\[Problem\]\n(?P<problem>.*?)\n\n\[Reasoning\]\n(?P<reasoning>.*?)\n\n\[Final answer\]\n(?P<answer>.*?)(?:\n\n|$)",
    re.DOTALL,
)
EQUATION_RE = re.compile(r"(\d)\s*([+\-*])\s*(\d)\s*=\s*(\d+)")
BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
WORD_RE = re.compile(r"\w+")
# What the judge says instead of a digit some of the time ("The score is ...", markdown, spaces).
NON_DIGITS = ("The", "Score", "**", " ", "\n", "I")


@dataclass(frozen=True)
class Noise:
    """How far the simulated judge is from the truth.

    ``centre``: standard deviation of the error of its belief (RV and CD, in points); ``spread``:
    width of its digit distribution around that belief; ``logic``: standard deviation of the error of
    its probability that a chain is sound; ``other``: probability mass on tokens that are not digits.
    """

    centre: float = 0.5
    spread: float = 0.8
    logic: float = 0.08
    other: float = 0.08


@dataclass(frozen=True)
class JudgePrompt:
    """A judge request read back: which quantity, and the trace it is about."""

    kind: str
    problem: str
    reasoning: str
    answer: str


def read_prompt(text: str) -> JudgePrompt | None:
    """The judged quantity and trace of a rubric prompt, or None when ``text`` is not one."""
    kind = next((k for k, headline in KINDS.items() if headline in text), None)
    sections = SECTIONS_RE.search(text)
    if kind is None or sections is None:
        return None
    return JudgePrompt(kind, sections["problem"], sections["reasoning"], sections["answer"])


def rv_of_words(words_per_step: float) -> float:
    """RV on the 0-9 scale from words of reasoning per step, on a log scale: 5 words (one bare line a
    step, ``2: *3, 5*3=5.``) is 1.0, 30 words is 8.0."""
    if words_per_step <= 0:
        return 0.0
    return min(max(1.0 + 7.0 * math.log(words_per_step / 5.0) / math.log(6.0), 0.0), 9.0)


def chain_is_sound(problem: str, reasoning: str, answer: str) -> bool:
    """Every equation right modulo 10, and the boxed answer equal to the last result reached."""
    equations = EQUATION_RE.findall(reasoning)
    for x, op, b, y in equations:
        if apply(op, int(x), int(b)) != int(y):
            return False
    boxed = BOXED_RE.findall(answer)
    if not equations or not boxed:
        return bool(boxed) and parse_problem(problem) is None
    return boxed[-1].strip() == equations[-1][3]


def true_score(prompt: JudgePrompt) -> float:
    """What a careful grader would answer: RV or CD on 0-9, logic as 0 or 1."""
    parsed = parse_problem(prompt.problem)
    if prompt.kind == "cd":
        if parsed is not None:
            return cd_of(parsed.steps)
        return min(len(WORD_RE.findall(prompt.problem)) / 10.0, 9.0)
    if prompt.kind == "rv":
        steps = parsed.steps if parsed is not None else max(len(EQUATION_RE.findall(prompt.reasoning)), 1)
        return rv_of_words(len(WORD_RE.findall(prompt.reasoning)) / steps)
    return 1.0 if chain_is_sound(prompt.problem, prompt.reasoning, prompt.answer) else 0.0


def _rng(text: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def next_token_distribution(prompt: JudgePrompt, text: str, noise: Noise = Noise()) -> dict[str, float]:
    """The judge's next-token probabilities: digits around a noisy belief, plus a few other tokens.

    ``text`` (the whole request) seeds the noise. RV/CD: a discretised normal over 0-9 centred on the
    true score plus an error; logic: P("1") is 0.9 for a sound chain and 0.15 for an unsound one, plus
    an error. The digits share ``1 - noise.other`` of the mass.
    """
    rng = _rng(text)
    truth = true_score(prompt)
    if prompt.kind == "logic":
        p_one = min(max((0.9 if truth >= 0.5 else 0.15) + rng.gauss(0.0, noise.logic), 0.02), 0.98)
        digits = {"1": p_one, "0": 1.0 - p_one}
    else:
        centre = truth + rng.gauss(0.0, noise.centre)
        weights = {str(d): math.exp(-((d - centre) ** 2) / (2 * noise.spread**2)) for d in range(10)}
        total = sum(weights.values())
        digits = {d: w / total for d, w in weights.items()}
    others = [rng.random() + 0.1 for _ in NON_DIGITS]
    scale = noise.other / sum(others)
    found = {d: p * (1.0 - noise.other) for d, p in digits.items()}
    found.update({t: w * scale for t, w in zip(NON_DIGITS, others, strict=True)})
    return found


def written_judgment(prompt: JudgePrompt, text: str, noise: Noise = Noise()) -> str:
    """A judgment in curate's generate mode: a sentence, then ``<score>N</score>`` with the likeliest digit."""
    probs = next_token_distribution(prompt, text, noise)
    digit = max((t for t in probs if t.isdigit()), key=lambda t: probs[t])
    return f"Having read the {KINDS[prompt.kind].lower()} rubric and the reasoning, my score follows.\n<score>{digit}</score>"
