"""The rule that orders one problem's scored traces for preference pairs, shared by curate and reward.

A problem's traces are ordered by (``preference_key``):

1. the answer check: verified right > unverified > wrong (``CORRECT_RANK``);
2. how closely the trace's reasoning verbosity (RV) fits the RV target for the problem's mean
   cognitive difficulty (CD) (``RvTargets``): OmniThought (Cai et al. 2025, arXiv:2505.10937)
   annotates chains of thought with RV and CD and finds that the best verbosity of training CoTs
   grows with the problem's difficulty;
3. the judge's logic score.

Pairs of a better and a worse trace of one problem are the preference data of CogPO (Cai et al.
2025, "Training Small Reasoning LLMs with Cognitive Preference Alignment", DistilQwen2.5-R1,
arXiv:2504.09802). curate (``distilflow.components.curate.select``) pairs the best trace with the
worst; reward (``distilflow.components.reward.pairs``) takes several pairs per problem, widest gap
first. Rows that curate dropped as a problem (``PROBLEM_FILTERS``) give no pairs.

Pure functions of ``records.Scored`` rows and the selection settings (curate's ``SelectConfig`` or
anything with the same RV-target fields); cheap to import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from distilflow.prompts import STUDENT_PROMPT, render
from distilflow.records import Message, Scored

# RV targets named by level (on the 0-9 RV scale).
RV_LEVELS = {"low": 2.0, "medium": 4.5, "high": 7.0}
# Problem-level drops (``Scored.dropped_by``): the traces of such a problem make no preference pair.
PROBLEM_FILTERS = ("contaminated", "duplicate", "near_duplicate")
# Rank of an answer check when choosing preference pairs: verified right > unverified > wrong.
CORRECT_RANK = {True: 2, None: 1, False: 0}


class TargetSettings(Protocol):
    """The selection settings the RV target depends on (fields of curate's ``SelectConfig``)."""

    @property
    def cd_bins(self) -> Sequence[float] | None: ...

    @property
    def rv_targets(self) -> Sequence[float | str] | None: ...

    @property
    def rv_target_offset(self) -> float: ...

    @property
    def rv_target_scale(self) -> float: ...


class RvTargets:
    """CD bins and the RV target of each: fixed, a level, or matched to the CD."""

    def __init__(self, c: TargetSettings):
        self.c = c
        self.edges = c.cd_bins
        self.n_bins = len(self.edges) - 1 if self.edges else 1
        targets = c.rv_targets
        if targets is not None and len(targets) == 1:
            targets = list(targets) * self.n_bins
        self.targets = targets

    def matched(self, cd: float) -> float:
        """The RV target matched to a CD: offset + scale * CD, clipped to the 0-9 scale."""
        return min(max(self.c.rv_target_offset + self.c.rv_target_scale * cd, 0.0), 9.0)

    def bin_of(self, cd: float) -> int:
        if not self.edges:
            return 0
        for i in range(self.n_bins):
            if cd < self.edges[i + 1]:
                return i
        return self.n_bins - 1

    def target(self, cd: float) -> float:
        if self.targets is None:
            return self.matched(cd)
        b = self.bin_of(cd)
        value = self.targets[b]
        if value == "matched":
            return self.matched((self.edges[b] + self.edges[b + 1]) / 2 if self.edges else cd)
        return RV_LEVELS[value] if isinstance(value, str) else float(value)


def mean_cd(rows: Sequence[Scored]) -> float:
    return sum(r.cd for r in rows) / len(rows)


def pair_target(rows: Sequence[Scored], targets: RvTargets) -> float:
    """The RV target one problem's traces are compared with: the target for their mean CD."""
    return targets.target(mean_cd(rows))


def preference_key(row: Scored, target: float) -> tuple[int, float, float]:
    """Larger is better: (answer check rank, minus the distance of RV to ``target``, logic), rounded
    so that float noise does not order two traces; equal keys make no pair."""
    return (CORRECT_RANK[row.correct], -round(abs(row.rv - target), 6), round(row.logic, 6))


def prompt_messages(problem: str, system_prompt: str | None, template: str = STUDENT_PROMPT) -> list[Message]:
    """The student's prompt for ``problem`` (``distilflow.prompts``): an optional system message, then
    the user turn rendered from ``template``."""
    system = [Message(role="system", content=system_prompt)] if system_prompt else []
    return system + [Message(role="user", content=render(problem, template))]


def assistant(row: Scored) -> Message:
    """A trace as the assistant message of an SFT example or a pair's chosen/rejected side."""
    return Message(role="assistant", content=row.content, reasoning_content=row.reasoning or None)
