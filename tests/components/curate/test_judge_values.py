"""curate's judge scores as values, on the production path: curate's ``run`` -> ``CachedTeacher`` -> the
openai backend -> a loopback server that behaves like a reasoning model (tests/fakes/reasoning_judge_server.py).

Each expected score is computed here from the server's published rule and the trace alone (the
expected value of the judge's digit distribution, OmniThought arXiv:2505.10937), never from
distilflow's code; a judge that thinks first, or whose digits carry little probability, is counted as a
failure with its reason and never scored.
"""

from __future__ import annotations

import json
import os

import pytest

from distilflow import uri as uris
from distilflow.components.curate.config import CurateConfig
from distilflow.components.curate.run import run
from distilflow.outputs import StageOutput
from distilflow.records import Scored, Trace, iter_output_rows, write_jsonl
from tests.fakes.reasoning_judge_server import ReasoningJudgeServer, peaked

# (problem, reference, reasoning, answer): RV follows the reasoning's length, CD the problem's digits,
# logic whether the boxed answer is the sum asked for (the server's rule)
ROWS = [
    ("What is 3 + 4?", "7", "3 plus 4 is 7.", "\\boxed{7}"),
    (
        "What is 3 + 4?",
        "7",
        "Three and four: 3, then 4, 5, 6, 7. Check by counting back: 7 - 4 = 3.",
        "\\boxed{7}",
    ),
    (
        "What is 12 + 30?",
        "42",
        "12 plus 30 is 52 because the tens add to 5 and the ones give 2.",
        "\\boxed{52}",
    ),
    ("What is 120 + 305?", "425", "Add hundreds, tens and ones: 400, 20, 5 gives 425.", "\\boxed{425}"),
]


def distill_output(folder: str) -> str:
    traces = [
        Trace(
            id=f"q{i}/t/0", problem_id=f"q{i}", problem=problem, reference=ref, domain="math", teacher="t",
            sample=0, reasoning=reasoning, content=answer, tokens=10, finish_reason="stop",
        )
        for i, (problem, ref, reasoning, answer) in enumerate(ROWS)
    ]  # fmt: skip
    out = StageOutput(folder, "distill")
    write_jsonl(out.path("traces.jsonl"), traces)
    out.finish(result={"traces": len(traces)})
    return folder


def expected(problem: str, reasoning: str, answer: str) -> dict[str, float]:
    """The scores the server's rule gives, as expected values of its digit distributions."""

    def mean(dist: dict[str, float]) -> float:
        return sum(int(d) * p for d, p in dist.items())

    a, b = (int(x) for x in problem.removeprefix("What is ").rstrip("?").split(" + "))
    digits = sum(c.isdigit() for c in problem)
    return {
        "rv": mean(peaked(min(9, len(reasoning.split()) / 4), "0123456789")),
        "cd": mean(peaked(min(9, digits), "0123456789")),
        "logic": 0.85 if answer == f"\\boxed{{{a + b}}}" else 0.15,
    }


@pytest.fixture
def reasoner():
    servers: list[ReasoningJudgeServer] = []

    def start(**kwargs) -> tuple[ReasoningJudgeServer, str]:
        server = ReasoningJudgeServer(**kwargs)
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        server.stop()


def config(tmp_path, base_url: str, name: str = "curate", **overrides) -> CurateConfig:
    judge = {"backend": "openai", "base_url": base_url, "model": "reasoner", "max_retries": 0}
    judge |= overrides.pop("judge", {})
    data = distill_output(str(tmp_path / "distill"))
    fields = {"output_uri": str(tmp_path / name), "data_uri": data, "judge": judge, "require_correct": False}
    return CurateConfig.from_dict(fields | {"min_logic": 0} | overrides)


def failures_of(folder: str) -> list[dict]:
    from distilflow.records import output_shards

    return [
        json.loads(line)
        for u in output_shards(folder, "judge_failures")
        for line in uris.read_text(u).splitlines()
    ]


def test_logprobs_scores_are_the_expected_digit_of_a_reasoning_judge(tmp_path, reasoner):
    """With the default judge settings (reply prefilled, thinking off) a reasoning judge's first token is
    its score: rv and cd are the expected digit, logic P("1"), exactly as the server's rule gives them;
    a rerun reads the same values back from the teacher cache without a request."""
    server, url = reasoner()
    result = run(config(tmp_path, url))
    assert result.judge_failures == 0 and result.scored == len(ROWS)
    rows = {r.id: r for r in iter_output_rows(str(tmp_path / "curate"), "scored", Scored)}
    for i, (problem, _, reasoning, answer) in enumerate(ROWS):
        want = expected(problem, reasoning, answer)
        got = rows[f"q{i}/t/0"]
        assert (got.rv, got.cd, got.logic) == pytest.approx((want["rv"], want["cd"], want["logic"]), abs=1e-3)
    # the values differ from trace to trace: not a constant, not an argmax
    assert len({r.rv for r in rows.values()}) == len(ROWS) and any(r.rv % 1 for r in rows.values())
    bodies = server.bodies
    assert len(bodies) == 3 * len(ROWS)
    assert all(b["messages"][-1] == {"role": "assistant", "content": "Score: "} for b in bodies)
    assert all(b["continue_final_message"] and b["add_generation_prompt"] is False for b in bodies)
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in bodies)

    again = run(config(tmp_path, url, name="again", cache_uri=str(tmp_path / "curate" / "cache")))
    assert len(server.bodies) == 3 * len(ROWS) and again.cache_hits == 3 * len(ROWS)
    cached = {
        r.id: (r.rv, r.cd, r.logic) for r in iter_output_rows(str(tmp_path / "again"), "scored", Scored)
    }
    assert cached == {i: (r.rv, r.cd, r.logic) for i, r in rows.items()}


