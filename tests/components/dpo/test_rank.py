"""Rank-DPO in the dpo stage: the current student's own answer is the rejected side, the teacher's
curated answer the chosen one; betas as CogPO's from the answer checks; ties left out; the student's
answers cached (a rerun samples none); then DPO trains on the pairs."""

import json
import os

import pytest

from distilflow.components.dpo.config import DpoConfig
from distilflow.outputs import StageOutput
from distilflow.records import Message, PreferencePair, Scored, SftExample, read_jsonl, write_jsonl

PROBLEMS = ["What is 3 + 4?", "What is 6 * 7?", "Name a colour."]


def sampled_answers(model_dir: str, problems: list[str], seed: int, max_new_tokens: int) -> list[str]:
    """The student's answers as the stage samples them (one prompt per call, the seed set once,
    temperature 1, top-p 0.95), reproduced here with transformers; special tokens dropped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    found = []
    for problem in problems:
        chat = [{"role": "user", "content": problem}]
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=1.0,
                top_p=0.95,
                pad_token_id=tok.pad_token_id,
                eos_token_id=sorted({tok.eos_token_id, tok.pad_token_id}),
            )
        found.append(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return found


def curated(root: str, teacher_answers: list[tuple[str, str]], references: list[str | None]) -> str:
    """A curate output: one SFT example per problem (the teacher's answer) and its scored row (a
    teacher answer with a reference is verified right)."""
    out = StageOutput(os.path.join(root, "curate"), "curate")
    examples, scored = [], []
    for i, (problem, (reasoning, content), reference) in enumerate(
        zip(PROBLEMS, teacher_answers, references, strict=True)
    ):
        chosen = Message(role="assistant", content=content, reasoning_content=reasoning or None)
        examples.append(SftExample(id=f"t{i}", messages=[Message(role="user", content=problem), chosen]))
        scored.append(
            Scored(
                id=f"t{i}",
                problem_id=f"p{i}",
                problem=problem,
                reference=reference,
                teacher="teacher",
                sample=0,
                reasoning=reasoning,
                content=content,
                tokens=5,
                finish_reason="stop",
                rv=3,
                cd=3,
                logic=0.9,
                correct=True if reference else None,
                judge="judge",
                kept=True,
            )
        )
    write_jsonl(out.path("sft.jsonl"), examples)
    write_jsonl(out.path("scored.jsonl"), scored)
    out.finish(result={})
    return out.uri


TEACHER = [("3 and 4 make 7", "\\boxed{7}"), ("six sevens", "\\boxed{42}"), ("", "Red.")]


def rank_config(data: str, model: str, output: str, **rank) -> DpoConfig:
    return DpoConfig(
        output_uri=output,
        data_uri=data,
        model=model,
        max_steps=2,
        learning_rate=5e-3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_length=256,
        logging_steps=1,
        save_steps=0,
        rank={"temperature": 1.0, "seed": 3, "batch_size": 1, "max_new_tokens": 8, "pair_beta": 0.1} | rank,
    )


def test_the_students_own_answer_is_rejected_against_the_teachers(tmp_path, tiny_qwen3):
    from distilflow.components.dpo.run import run

    data = curated(str(tmp_path), TEACHER, ["7", None, "red"])
    config = rank_config(data, tiny_qwen3, str(tmp_path / "dpo"))
    result = run(config)
    pairs = read_jsonl(os.path.join(config.output_uri, "rank_pairs.jsonl"), PreferencePair)
    assert [p.id for p in pairs] == ["t0/rank", "t1/rank", "t2/rank"] and result.rank_pairs == 3
    assert result.rows_used == 3 and result.steps == 2
    said = sampled_answers(tiny_qwen3, PROBLEMS, seed=3, max_new_tokens=8)
    for pair, problem, text, (reasoning, content) in zip(pairs, PROBLEMS, said, TEACHER, strict=True):
        assert pair.prompt == [Message(role="user", content=problem)]
        assert pair.rejected[0].content == text.strip() and text.strip()
        assert pair.chosen[0].content == content and (pair.chosen[0].reasoning_content or "") == reasoning
    # a verified-right teacher over a student who missed the reference: gap 1; no reference: gap 0
    assert [p.beta for p in pairs] == [pytest.approx(0.2), pytest.approx(0.1), pytest.approx(0.2)]
    assert result.student_accuracy == 0.0 and result.per_sample_beta is True
    with open(os.path.join(config.output_uri, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["counts"]["rank_pairs"] == 3 and manifest["metrics"]["beta_max"] == pytest.approx(0.2)


@pytest.mark.unit
def test_betas_follow_the_answer_checks_and_equal_answers_make_no_pair(tmp_path, monkeypatch):
    """A right student against a right teacher: gap 0; wrong: gap 1; an answer equal to the teacher's
    (up to surrounding whitespace): no pair, counted as a tie."""
    from distilflow.components.dpo import rank
    from distilflow.records import iter_output_rows
    from distilflow.teachers.protocol import Completion

    data = curated(str(tmp_path), TEACHER, ["7", "42", None])
    said = [("", "so \\boxed{7}"), ("", "\\boxed{41}"), ("", "  Red.\n")]
    monkeypatch.setattr(rank, "student_answers", lambda *a: [Completion(r, c, 3, "stop") for r, c in said])
    config = rank_config(data, "/unused", str(tmp_path / "dpo"), pair_beta=0.2, pair_beta_scale=0.5)
    built = rank.build(config, "/unused", list(iter_output_rows(data, "sft", SftExample)), "/unused")
    assert [p.id for p in built.pairs] == ["t0/rank", "t1/rank"] and built.ties == 1
    assert [p.beta for p in built.pairs] == [pytest.approx(0.2), pytest.approx(0.3)]
    assert built.student_accuracy == 0.5
    no_beta = rank.build(
        config.model_copy(update={"rank": config.rank.model_copy(update={"pair_beta": None})}),
        "/u",
        list(iter_output_rows(data, "sft", SftExample)),
        "/u",
    )
    assert all(p.beta is None for p in no_beta.pairs)


def test_the_students_answers_are_cached(tmp_path, tiny_qwen3, monkeypatch):
    from distilflow.components.dpo import rank
    from distilflow.records import iter_output_rows

    data = curated(str(tmp_path), TEACHER, ["7", None, "red"])
    config = rank_config(data, tiny_qwen3, str(tmp_path / "dpo"))
    examples = list(iter_output_rows(data, "sft", SftExample))
    cache = str(tmp_path / "cache")
    first = rank.build(config, tiny_qwen3, examples, cache)

    def no_model(config):
        raise AssertionError("the student was asked again")

    monkeypatch.setattr("distilflow.teachers.make_teacher", no_model)
    again = rank.build(config, tiny_qwen3, examples, cache)
    assert [p.rejected for p in again.pairs] == [p.rejected for p in first.pairs]
