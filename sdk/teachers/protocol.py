"""The teacher/judge contract every backend keeps, and what travels through it.

A teacher answers chats (``generate``) and, for judging, gives the next-token probability of
each candidate score digit (``digit_probs``, OmniThought-style expected scores). A chat becomes one
chat-completions request body (``request_body``: also what the teacher cache is keyed on); an answer
is kept raw (what the cache stores) and read back as a ``Completion`` with its reasoning split off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from distilflow.errors import BackendError
from distilflow.teachers.config import TeacherConfig

if TYPE_CHECKING:
    from distilflow.teachers.logprobs import TokenLogprobs

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@dataclass
class Completion:
    """One answer: the reasoning kept apart from the content after it."""

    reasoning: str
    content: str
    tokens: int
    finish_reason: str
    prompt_tokens: int = 0
    logprobs: TokenLogprobs | None = None  # the teacher's top-k per token, when asked for (white-box)


class Teacher(Protocol):
    name: str

    def generate(self, chats: list[list[dict]], n: int = 1, logprobs: int = 0) -> list[list[Completion]]:
        """Answer each chat ``n`` times; results keep the order of ``chats``. With ``logprobs`` = k > 0
        each Completion carries the teacher's top-k log-probabilities at every token it generated."""
        ...

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        """For each chat, the normalised next-token probability of each digit in ``digits``."""
        ...

    def close(self) -> None: ...


def split_reasoning(text: str, reasoning: str | None = None) -> tuple[str, str]:
    """Split a reply into (reasoning, answer).

    Order: an explicit ``reasoning_content`` from the server; a ``<think>...</think>`` block
    (DeepSeek-R1/QwQ/Qwen3 style); a lone ``</think>`` (the template opened the block in the
    prompt: everything before it is reasoning); an unclosed ``<think>`` (the whole reply is reasoning);
    otherwise the prompt's "thought then solution" layout, split before the last line that
    states the final answer (``\\boxed{}`` or "final answer"); else no reasoning.
    """
    if reasoning:
        content = THINK_RE.sub("", text)
        if THINK_CLOSE in content:
            content = content.split(THINK_CLOSE, 1)[1]
        return reasoning.strip(), content.strip()
    match = THINK_RE.search(text)
    if match:
        return match.group(1).strip(), (text[: match.start()] + text[match.end() :]).strip()
    if THINK_CLOSE in text:
        # The chat template opened <think> inside the prompt (DeepSeek-R1, QwQ, Qwen3 thinking):
        # the reply starts inside the reasoning and only closes it.
        head, tail = text.split(THINK_CLOSE, 1)
        return head.replace(THINK_OPEN, "").strip(), tail.strip()
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1].strip(), ""
    lines = text.strip().split("\n")
    for i in range(len(lines) - 1, 0, -1):
        low = lines[i].lower()
        if "\\boxed" in low or "final answer" in low or low.startswith("answer:"):
            return "\n".join(lines[:i]).strip(), "\n".join(lines[i:]).strip()
    return "", text.strip()


def normalise_digit_probs(top: dict[str, float], digits: str) -> dict[str, float]:
    """Keep the probability mass on ``digits`` (tokens stripped of spaces) and renormalise."""
    mass = {d: 0.0 for d in digits}
    for token, prob in top.items():
        key = token.strip()
        if key in mass:
            mass[key] += prob
    total = sum(mass.values())
    if total <= 0:
        raise BackendError(f"none of the digits {digits!r} is among the judge's top next tokens")
    return {d: p / total for d, p in mass.items()}


def request_body(
    config: TeacherConfig, chat: list[dict], sample: int = 0, **overrides: Any
) -> dict[str, Any]:
    """The chat-completions body of sample ``sample`` of ``chat``; also what the teacher cache is keyed on."""
    body: dict[str, Any] = {
        "model": config.model,
        "messages": chat,
        "max_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
    }
    if config.seed is not None:
        body["seed"] = config.seed + sample
    if config.chat_template_kwargs:
        body["chat_template_kwargs"] = config.chat_template_kwargs
    body.update(overrides)
    return body


def answer_of_completion(c: Completion) -> dict[str, Any]:
    """An in-process teacher's Completion as a raw answer (what the caches keep), already split; its
    logprobs, when it has them, as ``logits`` (``TokenLogprobs.to_json``)."""
    answer = {
        "content": c.content,
        "reasoning": c.reasoning,
        "split": True,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.tokens,
    }
    if c.logprobs is not None:
        answer["logits"] = c.logprobs.to_json()
    return answer


def completion_of(answer: dict[str, Any]) -> Completion:
    """A raw answer (``answer_of``, or a cache entry) as a Completion with the reasoning split off
    (``split: true``: an in-process teacher already split it)."""
    if answer.get("split"):
        reasoning, content = answer.get("reasoning") or "", answer["content"]
    else:
        reasoning, content = split_reasoning(answer["content"], answer.get("reasoning"))
    logprobs = None
    if answer.get("logits"):
        from distilflow.teachers.logprobs import TokenLogprobs

        logprobs = TokenLogprobs.from_json(answer["logits"])
    return Completion(
        reasoning,
        content,
        answer["completion_tokens"],
        answer["finish_reason"],
        prompt_tokens=answer.get("prompt_tokens", 0),
        logprobs=logprobs,
    )
