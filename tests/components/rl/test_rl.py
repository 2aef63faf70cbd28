"""The `rl` stage: each reward term, GRPO on tiny models on CPU, checkpoints, the report and the component."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from distilflow import uri as uris
from distilflow.components.rl.config import RlConfig
from distilflow.errors import ConfigError, IncompleteOutputError
from distilflow.outputs import MANIFEST, MARKER, StageOutput
from distilflow.records import Problem, Scored, read_jsonl, write_jsonl
from tests.browser import render_dom

# ---------------------------------------------------------------- reward terms


@pytest.mark.unit
def test_correctness_reward_checks_final_answers_and_logs_accuracy():
    from distilflow.components.rl.rewards import correctness

    completions = [
        [{"role": "assistant", "content": "<think>3 plus 4</think>The answer is \\boxed{7}."}],
        [{"role": "assistant", "content": "The answer is \\boxed{8}."}],
        "So 6 * 7 = 42",
        [{"role": "assistant", "content": "The answer is \\boxed{\\frac{1}{2}}"}],
        [{"role": "assistant", "content": "no idea"}],
        [{"role": "assistant", "content": "B", "reasoning_content": "the answer is A? no"}],
    ]
    answers = ["7", "7", "42", "0.5", "3", "B"]
    domains = ["math", "math", None, "math", "math", "multiple_choice"]
    logged = []
    scores = correctness(
        completions,
        answer=answers,
        domain=domains,
        trainer_state=None,
        log_metric=lambda k, v: logged.append((k, v)),
    )
    assert scores == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert logged == [("accuracy", pytest.approx(4 / 6))]


@pytest.mark.unit
def test_format_reward_wants_a_thinking_block_then_a_boxed_answer():
    from distilflow.components.rl.rewards import completion_text, format_reward, format_score

    assert format_score("<think>add 3 and 4</think>The answer is \\boxed{7}.") == 1.0
    assert format_score("\n<think>\nadd\n</think>\n\nIt is 7.") == 0.5  # an answer, but not boxed
    assert format_score("add 3 and 4</think>\\boxed{7}") == 1.0  # the template opened <think>
    assert format_score("The answer is \\boxed{7}.") == 0.0  # no thinking block
    assert format_score("<think>add 3 and 4 \\boxed{7}") == 0.0  # never closed
    assert format_score("<think>add</think>") == 0.0  # nothing after the block
    assert format_score("<think>  </think>\\boxed{7}") == 0.0  # an empty block
    assert format_score("<think>a</think>b<think>c</think>\\boxed{7}") == 0.0  # two blocks
    assert format_score("7 <think>a</think>\\boxed{7}") == 0.0  # answer before the block
    # a completion TRL parsed into reasoning and content is put back together
    parsed = [{"role": "assistant", "reasoning_content": "add", "content": "\\boxed{7}"}]
    assert completion_text(parsed) == "<think>add</think>\\boxed{7}"
    assert format_reward([parsed, "no"]) == [1.0, 0.0]
    assert format_reward.__name__ == "format"


@pytest.mark.unit
def test_length_reward_penalises_tokens_beyond_the_difficulty_budget():
    from distilflow.components.rl.rewards import LengthReward, length_budget, length_penalty

    assert length_budget(0, 100, 1000) == 100
    assert length_budget(9, 100, 1000) == 1000
    assert length_budget(4.5, 100, 1000) == 550
    assert length_budget(12, 100, 1000) == 1000  # clipped to the CD scale
    assert length_penalty(100, 100, 0.5) == 0.0
    assert length_penalty(125, 100, 0.5) == pytest.approx(-0.5)
    assert length_penalty(150, 100, 0.5) == -1.0
    assert length_penalty(5000, 100, 0.5) == -1.0

    term = LengthReward(budget_min=10, budget_max=100, slack=0.5, default_cd=0.0)
    assert term.__name__ == "length"
    ids = [[1] * 60, [1] * 60, [1] * 60, [1] * 8]
    # the same 60 tokens: free on a hard problem (budget 100), a little over on a medium one (budget 55),
    # far over on an easy one (budget 10; an unjudged problem has the default CD 0)
    scores = term(["a"] * 4, completion_ids=ids, cd=[9.0, 4.5, None, 0.0])
    assert scores == [0.0, pytest.approx(-5 / 27.5), -1.0, 0.0]
    easy = term(["a"], completion_ids=[[1] * 12], cd=[0.0])[0]
    assert easy == pytest.approx(-(12 - 10) / 5)
    with pytest.raises(ValueError, match="budget_max"):
        LengthReward(budget_min=100, budget_max=10, slack=0.5, default_cd=4.5)


def test_reward_model_term_scores_with_the_reward_models_template(tiny_reward):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distilflow.components.rl.rewards import RewardModelScore

    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward)
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward)
    prompts = [[{"role": "user", "content": "What is 3 + 4?"}]] * 3
    completions = [
        [{"role": "assistant", "content": "\\boxed{7}"}],
        [{"role": "assistant", "content": "The quick brown fox"}],
        [{"role": "assistant", "content": "8"}],
    ]
    raw = RewardModelScore(model, tokenizer, normalize=False, batch_size=2)(prompts, completions)
    # each score equals the model's score of that conversation alone, rendered with its chat template
    for prompt, completion, score in zip(prompts, completions, raw, strict=True):
        ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert score == pytest.approx(alone, abs=1e-4)
    # a thinking block is rendered as the reward stage trained: reasoning_content for this template
    term = RewardModelScore(model, tokenizer)
    assert term.reply("<think>add</think>\\boxed{7}") == {
        "role": "assistant",
        "content": "\\boxed{7}",
        "reasoning_content": "add",
    }
    assert term.reply("plain") == {"role": "assistant", "content": "plain"}
    squashed = RewardModelScore(model, tokenizer, mean=raw[0], std=2.0)(prompts, completions)
    assert squashed[0] == pytest.approx(0.5)
    for s, r in zip(squashed, raw, strict=True):
        assert s == pytest.approx(1 / (1 + math.exp(-(r - raw[0]) / 2.0)), abs=1e-5)


# ---------------------------------------------------------------- data and config


def scored(problem_id: str, problem: str, cd: float, sample: int = 0) -> Scored:
    return Scored(
        id=f"{problem_id}/t/{sample}",
        problem_id=problem_id,
        problem=problem,
        teacher="t",
        sample=sample,
        reasoning="r",
        content="c",
        tokens=10,
        finish_reason="stop",
        rv=3.0,
        cd=cd,
        logic=1.0,
        correct=True,
        judge="j",
        kept=True,
    )


@pytest.mark.unit
def test_build_rows_skips_unanswered_problems_and_attaches_cd(tmp_path):
    from distilflow.components.rl.run import build_rows, problem_cds

    problems = [
        Problem(id="a", problem="What is 1 + 1?", answer="2"),
        Problem(id="b", problem="Prove it."),
        Problem(id="c", problem="What is  2 + 2?", answer="4"),
        Problem(id="d", problem="Unjudged?", answer="1"),
    ]
    write_jsonl(
        str(tmp_path / "scored.jsonl"),
        [
            scored("a", "What is 1 + 1?", 2.0),
            scored("a", "What is 1 + 1?", 4.0, 1),
            scored("x", "what is 2 + 2?", 6.0),
        ],
    )
    StageOutput(str(tmp_path), "curate").finish(result={})
    cds = problem_cds(str(tmp_path))
    rows, skipped = build_rows(problems, "Box the answer.", cds)
    assert skipped == 1
    assert rows[0] == {
        "prompt": [
            {"role": "system", "content": "Box the answer."},
            {"role": "user", "content": "What is 1 + 1?"},
        ],
        "answer": "2",
        "domain": None,
        "cd": 3.0,  # the mean of its traces' CD
    }
    assert [r["cd"] for r in rows] == [3.0, 6.0, None]  # matched by id, by normalised text, not at all
    assert build_rows(problems, None)[0][0]["prompt"] == [{"role": "user", "content": "What is 1 + 1?"}]


@pytest.mark.unit
def test_rl_config_checks_groups_terms_and_inputs():
    base = {"output_uri": "/o", "model": "/m", "problems_uri": "/p.jsonl"}
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        RlConfig.from_dict({**base, "num_generations": 4, "per_device_train_batch_size": 6})
    with pytest.raises(ConfigError, match=r"unknown term\(s\) \['brevity'\]"):
        RlConfig.from_dict({**base, "rewards": {"brevity": 1.0}})
    with pytest.raises(ConfigError, match="needs reward_model_uri"):
        RlConfig.from_dict({**base, "rewards": {"correctness": 1.0, "reward_model": 0.5}})
    with pytest.raises(ConfigError, match="every term weight 0"):
        RlConfig.from_dict({**base, "rewards": {"correctness": 0.0}})
    with pytest.raises(ConfigError, match="vllm_server_base_url"):
        RlConfig.from_dict({**base, "vllm_mode": "server"})
    cfg = RlConfig.from_dict({**base, "rewards": {"length": 0.1, "format": 0.2}})
    # the trainer's order; correctness is computed at weight 0 for the accuracy curve
    assert cfg.weights() == {"correctness": 0.0, "format": 0.2, "length": 0.1}


@pytest.mark.unit
def test_rollouts_follow_config_and_machine(monkeypatch):
    from distilflow.components.rl.run import rollout_engine
    from distilflow.training import arguments

    base = {"output_uri": "/o", "model": "/m", "problems_uri": "/p.jsonl"}
    assert rollout_engine(RlConfig(**base)) == "transformers"  # auto on a CPU
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        rollout_engine(RlConfig(**base, rollouts="vllm"))
    monkeypatch.setattr(arguments, "on_gpu", lambda: True)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))
    assert rollout_engine(RlConfig(**base)) == "vllm"
    assert rollout_engine(RlConfig(**base, rollouts="transformers")) == "transformers"


# ---------------------------------------------------------------- training


def reward_stage(root: str, model_dir: str, complete: bool = True) -> str:
    """A reward-stage-like output folder whose manifest names ``model_dir`` and its score statistics."""
    out = StageOutput(os.path.join(root, "reward"), "reward")
    os.makedirs(out.path("model"), exist_ok=True)
    if complete:
        out.finish(result={"model_uri": model_dir, "score_mean": 0.1, "score_std": 0.5})
    return out.uri


def test_rl_trains_every_term_checkpoints_reports_and_reuses(
    tiny_qwen3, tiny_reward, problems_file, tmp_path, capsys
):
    from kfp import dsl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilflow.components.rl.component import rl
    from distilflow.components.rl.run import run
    from distilflow.training.checkpointing import list_checkpoints

    problems = read_jsonl(problems_file, Problem) + [Problem(id="open", problem="Why is the sky blue?")]
    path = str(tmp_path / "problems.jsonl")
    write_jsonl(path, problems)
    curate = str(tmp_path / "curate")
    write_jsonl(os.path.join(curate, "scored.jsonl"), [scored("p1", "What is 3 + 4?", 1.0)])
    StageOutput(curate, "curate").finish(result={})
    reward_uri = reward_stage(str(tmp_path), tiny_reward)
    root = str(tmp_path / "run")
    section = dict(
        problems_uri=path,
        max_steps=4,
        learning_rate=1e-3,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=12,
        beta=0.04,
        epsilon=0.1,
        rewards={"correctness": 1.0, "reward_model": 0.5, "format": 0.2, "length": 0.1},
        length_budget_min=4,
        save_steps=2,
    )
    cfg = RlConfig(
        output_uri=os.path.join(root, "rl"),
        model=tiny_qwen3,
        reward_model_uri=reward_uri,
        difficulty_uri=curate,
        **section,
    )
    result = run(cfg)

    assert result.steps == 4 and result.rollouts == "transformers"
    assert result.problems_used == 4 and result.problems_skipped == 1 and result.problems_with_cd == 1
    assert set(result.final_terms) == {"correctness", "reward_model", "format", "length"}
    assert 0 < result.final_terms["reward_model"] < 1  # standardised and squashed
    assert -1 <= result.final_terms["length"] <= 0
    assert 0.0 <= result.final_accuracy <= 1.0 and result.final_kl is not None
    assert result.final_completion_length is not None
    history_terms = [f"rewards/{n}/mean" for n in result.final_terms]
    logs = capsys.readouterr().out
    assert (
        re.search(r"\[rl\] steps?:? 4/4", logs)
        and " reward=" in logs
        and " kl=" in logs
        and " accuracy=" in logs
    )
    assert [c.step for c in list_checkpoints(cfg.output_uri)] == [2, 4]
    manifest = json.loads(uris.read_text(os.path.join(root, "rl", MANIFEST)))
    assert manifest["counts"]["problems_with_cd"] == 1
    assert manifest["inputs"]["reward_model"] == tiny_reward
    assert manifest["metrics"]["final_reward_length"] == result.final_terms["length"]
    AutoModelForCausalLM.from_pretrained(result.model_uri)
    assert AutoTokenizer.from_pretrained(result.model_uri).chat_template

    # the report draws total reward, accuracy, each term, KL, completion length
    page = os.path.join(root, "rl", "report.html")
    dom = render_dom(page)
    for key in ("reward", "accuracy", *history_terms, "kl", "completions/mean_length"):
        assert f'aria-label="{key}"' in dom, key
    assert dom.count("<svg") >= 8

    # an interrupted run (no marker, newest checkpoint lost) resumes from the checkpoint at step 2
    uris.remove(os.path.join(root, "rl", MARKER))
    uris.remove(os.path.join(root, "rl", "checkpoints", "checkpoint-4"), recursive=True)
    resumed = run(cfg)
    assert resumed.resumed_from_step == 2 and resumed.steps == 4

    # the component on the finished output: optional inputs are resolved, nothing is retrained
    student_stage = StageOutput(str(tmp_path / "sft"), "sft")
    student_stage.finish(result={})
    model = dsl.Model(name="model", uri=str(tmp_path / "artifact"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    report = dsl.HTML(name="report", uri=str(tmp_path / "report.html"))
    rl.python_func(
        config={"rl": section},
        output_uri=root,
        student=dsl.Model(
            name="student", uri="x", metadata={"uri": tiny_qwen3, "stage_uri": student_stage.uri}
        ),
        model=model,
        metrics=metrics,
        report=report,
        tensorboard=dsl.Artifact(name="tensorboard", uri=str(tmp_path / "tensorboard")),
        reward_model=dsl.Model(
            name="rm", uri="x", metadata={"uri": os.path.join(reward_uri, "model"), "stage_uri": reward_uri}
        ),
        difficulty=dsl.Dataset(name="curate", uri="x", metadata={"uri": curate}),
    )
    assert model.metadata["uri"] == resumed.model_uri
    assert metrics.metadata["final_reward"] == resumed.final_reward
    assert metrics.metadata["final_reward_format"] == resumed.final_terms["format"]
    with open(report.path) as f:
        assert "<svg" in f.read()


def test_rl_refuses_a_reward_model_whose_gate_did_not_pass(tiny_qwen3, tiny_reward, problems_file, tmp_path):
    from distilflow.components.rl.run import run

    failed = reward_stage(str(tmp_path), tiny_reward, complete=False)
    cfg = RlConfig(
        output_uri=str(tmp_path / "rl"),
        model=tiny_qwen3,
        problems_uri=problems_file,
        rewards={"correctness": 1.0, "reward_model": 1.0},
        reward_model_uri=failed,
        num_generations=2,
        per_device_train_batch_size=2,
    )
    with pytest.raises(IncompleteOutputError, match="calibration gate"):
        run(cfg)
    assert not os.path.exists(tmp_path / "rl" / "config.resolved.yaml")  # nothing started


def build_digit_model(out_dir: str, seed: int = 0) -> str:
    """A tiny Qwen3 model over a 17-token vocabulary (digits, + = ? space, ChatML specials), random
    weights, whose chat template writes the messages' contents only: a policy that can learn sums."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + list("0123456789+=? "))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="?",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = "{%- for m in messages -%}{{- m['content'] -}}{%- endfor -%}"
    fast.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.generation_config.save_pretrained(out_dir)
    return out_dir


