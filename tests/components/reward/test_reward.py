"""The `reward` stage on tiny models on CPU: pairs from curate, the judge's position-bias handling, the
Bradley-Terry model, the calibration gate and its report."""

from __future__ import annotations

import json
import os
import random

import pytest

from distilflow import uri as uris
from distilflow.components.reward.config import RewardConfig
from distilflow.errors import ConfigError, IncompleteOutputError
from distilflow.outputs import MANIFEST, MARKER, StageOutput
from distilflow.records import Message, PreferencePair, Scored, write_jsonl
from tests.browser import render_dom
from tests.conftest import curate_output
from tests.fakes.judge_pairwise_server import PairwiseJudgeServer


def carry_problems(n: int = 25) -> list[tuple[str, str, int, int]]:
    """``(id, problem, right, wrong)``: sums of two digits 5-9, the wrong answer forgets the carry."""
    out = []
    for i in range(n):
        a, b = 5 + i // 5 % 5, 5 + i % 5
        out.append((f"q{i}", f"What is {a} + {b}?", a + b, a + b - 10))
    return out


def carry_scored(n: int = 25, flip: set[int] | None = None) -> list[Scored]:
    """Two judged traces per problem, one right and one wrong; the problems in ``flip`` have their
    answer checks swapped (shuffled labels). CDs spread over 0-8."""
    rows = []
    for i, (pid, problem, right, wrong) in enumerate(carry_problems(n)):
        for k, value in enumerate((right, wrong)):
            ok = (k == 0) != (i in (flip or set()))
            rows.append(
                Scored(
                    id=f"{pid}/t/{k}",
                    problem_id=pid,
                    problem=problem,
                    reference=str(right),
                    teacher="t",
                    sample=k,
                    reasoning="Add the ones, then carry.",
                    content=f"The answer is \\boxed{{{value}}}.",
                    tokens=12,
                    finish_reason="stop",
                    rv=3.0,
                    cd=float(i % 9),
                    logic=1.0,
                    correct=ok,
                    judge="j",
                    kept=ok,
                )
            )
    return rows


def scored_output(root: str, rows: list[Scored]) -> str:
    out = StageOutput(os.path.join(root, "curate"), "curate")
    write_jsonl(out.path("scored.jsonl"), rows)
    out.finish(result={})
    return out.uri


def carry_pairs(n: int = 8, reversed_every: int = 2) -> list[PreferencePair]:
    """curate-style pairs (``<problem>/pair``); every ``reversed_every``-th has the wrong answer as chosen."""
    pairs = []
    for i, (pid, problem, right, wrong) in enumerate(carry_problems(n)):
        think = "Add the ones, then carry."
        good = [
            Message(role="assistant", content=f"The answer is \\boxed{{{right}}}.", reasoning_content=think)
        ]
        bad = [
            Message(role="assistant", content=f"The answer is \\boxed{{{wrong}}}.", reasoning_content=think)
        ]
        flip = i % reversed_every == 1
        pairs.append(
            PreferencePair(
                id=f"{pid}/pair",
                prompt=[Message(role="user", content=problem)],
                chosen=bad if flip else good,
                rejected=good if flip else bad,
            )
        )
    return pairs


def config(model: str, data_uri: str, output_uri: str, **overrides) -> RewardConfig:
    base = dict(
        output_uri=output_uri,
        data_uri=data_uri,
        model=model,
        max_steps=16,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_length=256,
        logging_steps=1,
        heldout_fraction=0.25,
        min_heldout_accuracy=0.8,
        save_steps=8,
    )
    base.update(overrides)
    return RewardConfig(**base)


# ---------------------------------------------------------------- training and the gate


