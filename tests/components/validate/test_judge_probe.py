"""validate's calibration probe of a logprobs judge: a reasoning-style judge either scores the obvious
cases right or the config is refused before any work starts, with the fix named.

The judge is tests/fakes/reasoning_judge_server.py (a loopback server that behaves like a reasoning
model behind vLLM); the stages checked are curate (logic rubric) and reward (pairwise comparison).
"""

from __future__ import annotations

import pytest

from distilflow.components.validate.config import ValidateConfig
from distilflow.components.validate.run import run
from distilflow.errors import ConfigError
from distilflow.outputs import MARKER
from tests.fakes.reasoning_judge_server import ReasoningJudgeServer

FIX = "mode: generate"


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


def validate(tmp_path, stage: str, url: str, judge: dict | None = None, **section) -> object:
    """validate of a pipeline config whose ``stage`` has the reasoning judge (no data or models checked)."""
    judge_cfg = {"backend": "openai", "base_url": url, "model": "reasoner", "max_retries": 0} | (judge or {})
    if stage == "reward":
        section = {"model": "unused", "judge": judge_cfg} | section
    else:
        section = {"judge": judge_cfg} | section
    return run(
        ValidateConfig(
            output_uri=str(tmp_path / "run" / "validate"),
            run_uri=str(tmp_path / "run"),
            stages=["validate", stage],
            pipeline_config={stage: section},
            check_data=False,
            check_models=False,
        )
    )


@pytest.mark.parametrize("stage", ["curate", "reward"])
def test_a_judge_that_answers_first_passes_the_probe(tmp_path, reasoner, stage):
    server, url = reasoner()
    result = validate(tmp_path, stage, url)
    assert f"{stage}.judge: calibration probe (an obviously low and an obviously high case)" in result.checked
    assert (tmp_path / "run" / "validate" / MARKER).exists()
    probes = [b for b in server.bodies if b.get("logprobs")]
    assert len(probes) == 2  # the two calibration judgments, prefilled like the stage's own
    assert all(b["messages"][-1] == {"role": "assistant", "content": "Score: "} for b in probes)


@pytest.mark.parametrize("stage", ["curate", "reward"])
@pytest.mark.parametrize(
    ("server_kwargs", "judge", "message"),
    [
        ({}, {"answer_prefix": None}, r"obviously low case is unreadable: .* carry 0\.0\d .*'Okay' 0\.90"),
        ({"logprobs": False}, {}, r"returned no logprobs"),
        ({"digit_mass": 0.1}, {}, r"obviously low case is unreadable: .* carry 0\.10 "),
        ({"inverted": True}, {}, r"gave the obviously high case 0\.15 and the obviously low case 0\.85"),
    ],
    ids=["thinking-first", "no-logprobs", "little-digit-mass", "inverted"],
)
def test_a_judge_that_cannot_be_read_is_refused_with_the_fix(
    tmp_path, reasoner, stage, server_kwargs, judge, message
):
    _, url = reasoner(**server_kwargs)
    with pytest.raises(ConfigError, match=message) as info:
        validate(tmp_path, stage, url, judge)
    text = str(info.value)
    mode_field = "curate.mode" if stage == "curate" else "reward.judge_mode"
    assert f"{stage}.judge: calibration probe" in text and f"{mode_field}: generate" in text
    assert "non-thinking judge" in text and f"{stage}.judge.answer_prefix" in text
    assert not (tmp_path / "run" / "validate" / MARKER).exists()


def test_only_logprobs_judges_are_probed(tmp_path, reasoner):
    """A judge in generate mode writes its score after thinking: nothing to probe, no request sent."""
    server, url = reasoner(logprobs=False)
    result = validate(tmp_path, "curate", url, mode="generate")
    assert not any("calibration probe" in line for line in result.checked)
    assert server.bodies == []
