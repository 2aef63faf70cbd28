"""The `rl` stage: the correctness reward, and GRPO on a tiny Qwen3 model on CPU."""

from __future__ import annotations

import json
import os

import pytest

from distilflow import uri as uris
from distilflow.components.rl.config import RlConfig
from distilflow.errors import ConfigError
from distilflow.outputs import MANIFEST, MARKER
from distilflow.records import Problem, read_jsonl, write_jsonl


def test_correctness_reward_checks_final_answers():
    from distilflow.components.rl.run import correctness

    completions = [
        [{"role": "assistant", "content": "<think>3 plus 4</think>The answer is \\boxed{7}."}],
        [{"role": "assistant", "content": "The answer is \\boxed{8}."}],
        "So 6 * 7 = 42",
        [{"role": "assistant", "content": "The answer is \\boxed{\\frac{1}{2}}"}],
        [{"role": "assistant", "content": "no idea"}],
    ]
    answers = ["7", "7", "42", "0.5", "3"]
    domains = ["math", "math", None, "math", "math"]
    assert correctness(completions, answer=answers, domain=domains, trainer_state=None) == [
        1.0,
        0.0,
        1.0,
        1.0,
        0.0,
    ]


def test_build_rows_skips_problems_without_answers():
    from distilflow.components.rl.run import build_rows

    problems = [Problem(id="a", problem="What is 1 + 1?", answer="2"), Problem(id="b", problem="Prove it.")]
    rows, skipped = build_rows(problems, "Box the answer.")
    assert skipped == 1
    assert rows == [
        {
            "prompt": [
                {"role": "system", "content": "Box the answer."},
                {"role": "user", "content": "What is 1 + 1?"},
            ],
            "answer": "2",
            "domain": None,
        }
    ]
    assert build_rows(problems, None)[0][0]["prompt"] == [{"role": "user", "content": "What is 1 + 1?"}]


def test_rl_config_requires_whole_groups():
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        RlConfig.from_dict(
            {
                "output_uri": "/o",
                "model": "/m",
                "problems_uri": "/p.jsonl",
                "num_generations": 4,
                "per_device_train_batch_size": 6,
            }
        )


def test_rl_trains_logs_rewards_and_reuses(tiny_qwen3, problems_file, tmp_path, capsys):
    from kfp import dsl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilflow.components.rl.component import rl
    from distilflow.components.rl.run import run
    from distilflow.outputs import StageOutput

    problems = read_jsonl(problems_file, Problem) + [Problem(id="open", problem="Why is the sky blue?")]
    path = str(tmp_path / "problems.jsonl")
    write_jsonl(path, problems)
    root = str(tmp_path / "run")
    section = dict(
        problems_uri=path,
        max_steps=3,
        learning_rate=1e-3,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=12,
        beta=0.04,
    )
    result = run(RlConfig(output_uri=os.path.join(root, "rl"), model=tiny_qwen3, **section))

    assert result.steps == 3
    assert result.problems_used == 4 and result.problems_skipped == 1
    assert 0.0 <= result.first_reward <= 1.0 and 0.0 <= result.final_reward <= 1.0
    assert result.first_loss is not None
    logs = capsys.readouterr().out
    assert "[rl] steps: 3/3" in logs and " reward=" in logs and " kl=" in logs
    manifest = json.loads(uris.read_text(os.path.join(root, "rl", MANIFEST)))
    assert manifest["counts"] == {"problems_read": 5, "problems_used": 4, "problems_skipped": 1}
    assert os.path.exists(os.path.join(root, "rl", MARKER))
    AutoModelForCausalLM.from_pretrained(result.model_uri)
    assert AutoTokenizer.from_pretrained(result.model_uri).chat_template

    # The component on the finished output: the student artifact is resolved, nothing is retrained
    student_stage = StageOutput(str(tmp_path / "sft"), "sft")
    student_stage.finish(result={})
    model = dsl.Model(name="model", uri=str(tmp_path / "artifact"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    rl.python_func(
        config={"rl": section},
        output_uri=root,
        student=dsl.Model(
            name="student", uri="x", metadata={"uri": tiny_qwen3, "stage_uri": student_stage.uri}
        ),
        model=model,
        metrics=metrics,
    )
    assert model.metadata["uri"] == result.model_uri
    assert metrics.metadata["final_reward"] == result.final_reward
    assert (
        json.loads(uris.read_text(os.path.join(root, "rl", MANIFEST)))["finished_at"]
        == manifest["finished_at"]
    )