def test_reward_learns_a_separable_preference_and_passes_the_gate(tiny_qwen3, tmp_path):
    """Right vs carry-forgetting sums: the random head prefers the wrong answers (accuracy 0); after
    training the held-out problems are ranked right, by CD bin too, and the model is published."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distilflow.components.reward.run import run
    from distilflow.training.checkpointing import list_checkpoints

    data = scored_output(str(tmp_path), carry_scored())
    labels = str(tmp_path / "labels.jsonl")
    write_jsonl(labels, [p for p in carry_pairs(6, reversed_every=99)])  # held-out "human" labels
    cfg = config(
        tiny_qwen3,
        data,
        str(tmp_path / "reward"),
        pairs_from="scored",
        labels_uri=labels,
        min_label_agreement=0.6,
    )
    result = run(cfg)

    assert result.rows_used + result.rows_heldout == 25 and result.rows_heldout == 6
    assert result.train_accuracy_before <= 0.2 and result.train_accuracy == 1.0
    assert result.heldout_accuracy == 1.0 and result.label_agreement >= 0.8 and result.label_pairs == 6
    assert result.gate["passed"] and result.final_loss < result.first_loss
    assert sum(c["pairs"] for c in result.heldout_accuracy_by_cd.values()) == 6
    assert set(result.heldout_accuracy_by_cd) <= {"[0, 3)", "[3, 6)", "[6, 9]"}
    assert result.heldout_accuracy_by_source == {"curate": {"accuracy": 1.0, "pairs": 6}}
    assert result.score_std > 0
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))
    assert manifest["metrics"]["heldout_accuracy"] == 1.0 and manifest["metrics"]["gate_passed"] == 1.0
    assert any(k.startswith("heldout_accuracy_cd_") for k in manifest["metrics"])
    assert os.path.exists(os.path.join(cfg.output_uri, MARKER))
    assert [c.step for c in list_checkpoints(cfg.output_uri)] == [8, 16]  # checkpoints as in sft

    # the report renders the curves, the gate and the accuracy by CD bin
    dom = render_dom(os.path.join(cfg.output_uri, "report.html"))
    assert "Calibration gate: passed" in dom and 'id="heldout_accuracy_by_cd"' in dom
    assert 'aria-label="loss"' in dom and 'aria-label="accuracy"' in dom

    # the published model is a one-label classifier ranking an unseen right sum above the carry slip
    model = AutoModelForSequenceClassification.from_pretrained(result.model_uri)
    tokenizer = AutoTokenizer.from_pretrained(result.model_uri)
    assert model.config.num_labels == 1

    def score(answer: str) -> float:
        messages = [{"role": "user", "content": "What is 9 + 4?"}, {"role": "assistant", "content": answer}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    assert score("The answer is \\boxed{13}.") > score("The answer is \\boxed{3}.")

    # the rl stage's reward_model term reads this output (its gate passed) and scores on the same scale
    from distilflow.components.rl.run import load_reward_model, resolve_reward_model

    path, stats = resolve_reward_model(cfg.output_uri)
    assert path == result.model_uri and stats == {
        "score_mean": result.score_mean,
        "score_std": result.score_std,
    }
    term = load_reward_model(path, stats, normalize=True)
    prompt = [{"role": "user", "content": "What is 9 + 4?"}]
    think = "<think>Add the ones, then carry.</think>"
    right, wrong = term(
        [prompt, prompt],
        [
            [{"role": "assistant", "content": f"{think}The answer is \\boxed{{13}}."}],
            [{"role": "assistant", "content": f"{think}The answer is \\boxed{{3}}."}],
        ],
    )
    assert 0.5 < right < 1 and 0 < wrong < 0.5

    again = run(cfg)
    assert again == result
    assert (
        json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))["finished_at"]
        == manifest["finished_at"]
    )


def test_gate_fails_a_reward_model_trained_on_shuffled_labels(tiny_qwen3, tmp_path):
    """Half the problems have their answer checks swapped: the model cannot rank held-out pairs, the
    stage fails with the figures, and nothing is published or marked complete."""
    from distilflow.components.reward.run import CalibrationGateError, run
    from distilflow.training.checkpointing import list_checkpoints

    flip = set(random.Random(0).sample(range(25), 12))
    data = scored_output(str(tmp_path), carry_scored(flip=flip))
    cfg = config(tiny_qwen3, data, str(tmp_path / "reward"), pairs_from="scored")
    with pytest.raises(
        CalibrationGateError, match=r"held-out pairwise accuracy [0-9.]+ < min_heldout_accuracy 0.8"
    ) as err:
        run(cfg)
    assert "by CD bin: [" in str(err.value) and "Nothing was published" in str(err.value)
    assert not os.path.exists(os.path.join(cfg.output_uri, MARKER))
    assert not os.path.exists(os.path.join(cfg.output_uri, "model"))
    assert list_checkpoints(cfg.output_uri) == []  # a rerun with a new config starts afresh
    gate = json.loads(uris.read_text(os.path.join(cfg.output_uri, "gate.json")))
    assert gate["gate"]["passed"] is False and gate["heldout_accuracy"] < 0.8
    assert "FAILED" in uris.read_text(os.path.join(cfg.output_uri, "report.html"))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("heldout", "agreement", "failures"),
    [
        (0.8, 0.6, []),  # at both thresholds: passes (>=)
        (0.79, 0.9, ["held-out pairwise accuracy 0.79 < min_heldout_accuracy 0.8"]),
        (0.9, 0.5, ["agreement with labels_uri 0.5 < min_label_agreement 0.6"]),
        (None, None, ["held-out pairwise accuracy None < min_heldout_accuracy 0.8",
                      "agreement with labels_uri None < min_label_agreement 0.6"]),
    ],
)  # fmt: skip
def test_gate_verdict_holds_both_thresholds(heldout, agreement, failures):
    """The calibration gate fails on either figure below its threshold, or missing, and says which."""
    from distilflow.components.reward.run import gate_verdict

    cfg = config("m", "d.jsonl", "o", min_heldout_accuracy=0.8, min_label_agreement=0.6, labels_uri="l.jsonl")
    verdict = gate_verdict(cfg, heldout, agreement)
    assert verdict["failures"] == failures and verdict["passed"] is (not failures)
    assert (verdict["heldout_accuracy"], verdict["label_agreement"]) == (heldout, agreement)
    off = gate_verdict(config("m", "d.jsonl", "o", min_heldout_accuracy=None), 0.1, 0.1)
    assert off["passed"] is True  # no thresholds set: nothing to hold


def test_reward_component_lora_from_reward_model(tiny_reward, tmp_path):
    """The component trains a LoRA adapter (and head) on a sequence-classification folder, merges it,
    and publishes URI, metrics and report."""
    from kfp import dsl
    from transformers import AutoModelForSequenceClassification

    from distilflow.components.reward.component import reward

    data = curate_output(str(tmp_path), "preference.jsonl", carry_pairs(6, reversed_every=99))
    model = dsl.Model(name="model", uri=str(tmp_path / "artifact"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    report = dsl.HTML(name="report", uri=str(tmp_path / "report.html"))
    root = str(tmp_path / "run")
    section = {"model": tiny_reward, "max_steps": 3, "max_length": 128, "heldout_fraction": 0.3}
    reward.python_func(
        config={"reward": {**section, "min_heldout_accuracy": None, "lora": True, "lora_r": 4}},
        output_uri=root,
        data=dsl.Dataset(name="data", uri="x", metadata={"uri": data}),
        model=model,
        metrics=metrics,
        report=report,
        tensorboard=dsl.Artifact(name="tensorboard", uri=str(tmp_path / "tensorboard")),
    )
    assert os.listdir(tmp_path / "tensorboard") == ["README.txt"]  # untracked: a note, no event files
    assert model.metadata == {
        "uri": os.path.join(root, "reward", "model"),
        "stage_uri": os.path.join(root, "reward"),
    }
    assert metrics.metadata["steps"] == 3 and metrics.metadata["rows_heldout"] == 2
    assert 0.0 <= metrics.metadata["heldout_accuracy"] <= 1.0 and metrics.metadata["gate_passed"] == 1.0
    with open(report.path) as f:
        assert "Calibration gate: passed" in f.read()
    merged = AutoModelForSequenceClassification.from_pretrained(model.metadata["uri"])
    assert merged.config.num_labels == 1 and not hasattr(merged, "peft_config")


def test_reward_refuses_incomplete_upstream(tiny_qwen3, tmp_path):
    from distilflow.components.reward.run import run

    data = curate_output(str(tmp_path), "preference.jsonl", carry_pairs(4), complete=False)
    with pytest.raises(IncompleteOutputError):
        run(config(tiny_qwen3, data, str(tmp_path / "reward")))


@pytest.mark.unit
def test_reward_config_checks_the_gate_settings():
    base = {"output_uri": "/o", "data_uri": "/d", "model": "/m"}
    with pytest.raises(ConfigError, match="holds none out"):
        RewardConfig.from_dict({**base, "heldout_fraction": 0})
    with pytest.raises(ConfigError, match="needs labels_uri"):
        RewardConfig.from_dict({**base, "min_label_agreement": 0.7})
    assert RewardConfig.from_dict({**base, "heldout_fraction": 0, "min_heldout_accuracy": None})


# ---------------------------------------------------------------- data


@pytest.mark.unit
def test_split_heldout_is_seeded_keeps_problems_together_and_training_rows():
    from distilflow.components.reward.run import split_heldout

    rows = [{"i": i} for i in range(10)]
    train, held = split_heldout(rows, 0.2, seed=3)
    assert len(train) == 8 and len(held) == 2
    assert sorted(r["i"] for r in train + held) == list(range(10))
    assert split_heldout(rows, 0.2, seed=3) == (train, held)
    assert split_heldout(rows, 0.0, seed=3) == (rows, [])
    assert split_heldout(rows[:2], 0.01, seed=0)[1] != []  # a positive fraction holds out at least one
    assert split_heldout(rows[:1], 0.5, seed=0) == (rows[:1], [])  # never the only pair
    # pairs of one problem stay together
    train, held = split_heldout(rows, 0.4, seed=1, group=lambda r: r["i"] // 2)
    assert {r["i"] // 2 for r in train}.isdisjoint({r["i"] // 2 for r in held}) and len(held) == 4


@pytest.mark.unit
def test_pairs_from_scored_order_by_correctness_then_rv_fit(tmp_path):
    """Up to pairs_per_problem pairs per problem: right before unverified before wrong, then RV closer to
    the target for the problem's CD (curate's rule and settings); ties make no pair; dropped problems none."""
    import yaml

    from distilflow.components.reward.pairs import pairs_from_scored, scored_rows, selection_config

    def row(pid: str, k: int, correct: bool | None, rv: float, cd: float = 4.0, dropped: str | None = None):
        return carry_scored(1)[0].model_copy(
            update=dict(
                id=f"{pid}/t/{k}",
                problem_id=pid,
                sample=k,
                content=f"{pid}-{k}",
                correct=correct,
                rv=rv,
                cd=cd,
                dropped_by=dropped,
            )
        )

    rows = [
        row("a", 0, False, 4.0),
        row("a", 1, True, 8.0),
        row("a", 2, True, 4.0),
        row("a", 3, None, 4.0),
        row("b", 0, True, 3.0),
        row("b", 1, True, 3.0),  # a tie: no pair
        row("c", 0, True, 1.0, dropped="contaminated"),
        row("c", 1, False, 1.0, dropped="contaminated"),
    ]
    path = str(tmp_path / "scored.jsonl")
    write_jsonl(path, rows)
    # curate ran with a matched RV target of 1 x CD: 4 for these problems
    uris.write_text(
        str(tmp_path / "config.resolved.yaml"), yaml.safe_dump({"rv_target_scale": 1.0, "judge": {}})
    )
    pairs = pairs_from_scored(scored_rows(path), selection_config(str(tmp_path)), per_problem=3)
    assert {p.group for p in pairs} == {"a"} and all(p.cd == 4.0 for p in pairs)
    assert [p.pair.id for p in pairs] == ["a/pair-0", "a/pair-1", "a/pair-2"]
    # the widest gaps first: right on target vs wrong, right off target vs wrong, unverified vs wrong
    assert [(p.pair.chosen[0].content, p.pair.rejected[0].content) for p in pairs] == [
        ("a-2", "a-0"),
        ("a-1", "a-0"),
        ("a-3", "a-0"),
    ]
    more = pairs_from_scored(scored_rows(path), selection_config(str(tmp_path)), per_problem=10)
    assert ("a-2", "a-1") in [(p.pair.chosen[0].content, p.pair.rejected[0].content) for p in more]  # RV fit
    assert len(more) == 6
    # curate's preference pairs get their problem's CD from scored.jsonl
    from distilflow.components.reward.pairs import pairs_from_preference

    pref = pairs_from_preference(carry_pairs(2), {"q0": rows[:2]})
    assert [p.cd for p in pref] == [4.0, None] and pref[0].group == "q0"


# ---------------------------------------------------------------- the judge and position bias


@pytest.fixture
def judge_server():
    servers = []

    def start(position_bias: float) -> tuple[PairwiseJudgeServer, str]:
        server = PairwiseJudgeServer(position_bias=position_bias)
        servers.append(server)
        return server, server.start()

    yield start
    for server in servers:
        server.stop()


def judge_config(base_url: str):
    from distilflow.teachers.config import TeacherConfig

    return TeacherConfig(backend="openai", base_url=base_url, model="pairwise-judge", max_retries=0)


@pytest.mark.parametrize("mode", ["logprobs", "generate"])
def test_judge_sees_both_orders_and_labels_pairs_despite_position_bias(judge_server, mode):
    """A judge that favours the first answer (+0.3) still labels every pair right once both orders are
    asked; curate's reversed pairs are relabelled (label) or dropped (agree)."""
    from distilflow.components.reward.pairs import Pair, judge_pairs
    from distilflow.teachers import make_teacher

    server, url = judge_server(0.3)
    candidates = [Pair(p, None, "curate", p.id) for p in carry_pairs(6)]  # pairs 1, 3, 5 reversed
    kept, counts = judge_pairs(candidates, make_teacher(judge_config(url)), mode, "label")
    assert counts.judged == 6 and counts.inconsistent == 0 and counts.unparsed == 0
    assert counts.disagreed == 3
    assert len(kept) == 6 and {p.source for p in kept} == {"judge"}
    for p in kept:
        problem = p.pair.prompt[0].content
        a, b = (int(x) for x in problem.removeprefix("What is ").rstrip("?").split(" + "))
        assert f"\\boxed{{{a + b}}}" in p.pair.chosen[0].content
    # every pair was shown twice, its answers swapped (requests run concurrently: compare as a set)
    shown = []
    for prompt in server.prompts:
        problem = prompt.split("Problem:")[1].split("Answer 1:")[0].strip()
        one, two = prompt.split("Answer 1:")[1].split("Answer 2:")
        shown.append((problem, one.strip(), two.split("\n\nWhich answer")[0].strip()))
    assert len(shown) == 12 and len(set(shown)) == 12
    assert {(q, b, a) for q, a, b in shown} == set(shown)
    if mode == "logprobs":
        assert counts.first_rate == pytest.approx((0.99 + 0.4) / 2)  # the bias, measured: > 0.5

    agreed, counts = judge_pairs(candidates, make_teacher(judge_config(url)), mode, "agree")
    assert [p.pair.id for p in agreed] == ["q0/pair", "q2/pair", "q4/pair"] and counts.disagreed == 3


