"""The preference ordering rule shared by curate and reward (distilflow.preference) on hand-made rows."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from distilflow.preference import (
    CORRECT_RANK,
    RV_LEVELS,
    RvTargets,
    assistant,
    mean_cd,
    pair_target,
    preference_key,
    prompt_messages,
)
from distilflow.records import Scored

pytestmark = pytest.mark.unit


def row(k: int, correct: bool | None, rv: float, cd: float = 4.0, logic: float = 0.9) -> Scored:
    return Scored(
        id=f"p/t/{k}",
        problem_id="p",
        problem="How many apples?",
        reference="1",
        teacher="t",
        sample=k,
        reasoning=f"reasoning {k}",
        content=f"answer {k}",
        tokens=5,
        finish_reason="stop",
        judge="j",
        rv=rv,
        cd=cd,
        logic=logic,
        correct=correct,
        kept=False,
    )


def settings(**kw):
    base = dict(cd_bins=None, rv_targets=None, rv_target_offset=0.0, rv_target_scale=1.0)
    return SimpleNamespace(**(base | kw))


def test_rv_targets_matched_levels_and_bins():
    matched = RvTargets(settings(rv_target_offset=1.0, rv_target_scale=2.0))
    assert [matched.target(cd) for cd in (0.0, 2.0, 5.0)] == [1.0, 5.0, 9.0]  # clipped to 0-9
    binned = RvTargets(settings(cd_bins=[0, 3, 6, 9], rv_targets=["low", 4.0, "matched"]))
    assert [binned.bin_of(cd) for cd in (0, 2.9, 3, 6, 9)] == [0, 0, 1, 2, 2]
    assert [binned.target(cd) for cd in (1, 4, 8)] == [RV_LEVELS["low"], 4.0, 7.5]  # matched: bin middle
    one = RvTargets(settings(cd_bins=[0, 4.5, 9], rv_targets=["high"]))
    assert one.targets == ["high", "high"] and one.target(1) == one.target(8) == 7.0


def test_order_correctness_then_rv_fit_then_logic():
    rows = [
        row(0, False, 4.0),
        row(1, True, 8.0),
        row(2, True, 4.0),
        row(3, None, 4.0),
        row(4, True, 4.0, logic=0.5),
        row(5, True, 3.0000001),  # within rounding of row 6: the same fit
        row(6, True, 4.9999999),
    ]
    target = pair_target(rows, RvTargets(settings()))
    assert mean_cd(rows) == 4.0 and target == 4.0
    ranked = sorted(rows, key=lambda r: (preference_key(r, target), r.id), reverse=True)
    assert [r.sample for r in ranked] == [2, 4, 6, 5, 1, 3, 0]
    assert preference_key(rows[5], target) == preference_key(rows[6], target)
    assert CORRECT_RANK[True] > CORRECT_RANK[None] > CORRECT_RANK[False]


def test_messages():
    r = row(0, True, 4.0).model_copy(update={"reasoning": ""})
    assert assistant(r).reasoning_content is None and assistant(r).content == "answer 0"
    assert [m.role for m in prompt_messages("q", None)] == ["user"]
    assert [(m.role, m.content) for m in prompt_messages("q", "sys", "{{problem}}")] == [
        ("system", "sys"),
        ("user", "q"),
    ]
    # by default the user turn is the student prompt: the problem, then the instruction
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert prompt_messages("q", None)[-1].content == "q\n" + instruction


def test_same_rule_as_curate():
    from distilflow.components.curate import config, select

    c = config.SelectConfig(preset="7b", rv_targets=["low", "matched", 6.0])
    ours, theirs = RvTargets(c), select.Targets(c)
    assert [ours.target(cd / 2) for cd in range(19)] == [theirs.target(cd / 2) for cd in range(19)]


def test_import_is_light():
    code = "import sys, distilflow.preference; print(sorted(m for m in sys.modules if 'components' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
