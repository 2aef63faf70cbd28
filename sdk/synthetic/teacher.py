"""A simulated teacher for the synthetic task: chains of controlled verbosity with a systematic mistake.

For each request it reads the problem from the last user message, draws a verbosity level (uniform
over ``tasks.LEVELS``) and whether this sample carries the subtraction bug (probability
``bug_rate``), and writes the chain with ``tasks.render_chain``: reasoning inside ``<think>`` and the
answer after it, as DeepSeek-R1 or QwQ answer. A sample with the bug applies it at every subtraction
below zero, so its mistakes are one consistent wrong rule; problems without such a subtraction are
always answered right. The draws are a function of the problem and the request's ``seed`` (random
without one, like a sampling server), so a distill run with a seed is reproducible.

With ``chat_template_kwargs: {enable_thinking: false}`` it answers without reasoning. A message that
is not a synthetic problem gets a polite refusal. Pure Python: no torch.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass

from distilflow.synthetic.tasks import LEVELS, ChainProblem, parse_problem, render_chain

REFUSAL = (
    "I am a simulated teacher: I answer only the synthetic problems of distilflow.synthetic.tasks "
    '("Start at D and apply, modulo 10: ...").'
)


@dataclass(frozen=True)
class Sample:
    """One answer of the simulated teacher and how it was drawn."""

    text: str
    level: str | None
    bug: bool


def draw(problem: ChainProblem, seed: int | None, bug_rate: float) -> tuple[str, bool]:
    """(verbosity level, bug) of the sample ``seed`` of ``problem``."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "big")
    digest = hashlib.sha256(f"{problem.text}\x00{seed}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return rng.choice(LEVELS), rng.random() < bug_rate


def answer(question: str, seed: int | None, bug_rate: float, thinking: bool = True) -> Sample:
    """The teacher's reply to ``question`` (a user message) for sample ``seed``."""
    problem = parse_problem(question)
    if problem is None:
        return Sample(REFUSAL, None, False)
    level, bug = draw(problem, seed, bug_rate)
    reasoning, final = render_chain(problem, level, bug)
    text = f"<think>\n{reasoning}\n</think>\n\n{final}" if thinking else final
    return Sample(text, level, bug and problem.buggy())