def test_judge_that_picks_by_position_is_dropped_and_counted(judge_server):
    """A judge whose position bias outweighs the answers' quality contradicts itself across the two
    orders on every pair: all are dropped and counted, and the stage refuses to train on nothing."""
    from distilflow.components.reward.pairs import Pair, judge_pairs
    from distilflow.teachers import make_teacher

    _, url = judge_server(0.45)
    candidates = [Pair(p, None, "curate", p.id) for p in carry_pairs(4)]
    kept, counts = judge_pairs(candidates, make_teacher(judge_config(url)), "logprobs", "label")
    assert kept == [] and counts.inconsistent == 4 and counts.judged == 4


@pytest.mark.parametrize(
    ("judge", "unparsed"), [({}, 0), ({"answer_prefix": None}, 6)], ids=["answers-first", "thinking-first"]
)
def test_pairwise_verdicts_of_a_reasoning_judge_through_the_teacher_cache(tmp_path, judge, unparsed):
    """The reward stage's judging path (``CachedTeacher``, as ``run`` builds it) with a judge that behaves
    like a reasoning model: prefilled, each verdict is P("1") of the server's rule (0.85 when only answer 1
    is right, 0.15 the other way round) and every pair is labelled right; asked plainly, the judge starts
    thinking, every verdict is unreadable and counted as unparsed, and nothing crashes or is labelled."""
    from distilflow.components.reward.pairs import Pair, judge_pairs
    from distilflow.teachers.cache import TeacherCache
    from distilflow.teachers.cached import CachedTeacher
    from distilflow.teachers.config import TeacherConfig
    from tests.fakes.reasoning_judge_server import ReasoningJudgeServer

    with ReasoningJudgeServer() as url:
        config = TeacherConfig(backend="openai", base_url=url, model="reasoner", max_retries=0, **judge)
        cached = CachedTeacher(config, TeacherCache(str(tmp_path / "cache")))
        candidates = [Pair(p, None, "curate", p.id) for p in carry_pairs(6)]  # pairs 1, 3, 5 reversed
        kept, counts = judge_pairs(candidates, cached, "logprobs", "label")
    assert counts.judged == 6 and counts.unparsed == unparsed and counts.inconsistent == 0
    if unparsed:
        assert kept == [] and counts.first_probs == []
        return
    # curate's order first: right answer first on pairs 0, 2, 4 (0.85 then 0.15), wrong first on 1, 3, 5
    assert counts.first_probs == pytest.approx([0.85, 0.15, 0.15, 0.85] * 3)
    assert counts.disagreed == 3 and len(kept) == 6
    for p in kept:
        a, b = (int(x) for x in p.pair.prompt[0].content.removeprefix("What is ").rstrip("?").split(" + "))
        assert f"\\boxed{{{a + b}}}" in p.pair.chosen[0].content


