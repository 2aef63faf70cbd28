"""The teacher/judge contract every backend keeps, and what travels through it.

A teacher answers chats (``generate``) and, for judging, gives the next-token probability of
each candidate score digit (``digit_probs``, OmniThought-style expected scores). A chat becomes one
chat-completions request body (``request_body``: also what the teacher cache is keyed on); an answer
is kept raw (what the cache stores) and read back as a ``Completion`` with its reasoning split off.

A judgment read from next-token probabilities is safe with reasoning models: the judge's reply is
opened with ``answer_prefix`` and thinking is switched off (``judge_chat``, ``judge_body``), so the
next token is the score and not the first word of a chain of thought; and the score digits must
carry at least ``min_digit_mass`` of the probability (``read_digit_probs``), else the judgment is
``Unreadable`` (counted with its reason), never a score renormalised from the digits' scraps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

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

    def top_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        """For each chat, asked as a judgment (``judge_chat``), the next-token probability (not
        renormalised) of each digit in ``digits`` and of the judge's likeliest next tokens."""
        ...

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float] | Unreadable]:
        """For each chat, ``read_digit_probs`` of ``top_probs``: the judge's distribution over
        ``digits``, or why it cannot be read."""
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


TOP_LOGPROBS = 20  # next-token candidates a logprobs judgment asks for (OpenAI's and vLLM's default cap)


@dataclass(frozen=True)
class Unreadable:
    """A judgment whose score cannot be read, and why: counted as a judge failure, never a score."""

    reason: str


def read_digit_probs(top: dict[str, float], digits: str, min_mass: float) -> dict[str, float] | Unreadable:
    """The judge's distribution over ``digits`` from its next-token probabilities ``top`` (token ->
    probability, not renormalised; a token stripped of spaces counts for its digit), renormalised over
    the digits; ``Unreadable`` when the digits carry less than ``min_mass`` of the probability (or none):
    a reasoning model's first thinking token, or a judge answering off the scale, leaves only scraps on
    the digits, and scraps renormalised would look like a confident score."""
    mass = {d: 0.0 for d in digits}
    for token, prob in top.items():
        key = token.strip()
        if key in mass:
            mass[key] += prob
    total = sum(mass.values())
    if total <= 0 or total < min_mass:
        likeliest = sorted(top.items(), key=lambda tp: -tp[1])[:3]
        shown = ", ".join(f"{t!r} {p:.2f}" for t, p in likeliest) or "none"
        return Unreadable(
            f"the score digits ({digits}) carry {total:.2f} of the judge's next-token probability, below "
            f"min_digit_mass {min_mass}; its likeliest next tokens: {shown}"
        )
    return {d: p / total for d, p in mass.items()}


def judge_chat(config: TeacherConfig, chat: list[dict]) -> list[dict]:
    """The chat a logprobs judgment sends: the judge's reply opened with ``answer_prefix`` (an
    assistant turn the model continues), or ``chat`` itself without one."""
    if config.answer_prefix is None:
        return chat
    return [*chat, {"role": "assistant", "content": config.answer_prefix}]


def judge_template_kwargs(config: TeacherConfig) -> dict[str, Any]:
    """Chat-template arguments of a judgment: the config's, with thinking off when the reply is
    prefilled (Qwen3-style templates honour ``enable_thinking``; others ignore it)."""
    kwargs = dict(config.chat_template_kwargs or {})
    if config.answer_prefix is not None:
        kwargs["enable_thinking"] = False
    return kwargs


def judge_body(config: TeacherConfig, chat: list[dict]) -> dict[str, Any]:
    """The request of one logprobs judgment (also what the teacher cache keys it on): one greedy token
    and the top next-token logprobs; with ``answer_prefix``, the prefilled reply is continued
    (``continue_final_message``, ``add_generation_prompt: false``: vLLM's and SGLang's fields) with
    thinking off."""
    body = request_body(
        config,
        judge_chat(config, chat),
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=TOP_LOGPROBS,
    )
    body.pop("top_p")
    body.pop("seed", None)
    body.pop("chat_template_kwargs", None)
    if kwargs := judge_template_kwargs(config):
        body["chat_template_kwargs"] = kwargs
    if config.answer_prefix is not None:
        body |= {"continue_final_message": True, "add_generation_prompt": False}
    return body


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
