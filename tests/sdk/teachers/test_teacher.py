"""The teacher contract: reasoning split, digit probabilities, both backends against real models."""

from __future__ import annotations

import math

import pytest

from distilflow.errors import BackendError
from distilflow.teachers import make_teacher
from distilflow.teachers.config import TeacherConfig
from distilflow.teachers.protocol import Unreadable, read_digit_probs, split_reasoning
from tests.conftest import free_port
from tests.fakes.openai_server import TinyOpenAIServer


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "reasoning", "expected"),
    [
        (
            "<think>\nadd 3 and 4\n</think>\n\nThe answer is \\boxed{7}.",
            None,
            ("add 3 and 4", "The answer is \\boxed{7}."),
        ),
        # The template opened <think> in the prompt (R1/QwQ/Qwen3): the reply only closes it.
        ("add 3 and 4\n</think>\n\n\\boxed{7}", None, ("add 3 and 4", "\\boxed{7}")),
        # Cut off by max_new_tokens inside the reasoning: all of it is reasoning, no answer yet.
        ("<think>\nadd 3 and", None, ("add 3 and", "")),
        # The thought_solution layout without tags: split before the line that states the answer.
        (
            "First add.\n3 + 4 = 7.\nFinal answer: \\boxed{7}",
            None,
            ("First add.\n3 + 4 = 7.", "Final answer: \\boxed{7}"),
        ),
        ("just 7", None, ("", "just 7")),
        # The server separated the reasoning (reasoning_content): keep it, drop any echo from content.
        ("<think>x</think>\n\\boxed{7}", "add 3 and 4", ("add 3 and 4", "\\boxed{7}")),
        ("x</think>\\boxed{7}", "add 3 and 4", ("add 3 and 4", "\\boxed{7}")),
        ("\\boxed{7}", "  ", ("", "\\boxed{7}")),
    ],
)
def test_split_reasoning(text, reasoning, expected):
    assert split_reasoning(text, reasoning) == expected


@pytest.mark.unit
def test_read_digit_probs_renormalises_only_digits_that_carry_the_mass():
    probs = read_digit_probs({"7": 0.5, " 7": 0.2, "3": 0.1, "x": 0.2}, "0123456789", 0.5)
    assert isinstance(probs, dict) and math.isclose(sum(probs.values()), 1.0)
    assert math.isclose(probs["7"], 0.7 / 0.8) and math.isclose(probs["3"], 0.1 / 0.8) and probs["0"] == 0.0
    # a reasoning model's first token: the digits hold scraps (0.3 < 0.5), never renormalised into a score
    scraps = read_digit_probs({"Okay": 0.7, "1": 0.2, "2": 0.1}, "0123456789", 0.5)
    assert isinstance(scraps, Unreadable)
    assert (
        "carry 0.30" in scraps.reason
        and "min_digit_mass 0.5" in scraps.reason
        and "'Okay' 0.70" in scraps.reason
    )
    assert read_digit_probs({"1": 0.5, "x": 0.5}, "01", 0.5) == {"0": 0.0, "1": 1.0}  # at the threshold
    assert read_digit_probs({"Okay": 0.7, "1": 0.2, "2": 0.1}, "012", 0.25) == pytest.approx(
        {"0": 0.0, "1": 2 / 3, "2": 1 / 3}
    )
    assert isinstance(read_digit_probs({"yes": 0.9, "no": 0.1}, "01", 0.0), Unreadable)  # no digit at all