def test_reward_stage_with_a_biased_judge(tiny_qwen3, judge_server, tmp_path):
    """End to end: curate's pairs (half reversed) relabelled by a position-biased judge through the
    teacher contract; the counts reach the result and manifest; an all-inconsistent judge fails the stage."""
    from distilflow.components.reward.run import run

    server, url = judge_server(0.3)
    data = curate_output(str(tmp_path), "preference.jsonl", carry_pairs(20))
    cfg = config(
        tiny_qwen3,
        data,
        str(tmp_path / "reward"),
        judge=judge_config(url).to_dict(),
        max_steps=12,
        min_heldout_accuracy=0.6,
        save_steps=0,
    )
    result = run(cfg)
    assert result.pairs_judged == 20 and result.judge_inconsistent == 0 and result.judge_disagreed == 10
    assert result.judge_first_rate == pytest.approx((0.99 + 0.4) / 2)
    assert result.heldout_accuracy_by_source["judge"]["pairs"] == result.rows_heldout
    manifest = json.loads(uris.read_text(os.path.join(cfg.output_uri, MANIFEST)))
    assert manifest["counts"]["judge_disagreed"] == 10
    pairs = uris.read_text(os.path.join(cfg.output_uri, "pairs.jsonl")).splitlines()
    assert len(pairs) == 20
    assert manifest["counts"]["judge_requests"] == 40 and manifest["counts"]["judge_cache_hits"] == 0

    # killed before pairs.jsonl was written: the rerun takes every verdict from the teacher cache
    from distilflow.components.reward.run import build_pairs
    from distilflow.outputs import StageOutput

    asked = len(server.prompts)
    again = RewardConfig.model_validate(
        cfg.to_dict()
        | {"output_uri": str(tmp_path / "again"), "cache_uri": os.path.join(cfg.output_uri, "cache")}
    )
    rebuilt, counts, _ = build_pairs(again, StageOutput(again.output_uri, "reward"))
    assert len(server.prompts) == asked and counts["judge_requests"] == 0 and counts["judge_cache_hits"] == 40
    written = [json.loads(line)["pair"] for line in pairs]
    assert {p.pair.id: p.pair.chosen[0].content for p in rebuilt} == {
        w["id"]: w["chosen"][0]["content"] for w in written
    }

    _, biased = judge_server(0.45)
    bad = cfg.model_copy(update={"output_uri": str(tmp_path / "bad"), "judge": judge_config(biased)})
    with pytest.raises(ConfigError, match="kept none of the 20 pairs"):
        run(RewardConfig.model_validate(bad.to_dict()))


