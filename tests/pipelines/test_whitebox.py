"""The ``whitebox`` recipe: its config resolution and a scaled-down run under kfp.local on tiny models
(a peaked tiny teacher in-process, a tiny student of the same tokenizer)."""

import json
import os

import pytest

from distilflow.pipelines.params import resolve_config

STAGES = ["validate", "distill", "sft", "evaluate"]


@pytest.mark.unit
def test_defaults_turn_on_logits_and_kd_and_the_console_reaches_every_knob():
    config = resolve_config(
        "whitebox",
        STAGES,
        preset="1.5b-1node",
        teacher_base_url="http://vllm:8000/v1",
        teacher_model="Qwen/Qwen2.5-72B-Instruct",
        overrides=json.dumps(
            {
                "distill": {"teacher": {"tokenizer": "s3://b/tokenizers/qwen2.5"}, "logits": {"top_k": 8}},
                "sft": {
                    "kd": {
                        "divergence": "mix",
                        "reverse_weight": 0.3,
                        "temperature": 2.0,
                        "tail": "renormalize",
                    }
                },
            }
        ),
    )
    teacher = config["distill"]["teacher"]
    assert (
        teacher["model"] == "Qwen/Qwen2.5-72B-Instruct"
        and teacher["tokenizer"] == "s3://b/tokenizers/qwen2.5"
    )
    assert config["distill"]["logits"] == {"top_k": 8, "dtype": "float32"}
    assert config["sft"]["kd"] == {
        "alpha": 0.5,
        "divergence": "mix",
        "reverse_weight": 0.3,
        "temperature": 2.0,
        "tail": "renormalize",
    }
    assert config["sft"]["deepspeed"] == "zero2"  # the preset
    assert set(config) == {"distill", "sft", "evaluate"}


def test_whitebox_end_to_end_on_tiny_models(tmp_path, tiny_teacher, tiny_qwen3):
    """validate -> distill (top-8 logprobs) -> sft (KD) -> evaluate under kfp.local."""
    from distilflow.client.local import run_local
    from distilflow.pipelines.common import data_file

    root = str(tmp_path / "whitebox")
    teacher = (
        f"{{backend: transformers, model: {tiny_teacher}, max_new_tokens: 16, temperature: 1.0, seed: 0}}"
    )
    overrides = [
        f"distill.teacher={teacher}",
        f"distill.problems_uri={data_file('quickstart_problems.jsonl')}",
        "distill.limit=4",
        "distill.logits.top_k=8",
        f"sft.model={tiny_qwen3}",
        "sft.max_steps=4",
        "sft.learning_rate=0.003",
        "sft.logging_steps=1",
        "sft.max_length=1024",
        "sft.deepspeed=none",
        "sft.gradient_checkpointing=false",
        "sft.gradient_accumulation_steps=1",
        "sft.per_device_train_batch_size=2",
        f"evaluate.problems_uri={data_file('quickstart_eval.jsonl')}",
        "evaluate.samples=1",
        "evaluate.max_problems=2",
        "evaluate.max_new_tokens=8",
        "evaluate.temperature=0.0",
    ]
    summary = run_local("whitebox", overrides=overrides, output_uri=root)
    assert list(summary.stages) == STAGES
    with open(os.path.join(root, "distill", "manifest.json")) as f:
        distill = json.load(f)["result"]
    assert distill["logits"]["top_k"] == 8 and distill["logits_rows"] == 4
    with open(os.path.join(root, "sft", "manifest.json")) as f:
        sft = json.load(f)
    assert sft["result"]["loss"] == "kd" and sft["result"]["steps"] == 4 and sft["result"]["rows_used"] == 4
    assert sft["inputs"]["data"] == os.path.join(root, "distill")
    assert sft["metrics"]["final_divergence"] > 0 and sft["metrics"]["final_ce"] > 0
    with open(os.path.join(root, "evaluate", "manifest.json")) as f:
        assert os.path.join(root, "sft", "model") in json.dumps(json.load(f)["inputs"])


@pytest.mark.slow
def test_gkd_and_rank_dpo_run_in_lifecycle_under_kfp_local(tmp_path, tiny_qwen3, tiny_teacher):
    """The other two paths through the console's ``overrides``: lifecycle with ``sft.gkd`` (on-policy
    distillation from a tiny in-process teacher of the student's vocabulary) and ``dpo.rank`` (pairs
    against the sft student's own answers) under kfp.local (about 40 s of CPU; slow: the stage tests
    cover both paths in the default suite)."""
    from distilflow.client.local import run_local
    from distilflow.records import PreferencePair, read_jsonl
    from tests.pipelines.test_recipes import tiny_thoughtx_overrides

    root = str(tmp_path / "lifecycle")
    gkd = f"{{teacher: {{backend: transformers, model: {tiny_teacher}}}, lmbda: 0.5, beta: 0.5, max_new_tokens: 8}}"
    overrides = tiny_thoughtx_overrides(tiny_qwen3) + [
        "with_rl=false",
        "with_deploy=false",
        "curate.crv=false",
        "sft.max_steps=2",
        "sft.per_device_train_batch_size=2",
        f"sft.gkd={gkd}",
        "dpo.rank={max_new_tokens: 8, pair_beta: 0.2}",
        "dpo.max_steps=2",
        "dpo.max_length=1024",
        "dpo.deepspeed=none",
        "dpo.gradient_checkpointing=false",
        "dpo.gradient_accumulation_steps=1",
        "dpo.per_device_train_batch_size=2",
    ]
    summary = run_local("lifecycle", overrides=overrides, output_uri=root)
    assert list(summary.stages) == ["validate", "distill", "curate", "sft", "dpo", "evaluate"]
    with open(os.path.join(root, "sft", "manifest.json")) as f:
        sft = json.load(f)["result"]
    assert sft["loss"] == "gkd" and sft["steps"] == 2
    with open(os.path.join(root, "dpo", "manifest.json")) as f:
        dpo = json.load(f)
    assert dpo["inputs"]["model"] == os.path.join(root, "sft", "model")  # the current student answers
    pairs = read_jsonl(os.path.join(root, "dpo", "rank_pairs.jsonl"), PreferencePair)
    assert dpo["result"]["rank_pairs"] == len(pairs) > 0 and dpo["result"]["steps"] == 2
    assert {p.beta for p in pairs} <= {0.2, 0.3, 0.4}  # pair_beta * (1 + gap), gap 0, 1/2 (unchecked) or 1