@pytest.mark.parametrize(
    ("server_kwargs", "judge", "shown"),
    [
        ({}, {"answer_prefix": None}, "'Okay' 0.90"),  # the plain chat: the judge starts thinking
        ({"digit_mass": 0.1}, {}, "carry 0.10"),  # answers first, but the digits carry little mass
    ],
    ids=["thinking-first", "little-digit-mass"],
)
def test_a_judgment_whose_digits_carry_scraps_is_a_failure_never_a_score(
    tmp_path, reasoner, server_kwargs, judge, shown
):
    _, url = reasoner(**server_kwargs)
    result = run(config(tmp_path, url, judge=judge))
    assert result.scored == 0 and result.kept == 0 and result.judge_failures == len(ROWS)
    assert result.judge_failures_by_kind == {"rv": len(ROWS), "cd": len(ROWS), "logic": len(ROWS)}
    assert list(iter_output_rows(str(tmp_path / "curate"), "scored", Scored)) == []
    failures = failures_of(str(tmp_path / "curate"))
    assert len(failures) == 3 * len(ROWS)
    assert all("min_digit_mass 0.5" in f["reason"] and shown in f["reason"] for f in failures)


def test_a_lower_min_digit_mass_reads_a_judge_that_answers_with_less_mass(tmp_path, reasoner):
    """min_digit_mass is the setting: at 0.05 the judge with 0.1 of its mass on the digits is read, and
    its scores are the renormalised expected digits (the mass cancels)."""
    _, url = reasoner(digit_mass=0.1)
    result = run(config(tmp_path, url, judge={"min_digit_mass": 0.05}))
    assert result.judge_failures == 0 and result.scored == len(ROWS)
    problem, _, reasoning, answer = ROWS[1]
    row = next(r for r in iter_output_rows(str(tmp_path / "curate"), "scored", Scored) if r.id == "q1/t/0")
    assert row.rv == pytest.approx(expected(problem, reasoning, answer)["rv"], abs=1e-3)


def test_generate_mode_reads_the_score_a_reasoning_judge_writes_after_thinking(tmp_path, reasoner):
    """mode: generate, the fix validate names for a judge without usable logprobs: the judge thinks, then
    writes <score>N</score>, the most likely digit of its distribution."""
    server, url = reasoner(logprobs=False)
    result = run(config(tmp_path, url, mode="generate"))
    assert result.judge_failures == 0 and result.scored == len(ROWS)
    assert not any(b.get("logprobs") for b in server.bodies)
    for row in iter_output_rows(str(tmp_path / "curate"), "scored", Scored):
        problem, _, reasoning, answer = ROWS[int(row.problem_id[1:])]
        dists = {
            "rv": peaked(min(9, len(reasoning.split()) / 4), "0123456789"),
            "cd": peaked(min(9, sum(c.isdigit() for c in problem)), "0123456789"),
        }
        assert row.rv == int(max(dists["rv"], key=dists["rv"].__getitem__))
        assert row.cd == int(max(dists["cd"], key=dists["cd"].__getitem__))
        assert row.logic == (1.0 if expected(problem, reasoning, answer)["logic"] > 0.5 else 0.0)


def test_a_server_without_logprobs_stops_curate_with_the_fix(tmp_path, reasoner):
    from distilflow.errors import BackendError

    _, url = reasoner(logprobs=False)
    with pytest.raises(BackendError, match=r"returned no logprobs; use judge mode 'generate'"):
        run(config(tmp_path, url))
    assert not os.path.exists(tmp_path / "curate" / "_COMPLETE")


def test_crv_rewrites_are_scored_again_from_their_own_text(tmp_path, reasoner):
    """A verified CRV rewrite replaces the trace and is judged again: its RV is the expected digit for the
    rewrite's reasoning (not the original's, nor the original's stale score)."""
    from distilflow.components.curate.run import _refine
    from distilflow.teachers.cache import TeacherCache
    from distilflow.teachers.cached import CachedTeacher
    from tests.components.curate.test_curate import ScriptedTeacher

    _, url = reasoner()
    cfg = config(tmp_path, url, crv=True)
    base = Scored(
        id="e/t/0", problem_id="e", problem="What is 3 + 4?", reference="7", domain="math", teacher="t",
        sample=0, reasoning="7", content="\\boxed{7}", tokens=3, finish_reason="stop", rv=0.0, cd=0.0,
        logic=1, correct=True, predicted="7", judge="j", kept=False,
    )  # fmt: skip
    rewrite = "Start from 3 and count 4 more: 4, 5, 6, 7. So 3 + 4 = 7, checked by 7 - 4 = 3."
    rewriter = ScriptedTeacher(
        {"What is 3 + 4?": "easy"}, {"What is 3 + 4?": f"<think>{rewrite}</think>\\boxed{{7}}"}
    )
    judge = CachedTeacher(cfg.judge, TeacherCache(str(tmp_path / "cache")))
    (row,), failures = _refine(judge, rewriter, [base], cfg)
    assert failures == [] and (row.crv_outcome, row.reasoning) == ("expanded", rewrite)
    want = expected(base.problem, rewrite, "\\boxed{7}")
    assert (row.rv, row.cd, row.logic) == pytest.approx((want["rv"], want["cd"], want["logic"]), abs=1e-3)
    assert row.rv != pytest.approx(expected(base.problem, base.reasoning, base.content)["rv"], abs=0.1)