@pytest.mark.slow
def test_reward_then_rl_with_two_cpu_processes(tiny_qwen3, tmp_path):
    """Both stages launch themselves under torchrun (2 processes, gloo): the pairs are built once and
    read back by the ranks, and rl's reward_model term reads the gated reward output (about 1-2 min)."""
    from distilflow.components.reward.run import run
    from distilflow.components.rl.config import RlConfig
    from distilflow.components.rl.run import run as rl_run
    from distilflow.records import Problem

    data = scored_output(str(tmp_path), carry_scored())
    cfg = config(tiny_qwen3, data, str(tmp_path / "reward"), pairs_from="scored", processes=2, save_steps=4)
    result = run(cfg.model_copy(update={"max_steps": 8, "per_device_train_batch_size": 2}))
    assert result.gate["passed"] and result.heldout_accuracy >= 0.8 and result.steps == 8
    problems = str(tmp_path / "problems.jsonl")
    write_jsonl(
        problems, [Problem(id=f"q{i}", problem=f"What is {i} + 1?", answer=str(i + 1)) for i in range(4)]
    )
    policy = rl_run(
        RlConfig(
            output_uri=str(tmp_path / "rl"),
            model=tiny_qwen3,
            problems_uri=problems,
            processes=2,
            num_generations=4,
            per_device_train_batch_size=4,
            max_completion_length=8,
            max_steps=2,
            learning_rate=1e-4,
            rewards={"correctness": 1.0, "reward_model": 0.5, "length": 0.1},
            reward_model_uri=cfg.output_uri,
            difficulty_uri=data,
            length_budget_min=4,
            save_steps=0,
        )
    )
    assert policy.steps == 2 and policy.problems_with_cd == 4
    assert set(policy.final_terms) == {"correctness", "reward_model", "length"}
