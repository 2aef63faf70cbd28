"""The synthetic task family: chains of operations modulo 10, with difficulty and verbosity levels.

A problem starts from a digit and applies ``k`` operations (``+b``, ``-b``, ``*b`` with ``b`` in
1-9), every result taken modulo 10; ``k`` (1 to ``MAX_STEPS``) is the difficulty and plays the role
of OmniThought's Cognitive Difficulty (CD, arXiv:2505.10937): ``cd_of(k)``. A chain of thought
solves it one step a line at one of four verbosity levels, which play the role of Reasoning
Verbosity (RV): ``terse`` (one line a step: ``2: *3, 5*3=5.``), ``brief`` (and the new value),
``detailed`` (a plan, and each step restated in words) and ``exhaustive`` (detailed, plus a check of
every step). Every level writes the same line for each step; only the words around it differ.

The simulated teacher's systematic mistake is ``apply(..., bug=True)``: when a subtraction would go
below zero (``x - b`` with ``x < b``) it subtracts the smaller number from the larger (``b - x``)
instead of wrapping around modulo 10, the "smaller-from-larger" bug, one of the commonest consistent
bugs in children's subtraction (Brown and Burton, "Diagnostic models for procedural bugs in basic
mathematical skills", Cognitive Science 2, 1978). One consistent wrong rule, not noise: a student that
imitates it learns the rule.

Pure Python, no dependencies: the package imports without torch.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

OPS = ("+", "-", "*")
MAX_STEPS = 5
LEVELS = ("terse", "brief", "detailed", "exhaustive")
MODULUS = 10

PROBLEM_RE = re.compile(
    r"Start at (?P<start>\d) and apply, modulo (?P<mod>\d+):\n"
    r"(?P<ops>1: [+\-*]\d(?:\n\d: [+\-*]\d)*)\nWhat is the result\?"
)
OP_RE = re.compile(r"(\d): ([+\-*])(\d)")


def cd_of(steps: int) -> float:
    """The cognitive difficulty (0-9 scale) of a problem with ``steps`` operations: 1 step is 1.0,
    each more step adds 1.75 (5 steps: 8.0)."""
    return 1.0 + 1.75 * (steps - 1)


def apply(op: str, x: int, b: int, bug: bool = False) -> int:
    """``x op b`` modulo 10; with ``bug`` a subtraction below zero gives ``b - x`` (smaller from larger)."""
    if op == "+":
        return (x + b) % MODULUS
    if op == "*":
        return (x * b) % MODULUS
    if op == "-":
        if bug and x < b:
            return b - x
        return (x - b) % MODULUS
    raise ValueError(f"unknown operation {op!r}; use one of {OPS}")


@dataclass(frozen=True)
class Step:
    """One line of a solution: ``value op operand = result``."""

    value: int
    op: str
    operand: int
    result: int

    @property
    def equation(self) -> str:
        return f"{self.value}{self.op}{self.operand}={self.result}"


@dataclass(frozen=True)
class ChainProblem:
    """Start from ``start`` and apply ``ops`` (operation, operand) in order, modulo 10."""

    id: str
    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def steps(self) -> int:
        """The difficulty: how many operations."""
        return len(self.ops)

    @property
    def text(self) -> str:
        ops = "\n".join(f"{i}: {op}{b}" for i, (op, b) in enumerate(self.ops, 1))
        return f"Start at {self.start} and apply, modulo {MODULUS}:\n{ops}\nWhat is the result?"

    def solve(self, bug: bool = False) -> list[Step]:
        """The steps of the solution (with the subtraction bug when ``bug``)."""
        found, x = [], self.start
        for op, b in self.ops:
            y = apply(op, x, b, bug)
            found.append(Step(x, op, b, y))
            x = y
        return found

    def answer(self, bug: bool = False) -> int:
        steps = self.solve(bug)
        return steps[-1].result if steps else self.start

    def buggy(self) -> bool:
        """Whether the subtraction bug changes the final answer of this problem."""
        return self.answer(bug=True) != self.answer()

    def record(self) -> dict[str, str]:
        """The problem as a ``distilflow.records.Problem`` row."""
        return {"id": self.id, "problem": self.text, "answer": str(self.answer()), "domain": "math"}


def parse_problem(text: str, problem_id: str = "") -> ChainProblem | None:
    """The problem a text states (anywhere in it), or None when it states none."""
    match = PROBLEM_RE.search(text)
    if match is None or int(match.group("mod")) != MODULUS:
        return None
    found = OP_RE.findall(match.group("ops"))
    if [int(i) for i, _, _ in found] != list(range(1, len(found) + 1)):
        return None
    ops = tuple((op, int(b)) for _, op, b in found)
    return ChainProblem(problem_id, int(match.group("start")), ops)


OPERANDS = tuple(range(1, MODULUS))


def capacity(steps: int, ops: tuple[str, ...] = OPS, operands: tuple[int, ...] = OPERANDS) -> int:
    """How many distinct problems of ``steps`` operations drawn from ``ops`` and ``operands`` exist."""
    return MODULUS * (len(ops) * len(operands)) ** steps


def generate(
    count: int,
    seed: int,
    prefix: str = "p",
    steps: tuple[int, ...] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    ops: tuple[str, ...] = OPS,
    operands: tuple[int, ...] = OPERANDS,
) -> list[ChainProblem]:
    """``count`` distinct problems, their difficulties cycling through ``steps`` (default 1..MAX_STEPS),
    their operations drawn from ``ops`` and ``operands`` (default: all of ``OPS``, 1-9).

    Deterministic in ``seed``; ids are ``<prefix>-<index>``. No two share a text, and none has a
    text in ``exclude`` (e.g. the training problems, when drawing held-out ones).
    """
    levels = steps or tuple(range(1, MAX_STEPS + 1))
    if any(not 1 <= k <= MAX_STEPS for k in levels):
        raise ValueError(f"steps {levels} must lie within 1..{MAX_STEPS}")
    if not ops or set(ops) - set(OPS):
        raise ValueError(f"ops {ops} must be some of {OPS}")
    if not operands or set(operands) - set(OPERANDS):
        raise ValueError(f"operands {operands} must be some of {OPERANDS}")
    excluded = [parse_problem(text) for text in exclude]
    for k in set(levels):
        wanted = -(-count * levels.count(k) // len(levels))
        taken = sum(1 for q in excluded if q is not None and q.steps == k)
        if wanted > capacity(k, ops, operands) - taken:
            raise ValueError(
                f"{count} problems put {wanted} at {k} step(s), but only {capacity(k, ops, operands)} such problems exist "
                f"({taken} of them excluded); ask for fewer problems or harder ones"
            )
    rng = random.Random(seed)
    seen: set[str] = set(exclude)
    found: list[ChainProblem] = []
    while len(found) < count:
        k = levels[len(found) % len(levels)]
        start = rng.randrange(MODULUS)
        drawn = tuple((rng.choice(ops), rng.choice(operands)) for _ in range(k))
        problem = ChainProblem(f"{prefix}-{len(found):05d}", start, drawn)
        if problem.text in seen:
            continue
        seen.add(problem.text)
        found.append(problem)
    return found


def render_chain(problem: ChainProblem, level: str, bug: bool = False) -> tuple[str, str]:
    """(reasoning, answer section) of a solution at verbosity ``level`` (see ``LEVELS``)."""
    steps = problem.solve(bug)
    result = steps[-1].result if steps else problem.start
    k = problem.steps
    # Every level writes the same core line per step ("2: *3, 5*3=5."); more verbose levels add words
    # around it, so a student learns one way of computing whichever level it reads.
    core = [f"{i}: {s.op}{s.operand}, {s.equation}." for i, s in enumerate(steps, 1)]
    if level == "terse":
        lines = core
    elif level == "brief":
        lines = [f"{line} Now {s.result}." for line, s in zip(core, steps, strict=True)]
    elif level in ("detailed", "exhaustive"):
        check = level == "exhaustive"
        lines = [f"Start from {problem.start} and apply {k} operations, modulo {MODULUS}."]
        if check:
            lines[0] += " Check each step."
        for line, s in zip(core, steps, strict=True):
            line += f" The value was {s.value}, and {s.op}{s.operand} takes it to {s.result}."
            if check:
                line += f" Check: {s.equation} holds, so the value is now {s.result}."
            lines.append(line)
        if check:
            lines.append(f"All {k} steps are checked.")
        lines.append(f"The result is {result}.")
    else:
        raise ValueError(f"unknown verbosity level {level!r}; use one of {LEVELS}")
    return "\n".join(lines), f"The result is \\boxed{{{result}}}."


def student_corpus(count: int = 300, seed: int = 0) -> list[str]:
    """Texts covering the task's vocabulary (problems, every chain level, answers) to train a
    student tokenizer on, so that digits and operators are tokens of their own."""
    texts = []
    for i, p in enumerate(generate(count, seed, prefix="corpus")):
        reasoning, answer = render_chain(p, LEVELS[i % len(LEVELS)])
        texts += [p.text, reasoning, answer]
    return texts
