"""A judge that behaves like a reasoning model behind an OpenAI-compatible server (vLLM) on 127.0.0.1.

A reasoning model's chat template opens a thinking block in the generation prompt (QwQ, DeepSeek-R1,
Qwen3 with thinking on), so its first generated token is the first word of a chain of thought, not a
score. This server answers like one:

- a chat sent with ``add_generation_prompt`` starts the reply with thinking: ``Okay`` takes most of the
  next-token probability and the digits get only scraps (list numbering: ``1``, ``2``), unless
  ``honours_enable_thinking`` and ``chat_template_kwargs: {enable_thinking: false}`` (Qwen3's template);
- a chat ending in an assistant turn sent with ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM's prefill fields) continues that turn: the next token is the
  score, drawn from the judge's distribution (``distribution``), with ``digit_mass`` of the probability
  on the digits (``digit_mass=0.1``: a judge whose digits carry little mass);
- ``logprobs=False``: a server that returns no logprobs at all;
- ``inverted=True``: a judge whose digits do not follow the question (it scores the opposite);
- without ``logprobs`` in the request it thinks (``reasoning_content``) and then writes its score as
  ``<score>N</score>`` (curate's generate mode) or ``<choice>N</choice>`` (reward's pairwise judge).

The judge's distribution is a rule of the prompt, known to the tests: curate's rubrics (``[Problem]``,
``[Reasoning]``, ``[Final answer]`` sections) get RV from the reasoning's length, CD from the problem's
numbers, logic from whether the final answer is the sum the problem asks for; reward's pairwise prompt
(``Answer 1:``/``Answer 2:``) gets 1 when only answer 1 has the right sum. Requests are validated as
vLLM validates them. It imports nothing from distilflow.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
import uuid
from typing import Any

from tests.fakes.loopback import LoopbackHandler, LoopbackServer

SUM_RE = re.compile(r"What is (\d+) \+ (\d+)\?")
BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
MAX_TOP_LOGPROBS = 20  # vLLM's default max_logprobs


def _right(problem: str, answer: str) -> bool:
    found = SUM_RE.search(problem)
    boxed = BOXED_RE.findall(answer)
    return bool(found and boxed) and boxed[-1].strip() == str(int(found.group(1)) + int(found.group(2)))


def peaked(centre: float, digits: str) -> dict[str, float]:
    """A distribution over ``digits`` peaked at ``centre`` (weights exp(-|d - centre|)): noisy, not exact."""
    weights = {d: math.exp(-abs(int(d) - centre)) for d in digits}
    total = sum(weights.values())
    return {d: w / total for d, w in weights.items()}


def section(prompt: str, name: str) -> str:
    """The text of a rubric prompt's ``[name]`` section (up to the next blank line)."""
    head = f"[{name}]\n"
    return prompt.split(head, 1)[1].split("\n\n", 1)[0].strip() if head in prompt else ""


def distribution(prompt: str) -> dict[str, float]:
    """The judge's distribution over the score digits for one judgment prompt (the rule tests rely on)."""
    if "Answer 1:" in prompt and "Answer 2:" in prompt:
        problem = prompt.split("Problem:", 1)[-1]
        first = prompt.split("Answer 1:", 1)[1].split("Answer 2:", 1)[0]
        second = prompt.split("Answer 2:", 1)[1]
        better = _right(problem, first) - _right(problem, second)
        p1 = {1: 0.85, 0: 0.5, -1: 0.15}[better]
        return {"1": p1, "2": 1 - p1}
    problem, reasoning, answer = (section(prompt, name) for name in ("Problem", "Reasoning", "Final answer"))
    if "from 0 or 1" in prompt:
        p1 = 0.85 if _right(problem, answer) else 0.15
        return {"0": 1 - p1, "1": p1}
    if "REASONING VERBOSITY" in prompt:
        return peaked(min(9, len(reasoning.split()) / 4), "0123456789")
    return peaked(min(9, sum(len(n) for n in re.findall(r"\d+", problem))), "0123456789")