def test_transformers_judgments_are_prefilled_and_scraps_are_unreadable(tiny_qwen3):
    config = TeacherConfig(
        backend="transformers", model=tiny_qwen3, max_new_tokens=4, temperature=0, batch_size=2
    )
    teacher = make_teacher(config.model_copy(update={"min_digit_mass": 0.0}))
    chats = [[{"role": "user", "content": q}] for q in ("What is 3 + 4?", "What is 6 * 7?", "2 + 2?")]
    # the judgment continues the judge's reply after the prefix, thinking off (the template's empty block)
    prompt = teacher.tokenizer.decode(teacher._encode(chats[:1], judging=True)["input_ids"][0])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nScore: ")
    probs = teacher.digit_probs(chats, "0123456789")
    assert len(probs) == 3
    for row in probs:
        assert set(row) == set("0123456789") and math.isclose(sum(row.values()), 1.0, rel_tol=1e-6)
        assert all(0 <= p <= 1 for p in row.values())
    # Different prompts give different distributions: the model is really read, not a constant.
    assert probs[0] != probs[1]
    # A random model's digits carry scraps of its probability: at the default threshold nothing is read.
    tops = teacher.top_probs(chats, "0123456789")
    assert all(sum(top[d] for d in "0123456789") < 0.5 for top in tops)
    teacher.config = config
    assert all(isinstance(p, Unreadable) for p in teacher.digit_probs(chats, "0123456789"))
    answers = teacher.generate(chats, n=2)
    assert [len(a) for a in answers] == [2, 2, 2]
    assert all(c.tokens > 0 and c.finish_reason in ("stop", "length") for a in answers for c in a)
    # Greedy decoding is deterministic per prompt, whatever its batch.
    assert teacher.generate(chats[1:2], n=1)[0][0] == answers[1][0]
    teacher.close()


@pytest.fixture(scope="module")
def openai_server(tiny_qwen3):
    server = TinyOpenAIServer(tiny_qwen3, api_key="sk-test-teacher-key")
    base_url = server.start()
    yield server, base_url
    server.stop()


def test_openai_backend_sends_one_request_per_sample_with_distinct_seeds(
    openai_server, tiny_qwen3, monkeypatch
):
    server, base_url = openai_server
    monkeypatch.setenv("TEACHER_KEY", "sk-test-teacher-key")
    config = TeacherConfig(
        backend="openai",
        model=tiny_qwen3,
        base_url=base_url,
        api_key_env="TEACHER_KEY",
        max_new_tokens=5,
        seed=11,
    )
    teacher = make_teacher(config)
    before = len(server.requests)
    answers = teacher.generate([[{"role": "user", "content": "What is 3 + 4?"}]], n=3)
    teacher.close()
    assert len(answers) == 1 and len(answers[0]) == 3
    assert all(c.tokens > 0 for c in answers[0])
    sent = server.requests[before:]
    assert len(sent) == 3 and all("n" not in r["body"] for r in sent)
    assert sorted(r["body"]["seed"] for r in sent) == [11, 12, 13]
    assert all(r["authorization"] == "Bearer sk-test-teacher-key" for r in sent)


def test_openai_backend_names_the_key_variable_when_refused(openai_server, tiny_qwen3, monkeypatch):
    _, base_url = openai_server
    monkeypatch.delenv("TEACHER_KEY", raising=False)
    config = TeacherConfig(
        backend="openai", model=tiny_qwen3, base_url=base_url, api_key_env="TEACHER_KEY", max_retries=0
    )
    with pytest.raises(BackendError, match=r"HTTP 401.*TEACHER_KEY is not set"):
        make_teacher(config).generate([[{"role": "user", "content": "hi"}]])


@pytest.mark.unit
def test_openai_backend_unreachable_names_base_url():
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    config = TeacherConfig(backend="openai", model="m", base_url=base_url, max_retries=0, timeout_s=5)
    with pytest.raises(BackendError, match="cannot reach the endpoint") as info:
        make_teacher(config).generate([[{"role": "user", "content": "hi"}]])
    assert base_url in str(info.value)


def test_openai_reasoning_field_is_read_from_the_message():
    from openai.types.chat import ChatCompletionMessage

    from distilflow.teachers.openai import _reasoning_of

    for key in ("reasoning_content", "reasoning"):
        message = ChatCompletionMessage.model_validate(
            {"role": "assistant", "content": "7", key: "3 + 4 = 7"}
        )
        assert _reasoning_of(message) == "3 + 4 = 7"
    assert _reasoning_of(ChatCompletionMessage.model_validate({"role": "assistant", "content": "7"})) is None


def top20_digits(probs, tokenizer, digits: str) -> dict[str, float] | None:
    """The digits' share of a next-token distribution among its 20 likeliest tokens (a token that is a
    digit once stripped of spaces counts for it), renormalised; None when none of them is a digit."""
    import torch

    mass = dict.fromkeys(digits, 0.0)
    for i in torch.topk(probs, 20).indices.tolist():
        key = tokenizer.decode([i]).strip()
        if key in mass:
            mass[key] += float(probs[i])
    total = sum(mass.values())
    return {d: p / total for d, p in mass.items()} if total else None


