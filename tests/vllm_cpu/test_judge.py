"""curate's judge through vLLM: digit probabilities from vLLM's logprobs, offline (``VllmTeacher``)
and at a vLLM server (``OpenAITeacher``, top_logprobs), against the same judgment through
transformers on the same model."""

from __future__ import annotations

import pytest

from tests.vllm_cpu.conftest import job_result, judge_questions

pytestmark = pytest.mark.vllm_cpu

# Both run the model in float32 here (the suite's engine arguments); vLLM reads its top-20 tokens,
# which hold all ten digits of this model, and its CPU kernels sum in another order (measured: 5e-7).
TOLERANCE = 0.005


def transformers_judgments(model: str, questions, **template) -> list[dict[str, float]]:
    """The same questions through TransformersTeacher.digit_probs (or, with ``template``, the
    same softmax over the digits with other chat-template arguments: the test's yardstick)."""
    from distilflow.teachers.config import TeacherConfig
    from distilflow.teachers.transformers import TransformersTeacher

    teacher = TransformersTeacher(
        TeacherConfig(
            backend="transformers",
            model=model,
            device="cpu",
            min_digit_mass=0,
            answer_prefix=None,
            chat_template_kwargs={"enable_thinking": False},
        )
    )
    try:
        if not template:
            return [teacher.digit_probs([chat], digits)[0] for chat, digits in questions]
        return [_probs(teacher, chat, digits, template) for chat, digits in questions]
    finally:
        teacher.close()


def _probs(teacher, chat, digits, template) -> dict[str, float]:
    import torch

    tok = teacher.tokenizer
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **template)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        probs = torch.softmax(teacher.model(**ids).logits[0, -1].float(), dim=-1)
    mass = {d: float(probs[tok.convert_tokens_to_ids(d)]) for d in digits}
    return {d: p / sum(mass.values()) for d, p in mass.items()}


def largest_gap(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    assert len(a) == len(b)
    return max(abs(x[d] - y[d]) for x, y in zip(a, b, strict=True) for d in x)


def expected(p: dict[str, float]) -> float:
    return sum(int(d) * v for d, v in p.items())


@pytest.fixture(scope="module")
def reference(judge_model):
    return transformers_judgments(judge_model, judge_questions())


def test_reference_judgments_are_spread_and_tell_the_prompt_apart(judge_model, reference):
    """The yardstick can fail: the model spreads its mass over several digits, and asking with
    thinking on (the mistake a judge must not make) moves a judgment by more than TOLERANCE."""
    scores = [p for p in reference if len(p) == 10]
    assert scores and all(max(p.values()) < 0.8 for p in scores)
    assert all(sum(v > 0.02 for v in p.values()) >= 4 for p in scores)
    thinking_on = transformers_judgments(judge_model, judge_questions(), enable_thinking=True)
    assert largest_gap(thinking_on, reference) > 10 * TOLERANCE


def test_vllm_teacher_digit_probs_match_transformers(offline, reference):
    """VllmTeacher.digit_probs (top-20 logprobs, thinking off) on curate's own RV/CD/logic questions
    gives the judgments transformers gives on the same model."""
    found = job_result(offline, "judge")
    questions = judge_questions()
    assert len(found) == len(questions) == len(reference)
    for p, (_, digits) in zip(found, questions, strict=True):
        assert sorted(p) == sorted(digits) and abs(sum(p.values()) - 1) < 1e-6
    assert largest_gap(found, reference) < TOLERANCE
    for p, q in zip(found, reference, strict=True):
        if len(p) == 10:  # rv / cd: the expected score curate keeps
            assert abs(expected(p) - expected(q)) < 0.2


def test_endpoint_judge_at_a_vllm_server_matches_transformers(deployed, reference):
    """OpenAITeacher.digit_probs (chat completions with top_logprobs) against the vLLM server that
    deploy started gives the same judgments; a Qwen3-style judge is asked with thinking off, as
    the in-process backends ask it."""
    from distilflow.teachers.config import TeacherConfig
    from distilflow.teachers.openai import OpenAITeacher

    _config, result, _out = deployed
    teacher = OpenAITeacher(
        TeacherConfig(
            backend="openai",
            model=result["served_model"],
            base_url=result["endpoint_url"],
            chat_template_kwargs={"enable_thinking": False},
            max_retries=0,
            min_digit_mass=0,
            answer_prefix=None,
        )
    )
    ordered = [teacher.digit_probs([chat], digits)[0] for chat, digits in judge_questions()]
    assert largest_gap(ordered, reference) < TOLERANCE