def test_grpo_with_the_correctness_reward_raises_mean_reward(tmp_path):
    """A policy trained from scratch on four sums: GRPO with the correctness reward alone lifts the mean
    reward from chance (about 1 in 17) to most groups right within 40 steps."""
    from distilflow.components.rl.run import run

    model = build_digit_model(str(tmp_path / "digits"))
    sums = [("1+2=", "3"), ("2+2=", "4"), ("3+4=", "7"), ("4+5=", "9")]
    path = str(tmp_path / "sums.jsonl")
    write_jsonl(path, [Problem(id=f"s{i}", problem=p, answer=a) for i, (p, a) in enumerate(sums)])
    result = run(
        RlConfig(
            output_uri=str(tmp_path / "rl"),
            model=model,
            problems_uri=path,
            system_prompt=None,
            num_generations=8,
            per_device_train_batch_size=32,
            max_completion_length=1,
            max_steps=40,
            learning_rate=1e-2,
            save_steps=0,
        )
    )
    manifest = json.loads(uris.read_text(str(tmp_path / "rl" / MANIFEST)))
    assert manifest["result"]["steps"] == 40
    assert result.first_reward < 0.3
    assert result.final_reward >= 0.6, result
    assert result.final_accuracy == result.final_reward  # correctness is the only term