@pytest.mark.parametrize("digits", ["0123456789", "01"])
def test_openai_digit_probs_match_the_model_in_process(openai_server, tiny_qwen3, monkeypatch, digits):
    """The endpoint's top-20 logprobs of the prefilled judgment, read by the client, give the model's own
    digit distribution restricted to the digits among those 20 (or an unreadable judgment when none is)."""
    import torch

    server, base_url = openai_server
    monkeypatch.setenv("TEACHER_KEY", "sk-test-teacher-key")
    chats = [[{"role": "user", "content": f"Rate 3 + 4 = 7 with one digit from {digits}."}]]
    local = make_teacher(TeacherConfig(backend="transformers", model=tiny_qwen3, batch_size=1))
    remote = make_teacher(
        TeacherConfig(
            backend="openai", model=tiny_qwen3, base_url=base_url, api_key_env="TEACHER_KEY", min_digit_mass=0
        )
    )
    with torch.no_grad():
        probs = torch.softmax(local.model(**local._encode(chats, judging=True)).logits[0, -1], dim=-1)
    want = top20_digits(probs, local.tokenizer, digits)
    got = remote.digit_probs(chats, digits)[0]
    body = server.requests[-1]["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": "Score: "}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    if want is None:
        assert isinstance(got, Unreadable)
        return
    assert got == pytest.approx(want, abs=1e-4)


# --- The async endpoint client (distilflow.teachers.endpoint) against tests/fakes/fault_server.py ---------------


def fault_teacher(base_url: str, **overrides) -> TeacherConfig:
    spec = {"backend": "openai", "model": "teacher", "base_url": base_url, "max_new_tokens": 32}
    spec |= {"timeout_s": 2, "retry_backoff_s": 0, "retry_max_backoff_s": 0}
    return TeacherConfig(**(spec | overrides))


def test_endpoint_honours_retry_after_and_splits_reasoning_both_ways():
    from tests.fakes.fault_server import FaultServer, respond

    server = FaultServer(retry_after="1", script=["429", "500"])
    with server as base_url:
        teacher = make_teacher(fault_teacher(base_url, max_retries=3))
        answers = teacher.generate([[{"role": "user", "content": f"q{i}"}] for i in range(6)])
    times = [e["t"] for e in server.log]
    # The request refused with 429 waited the server's Retry-After (1 s) before its retry; the 500
    # (no header, zero backoff) was retried at once, so only one retry came a second later.
    assert server.requests == 8 and teacher.stats.retries == 2
    assert teacher.stats.errors == {"rate_limited": 1, "server_error": 1}
    assert 1.0 <= times[-1] - times[0] < 1.8 and sorted(times)[-2] - times[0] < 0.5
    # The server answers in <think> for some requests and in reasoning_content for others.
    assert all(a[0].reasoning.startswith("Consider: q") and "\\boxed" in a[0].content for a in answers)
    assert {"reasoning_content" in respond(e["body"])[0] for e in server.log} == {True, False}


def test_endpoint_does_not_retry_a_client_error(monkeypatch):
    from tests.fakes.fault_server import FaultServer

    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    server = FaultServer(api_key="sk-right")
    with server as base_url, pytest.raises(BackendError, match=r"HTTP 401.*NO_SUCH_KEY is not set"):
        make_teacher(fault_teacher(base_url, api_key_env="NO_SUCH_KEY", max_retries=5)).generate(
            [[{"role": "user", "content": "hi"}]]
        )
    assert server.requests == 0  # refused before it was logged as a chat request: nothing retried


def test_endpoint_gives_up_after_max_retries_and_says_what_failed():
    from tests.fakes.fault_server import FaultServer

    server = FaultServer(faults={"malformed": 1.0})
    with server as base_url, pytest.raises(BackendError, match=r"unusable reply.*after 3 attempts"):
        make_teacher(fault_teacher(base_url, max_retries=2)).generate([[{"role": "user", "content": "hi"}]])
    assert server.requests == 3


