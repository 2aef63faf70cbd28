"""One prompt for the student: curate's SFT rows and preference prompts, reward's pairs, rl's prompts and
evaluate's math prompt put the same instruction in the same place, each through its stage's own code."""

from __future__ import annotations

import json

import pytest

from distilflow.errors import ConfigError
from distilflow.records import PreferencePair, Problem, Scored, SftExample, read_jsonl, write_jsonl

PROBLEM = "What is 3 + 4?"
# The DeepSeek-R1 / DistilQwen math prompt, written out here rather than imported: a stage that changes
# its words, its role or its order fails this test.
EXPECTED = [
    {
        "role": "user",
        "content": PROBLEM + "\nPlease reason step by step, and put your final answer within \\boxed{}.",
    }
]


def _scored(sample: int, correct: bool, rv: float) -> Scored:
    return Scored(
        id=f"p/t/{sample}",
        problem_id="p",
        problem=PROBLEM,
        reference="7",
        domain="math",
        teacher="t",
        sample=sample,
        reasoning=f"3 plus 4 is 7 (sample {sample})",
        content="\\boxed{7}" if correct else "\\boxed{8}",
        tokens=5,
        finish_reason="stop",
        rv=rv,
        cd=3.0,
        logic=0.9,
        correct=correct,
        judge="j",
        kept=False,
    )


def _chat(messages) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def test_sft_rows_preference_pairs_rl_and_evaluate_ask_alike(tmp_path):
    from distilflow.components.curate.columnar import select_file
    from distilflow.components.curate.config import SelectConfig
    from distilflow.components.evaluate.benchmarks import load_benchmark
    from distilflow.components.evaluate.config import BenchmarkConfig, EvaluateConfig
    from distilflow.components.evaluate.run import build_chat, item_template
    from distilflow.components.reward.pairs import pairs_from_scored
    from distilflow.components.rl.config import RlConfig
    from distilflow.components.rl.run import build_rows

    rows = [_scored(0, True, 3.0), _scored(1, False, 5.0)]
    judged = tmp_path / "judged.jsonl"
    judged.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    files, _ = select_file(str(judged), SelectConfig(), str(tmp_path / "selected"))  # what curate runs
    (sft,) = [r for path in files.sft for r in read_jsonl(path, SftExample)]
    assert _chat(sft.messages[:-1]) == EXPECTED  # the SFT row: the prompt, then the teacher's answer
    assert sft.messages[-1].role == "assistant"
    (pair,) = [r for path in files.preference for r in read_jsonl(path, PreferencePair)]
    assert _chat(pair.prompt) == EXPECTED  # dpo trains on the same prompt
    (reward_pair,) = pairs_from_scored({"p": rows}, SelectConfig(), 1)
    assert _chat(reward_pair.pair.prompt) == EXPECTED  # and so does the reward model

    problems = str(tmp_path / "problems.jsonl")
    write_jsonl(problems, [Problem(id="p", problem=PROBLEM, answer="7", domain="math")])
    rl = RlConfig(output_uri=str(tmp_path / "rl"), model=str(tmp_path / "m"), problems_uri=problems)
    (rl_row,), _ = build_rows(
        [Problem(id="p", problem=PROBLEM, answer="7")], rl.system_prompt, None, rl.prompt_template
    )
    assert rl_row["prompt"] == EXPECTED

    evaluate = EvaluateConfig(
        output_uri=str(tmp_path / "ev"), model=str(tmp_path / "m"), problems_uri=problems
    )
    bench = load_benchmark(BenchmarkConfig(name="jsonl", source=problems, label="problems"), evaluate)
    (item,) = bench.items
    assert build_chat(evaluate, item, item_template(bench, item, evaluate)) == EXPECTED


def test_stages_share_one_default_and_refuse_a_template_without_the_problem(tmp_path):
    from distilflow.components.curate.config import SelectConfig
    from distilflow.components.evaluate.config import EvaluateConfig
    from distilflow.components.rl.config import RlConfig
    from distilflow.prompts import STUDENT_PROMPT, render

    assert render(PROBLEM) == EXPECTED[0]["content"]
    defaults = {
        "curate": SelectConfig().prompt_template,
        "rl": RlConfig(output_uri="/o", model="/m", problems_uri="/p.jsonl").prompt_template,
        "evaluate": EvaluateConfig(output_uri="/o", problems_uri="/p.jsonl").prompt_template,
    }
    assert defaults == dict.fromkeys(defaults, STUDENT_PROMPT)
    with pytest.raises(ConfigError, match="prompt_template must contain"):
        SelectConfig.from_dict({"prompt_template": "Solve it."})
    with pytest.raises(ConfigError, match="prompt_template must contain"):
        RlConfig.from_dict({"output_uri": "/o", "model": "/m", "problems_uri": "/p", "prompt_template": "x"})


def test_recorded_prompt_reads_an_upstream_manifest(tmp_path):
    from distilflow.outputs import StageOutput
    from distilflow.prompts import recorded_prompt

    out = StageOutput(str(tmp_path / "curate"), "curate")
    out.finish(result={}, student_prompt="Q: {{problem}}")
    assert (
        json.loads((tmp_path / "curate" / "manifest.json").read_text())["student_prompt"] == "Q: {{problem}}"
    )
    assert recorded_prompt(str(tmp_path / "curate")) == "Q: {{problem}}"
    assert recorded_prompt(str(tmp_path / "curate" / "sft.jsonl")) is None  # a file records nothing
    StageOutput(str(tmp_path / "old"), "curate").finish(result={})
    assert recorded_prompt(str(tmp_path / "old")) is None