def test_rl_lora_saves_a_merged_policy(tiny_qwen3, problems_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from distilflow.components.rl.run import run

    result = run(
        RlConfig(
            output_uri=str(tmp_path / "rl"),
            model=tiny_qwen3,
            problems_uri=problems_file,
            lora=True,
            lora_r=4,
            beta=0.1,  # the KL reference is the base with the adapter switched off
            num_generations=2,
            per_device_train_batch_size=4,
            max_completion_length=4,
            max_steps=2,
            learning_rate=1e-3,
            save_steps=0,
        )
    )
    assert result.steps == 2 and result.final_kl is not None
    assert not os.path.exists(os.path.join(result.model_uri, "adapter_config.json"))
    AutoModelForCausalLM.from_pretrained(result.model_uri)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["colocate"])
def test_rl_vllm_rollouts_on_gpu(tiny_qwen3, problems_file, tmp_path, mode):
    """On a GPU with vllm installed: rollouts come from vLLM inside the training process (colocate)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("vllm")
    from distilflow.components.rl.run import run

    result = run(
        RlConfig(
            output_uri=str(tmp_path / "rl"),
            model=tiny_qwen3,
            problems_uri=problems_file,
            rollouts="vllm",
            vllm_mode=mode,
            vllm_gpu_memory_utilization=0.2,
            num_generations=4,
            per_device_train_batch_size=8,
            max_completion_length=16,
            max_steps=2,
            learning_rate=1e-4,
            rewards={"correctness": 1.0, "format": 0.5, "length": 0.1},
            length_budget_min=4,
            save_steps=0,
        )
    )
    assert result.rollouts == "vllm" and result.steps == 2
    assert set(result.final_terms) == {"correctness", "format", "length"}


def test_grpo_reward_is_the_weighted_sum_of_each_term_as_trl_calls_them(
    tiny_qwen3, tiny_reward, problems_file, tmp_path, monkeypatch
):
    """Inside the rl stage's real GRPO training: every term TRL computes for the sampled completions is
    the value computed here from its definition (README table) and the completion itself, TRL weighs
    them with the config's weights, and the logged reward is the weighted sum: a term computed wrong, a
    weight ignored or a term left out fails this."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import GRPOTrainer

    from distilflow.components.rl.run import run

    seen: list[dict] = []
    original = GRPOTrainer._calculate_rewards

    def observed(self, inputs, prompts, completions, completion_ids_list):
        per_func = original(self, inputs, prompts, completions, completion_ids_list)
        seen.append(
            {
                "names": list(self.reward_func_names),
                "weights": self.reward_weights.tolist(),
                "per_func": per_func.detach().cpu().clone(),
                "inputs": inputs,
                "prompts": prompts,
                "completions": completions,
                "ids": [list(ids) for ids in completion_ids_list],
            }
        )
        return per_func

    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", observed)
    curate = str(tmp_path / "curate")
    write_jsonl(os.path.join(curate, "scored.jsonl"), [scored("p1", "What is 3 + 4?", 6.0)])
    StageOutput(curate, "curate").finish(result={})
    weights = {"correctness": 1.0, "reward_model": 0.5, "format": 0.2, "length": 0.3}
    cfg = RlConfig(
        output_uri=str(tmp_path / "rl"),
        model=tiny_qwen3,
        problems_uri=problems_file,
        reward_model_uri=reward_stage(str(tmp_path), tiny_reward),  # score mean 0.1, std 0.5
        difficulty_uri=curate,
        rewards=weights,
        max_steps=2,
        learning_rate=1e-3,
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=12,
        length_budget_min=8,
        length_budget_max=20,
        length_slack=2.0,
        default_cd=0.0,
        logging_steps=1,
        save_steps=0,
    )
    result = run(cfg)
    assert len(seen) == result.steps == 2

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_reward, num_labels=1).eval()
    rm_tok = AutoTokenizer.from_pretrained(tiny_reward)
    rm.config.pad_token_id = rm_tok.pad_token_id

    def reward_model(prompt: list[dict], text: str) -> float:
        rendered = rm_tok.apply_chat_template(
            [*prompt, {"role": "assistant", "content": text}], tokenize=False
        )
        with torch.no_grad():
            score = rm(**rm_tok(rendered, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
        return 1 / (1 + math.exp(-(score - 0.1) / 0.5))

    def length(tokens: int, cd: float | None) -> float:
        budget = 8 + (20 - 8) * (0.0 if cd is None else cd) / 9  # README: linear in CD, DAPO's soft penalty
        return 0.0 if tokens <= budget else -min(1.0, (tokens - budget) / (2.0 * budget))

    def states(text: str, answer: str) -> float:
        """The README's correctness: the final answer (the last \\boxed{}, else the last number after the
        thinking block) equals the reference (integers here)."""
        body = text.split("</think>")[-1]
        found = re.findall(r"\\boxed\{([^{}]*)\}", body) or re.findall(r"-?\d+(?:\.\d+)?", body)
        try:
            return float(bool(found) and float(found[-1]) == float(answer))
        except ValueError:
            return 0.0

    for batch in seen:
        assert batch["names"] == ["correctness", "reward_model", "format", "length"]
        assert batch["weights"] == pytest.approx([weights[n] for n in batch["names"]])
        for j, (row, prompt, completion) in enumerate(
            zip(batch["inputs"], batch["prompts"], batch["completions"], strict=True)
        ):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            terms = dict(zip(batch["names"], batch["per_func"][j].tolist(), strict=True))
            assert terms["length"] == pytest.approx(length(len(batch["ids"][j]), row["cd"]), abs=1e-6)
            if "<think>" not in text and "</think>" not in text:  # no thinking block: format 0, plain reply
                assert terms["format"] == 0.0
                assert terms["reward_model"] == pytest.approx(reward_model(prompt, text), abs=1e-5)
            assert terms["correctness"] == states(text, row["answer"])
            assert row["cd"] == (6.0 if row["answer"] == "7" else None)  # p1 has curate's CD, the others none
    # the logged reward of each step is the mean weighted sum of that step's terms
    logged = [sum(w * float(b["per_func"][:, i].mean()) for i, w in enumerate(b["weights"])) for b in seen]
    assert (result.first_reward, result.final_reward) == pytest.approx(tuple(logged), abs=1e-5)
    unweighted = [float(b["per_func"].sum(dim=1).mean()) for b in seen]
    assert any(abs(a - b) > 1e-3 for a, b in zip(logged, unweighted, strict=True))  # the weights matter