def test_endpoint_keeps_concurrency_requests_in_flight():
    import time

    from tests.fakes.fault_server import FaultServer

    server = FaultServer(latency_s=0.1)
    with server as base_url:
        teacher = make_teacher(fault_teacher(base_url, concurrency=5))
        start = time.monotonic()
        answers = teacher.generate([[{"role": "user", "content": f"q{i}"}] for i in range(20)])
        elapsed = time.monotonic() - start
    assert len(answers) == 20 and server.max_in_flight == 5
    assert 0.4 <= elapsed < 1.2  # 4 waves of 5, not 20 requests one after another (2 s)
    assert teacher.stats.mean_latency_s >= 0.1 and teacher.stats.completion_tokens > 0


def test_token_bucket_paces_requests_and_charges_real_usage():
    import asyncio
    import time

    from distilflow.teachers.endpoint import TokenBucket

    async def scenario() -> tuple[float, float]:
        bucket = TokenBucket(per_minute=3000)  # 50 a second, one minute's worth banked
        await bucket.take(3000)  # the bank is spent at once
        start = time.monotonic()
        for _ in range(10):
            await bucket.take(1)
        paced = time.monotonic() - start
        bucket.adjust(10)  # a request used 10 more than its estimate: the next waits for them too
        start = time.monotonic()
        await bucket.take(1)
        return paced, time.monotonic() - start

    paced, charged = asyncio.run(scenario())
    assert 0.18 <= paced < 0.4 and 0.18 <= charged < 0.4


@pytest.mark.unit
def test_retry_after_headers_and_backoff():
    import email.utils
    import time

    import httpx

    from distilflow.teachers.endpoint import backoff_s, retry_after_s

    assert retry_after_s(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert retry_after_s(httpx.Headers({"retry-after": "3"})) == 3.0
    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.5 < retry_after_s(httpx.Headers({"retry-after": date})) <= 5.5
    assert retry_after_s(httpx.Headers({})) is None
    assert backoff_s(0, 1.0, 60.0, 2.0) == 2.0  # the server's wish
    assert 0 <= backoff_s(10, 1.0, 8.0, None) <= 8.0  # capped full jitter
    assert 0 <= backoff_s(0, 1.0, 60.0, 3600.0) <= 1.0  # an absurd Retry-After falls back to backoff


def test_vllm_judgments_are_prefilled_and_read_with_the_same_rule(tiny_qwen3, monkeypatch):
    """The vllm backend's judging (vLLM's offline API, tests/fakes/vllm_module.py on the tiny model):
    the judge's reply is continued after the prefix with thinking off, the digits are read from the
    top-20 logprobs like an endpoint's, and scraps are unreadable at the default min_digit_mass."""
    import sys

    import torch

    from tests.fakes import vllm_module

    monkeypatch.setitem(sys.modules, "vllm", vllm_module)
    monkeypatch.setattr(vllm_module.LLM, "calls", [])
    chats = [[{"role": "user", "content": q}] for q in ("Rate 3 + 4 = 7 from 0 to 9.", "Rate 6 * 7 = 41.")]
    config = TeacherConfig(backend="vllm", model=tiny_qwen3, min_digit_mass=0)
    teacher = make_teacher(config)
    probs = teacher.digit_probs(chats, "0123456789")
    assert any(isinstance(p, dict) for p in probs)  # some digit is among the top 20: values to compare
    (call,) = vllm_module.LLM.calls
    assert call["add_generation_prompt"] is False and call["continue_final_message"] is True
    assert call["chat_template_kwargs"] == {"enable_thinking": False}
    assert all(m[-1] == {"role": "assistant", "content": "Score: "} for m in call["messages"])
    # the same numbers as the model's own softmax over the judgment the transformers backend encodes
    local = make_teacher(TeacherConfig(backend="transformers", model=tiny_qwen3, batch_size=1))
    for chat, got in zip(chats, probs, strict=True):
        with torch.no_grad():
            full = torch.softmax(local.model(**local._encode([chat], judging=True)).logits[0, -1], dim=-1)
        want = top20_digits(full, local.tokenizer, "0123456789")
        if want is None:
            assert isinstance(got, Unreadable)
            continue
        assert got == pytest.approx(want, abs=1e-4)
    teacher.config = config.model_copy(update={"min_digit_mass": 0.5})
    assert all(isinstance(p, Unreadable) for p in teacher.digit_probs(chats, "0123456789"))