def user_prompt(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")


class ReasoningJudgeServer(LoopbackServer):
    """Serve the reasoning judge as ``served_name``; ``start()`` returns the base URL ending in ``/v1``."""

    def __init__(
        self,
        served_name: str = "reasoner",
        logprobs: bool = True,
        digit_mass: float = 0.96,
        honours_enable_thinking: bool = False,
        inverted: bool = False,
    ):
        self.served_name = served_name
        self.logprobs, self.digit_mass = logprobs, digit_mass
        self.honours_enable_thinking = honours_enable_thinking
        self.inverted = inverted
        self.bodies: list[dict[str, Any]] = []  # every accepted request body, for asserts
        self._lock = threading.Lock()

    def start(self) -> str:
        return super().start() + "/v1"

    def handler(self) -> type[LoopbackHandler]:
        server = self

        class Handler(LoopbackHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200, {"object": "list", "data": [{"id": server.served_name, "object": "model"}]}
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = self._read_json()
                problem = server.invalid(body)
                if problem:
                    self._send(400 if "model" not in problem else 404, {"error": {"message": problem}})
                    return
                with server._lock:
                    server.bodies.append(body)
                # the client may give up on a batch after one failed judgment
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(200, server.reply(body))

        return Handler

    def invalid(self, body: Any) -> str | None:
        """What vLLM would refuse in ``body`` (None: a valid request)."""
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return "messages: a non-empty list is required"
        if body.get("model") != self.served_name:
            return f"the model {body.get('model')!r} does not exist"
        if any(not isinstance(m, dict) or "role" not in m or "content" not in m for m in body["messages"]):
            return "messages: every message needs a role and a content"
        continues = bool(body.get("continue_final_message"))
        if continues and body.get("add_generation_prompt", True):
            return "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        if continues and body["messages"][-1]["role"] != "assistant":
            return "continue_final_message needs a final assistant message to continue"
        top = body.get("top_logprobs")
        if top is not None and not body.get("logprobs"):
            return "top_logprobs needs logprobs: true"
        if top is not None and not 0 <= int(top) <= MAX_TOP_LOGPROBS:
            return f"top_logprobs must be within 0..{MAX_TOP_LOGPROBS}"
        return None

    def answers_first(self, body: dict[str, Any]) -> bool:
        """Whether the next token is the answer: a continued prefill, or thinking switched off where the
        template honours it."""
        thinking_off = (body.get("chat_template_kwargs") or {}).get("enable_thinking") is False
        return bool(body.get("continue_final_message")) or (thinking_off and self.honours_enable_thinking)

    def next_tokens(self, body: dict[str, Any]) -> dict[str, float]:
        """The next-token probabilities of a judgment (token -> probability)."""
        judged = distribution(user_prompt(body["messages"]))
        if self.inverted:  # the highest digit takes the lowest one's probability, and so on
            judged = dict(zip(judged, reversed(list(judged.values())), strict=True))
        if self.answers_first(body):
            rest = 1 - self.digit_mass
            return {
                **{d: p * self.digit_mass for d, p in judged.items()},
                "The": rest * 0.7,
                "\n": rest * 0.3,
            }
        # thinking first: the digits only get list numbering's scraps, whatever the judgment
        return {"Okay": 0.9, "<think>": 0.05, "Let": 0.03, "1": 0.015, "2": 0.005}

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("logprobs"):
            choice = self._logprobs_choice(body)
        else:
            judged = distribution(user_prompt(body["messages"]))
            best = max(judged, key=judged.__getitem__)
            tag = "choice" if "Answer 1:" in user_prompt(body["messages"]) else "score"
            message = {
                "role": "assistant",
                "content": f"<{tag}>{best}</{tag}>",
                "reasoning_content": "Okay, let me weigh the steps one by one before I score them.",
            }
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51},
        }

    def _logprobs_choice(self, body: dict[str, Any]) -> dict[str, Any]:
        probs = self.next_tokens(body)
        ranked = sorted(probs.items(), key=lambda tp: -tp[1])
        entries = [
            {"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in ranked if p > 0
        ]
        first = dict(entries[0], top_logprobs=entries[: int(body.get("top_logprobs") or 0)])
        message = {"role": "assistant", "content": first["token"]}
        logprobs = {"content": [first]} if self.logprobs else None
        return {"index": 0, "message": message, "finish_reason": "length", "logprobs": logprobs}
