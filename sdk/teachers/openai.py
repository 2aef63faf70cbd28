"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang,
DashScope, PAI-EAS, ``transformers serve``), called through ``distilflow.teachers.endpoint`` (requests
in flight, rate budgets, retries with backoff). The API key is read from the environment variable
named by ``api_key_env``; the key itself never enters a config, a log, a manifest or the teacher cache.
"""

from __future__ import annotations

import asyncio
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distilflow.errors import BackendError
from distilflow.teachers.config import TeacherConfig
from distilflow.teachers.protocol import (
    Completion,
    Unreadable,
    completion_of,
    judge_body,
    read_digit_probs,
    request_body,
)


class OpenAITeacher:
    """An OpenAI-compatible chat endpoint, called with ``concurrency`` requests in flight.

    Requests go through ``distilflow.teachers.endpoint.AsyncEndpoint`` (budgets, timeouts, retries with
    backoff). Each of the ``n`` samples is its own request (with ``seed + sample`` when a seed is
    set): several servers (``transformers serve``, some gateways) silently ignore ``n`` and return
    one choice, and one seed shared by ``n`` separate requests would give ``n`` equal samples.
    ``stats`` counts every attempt of this teacher's lifetime.
    """

    def __init__(self, config: TeacherConfig):
        from distilflow.teachers.endpoint import EndpointStats

        self.config = config
        self.name = config.display_name
        self.stats = EndpointStats()

    def endpoint(self):
        """A fresh ``AsyncEndpoint`` for this teacher (enter it inside the event loop that uses it)."""
        from distilflow.teachers.endpoint import AsyncEndpoint

        c = self.config
        # The key is read here and handed to the HTTP client only; it is never stored on the config.
        key = os.environ.get(c.api_key_env) or "EMPTY"
        return AsyncEndpoint(
            c.base_url or "",
            key,
            concurrency=c.concurrency,
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
            backoff_s=c.retry_backoff_s,
            max_backoff_s=c.retry_max_backoff_s,
            requests_per_minute=c.requests_per_minute,
            tokens_per_minute=c.tokens_per_minute,
            stats=self.stats,
        )

    def request(self, chat: list[dict], sample: int = 0, **overrides: Any) -> dict[str, Any]:
        return request_body(self.config, chat, sample, **overrides)

    def error(self, exc: Exception) -> BackendError:
        """A failed request as a BackendError naming the endpoint, the model and the fix."""
        from distilflow.teachers.endpoint import CLIENT_ERROR

        c = self.config
        status = getattr(exc, "status", None)
        hint = ""
        if status in (401, 403):
            unset = not os.environ.get(c.api_key_env)
            hint = (
                f"; {c.api_key_env} is not set: export the key in it (teacher api_key_env names it)"
                if unset
                else f"; the key in ${c.api_key_env} was refused: check it"
            )
        if getattr(exc, "kind", None) in ("connection", "timeout"):
            hint = "; check base_url and that the server is up"
        what = "answered " if getattr(exc, "kind", None) == CLIENT_ERROR else ""
        return BackendError(f"{c.base_url}: model {c.model!r} {what}{exc}{hint}")

    async def acomplete(
        self, endpoint: Any, body: dict[str, Any], deadline: float | None = None
    ) -> dict[str, Any]:
        """Send one request body (``request``); return the raw answer (``answer_of``). Raises
        RequestError. With ``deadline`` (``time.monotonic()``) it retries until then, not max_retries.

        A body asking for token ids with their top logprobs (``logits_body``) gets them back as the
        answer's ``logits`` (``TokenLogprobs.to_json``), checked against the teacher's tokenizer."""
        reply = await endpoint.post("chat/completions", body, check=_check_chat, deadline=deadline)
        answer = answer_of(reply)
        if body.get("return_tokens_as_token_ids") and body.get("top_logprobs"):
            answer["logits"] = self._logits_of(reply, answer, int(body["top_logprobs"]))
        return answer

    @property
    def where(self) -> str:
        return f"{self.config.base_url}: model {self.config.model!r}"

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer (``tokenizer``, else ``model`` as a folder or URI), loaded once."""
        if getattr(self, "_tokenizer", None) is None:
            from distilflow.models import load_tokenizer

            self._tokenizer = load_tokenizer(
                self.config.tokenizer or self.config.model, need_chat_template=False
            )
        return self._tokenizer

    def fingerprint(self) -> dict[str, Any]:
        """The served model's vocabulary fingerprint, from its tokenizer (``logprobs.vocab_fingerprint``)."""
        from distilflow.teachers.logprobs import vocab_fingerprint

        return vocab_fingerprint(self.tokenizer)

    def _logits_of(self, reply: dict[str, Any], answer: dict[str, Any], k: int) -> dict[str, Any]:
        """The reply's token logprobs, after checking that the tokens decode (with the local tokenizer)
        to the text the endpoint answered: else the tokenizer is not the served model's."""
        from distilflow.teachers.logprobs import from_chat_logprobs

        content = ((reply["choices"][0].get("logprobs") or {}).get("content")) or []
        if not content:
            raise BackendError(
                f"{self.where} returned no logprobs; white-box logits need a server that returns "
                f"top_logprobs={k} with token ids (vLLM)"
            )
        found = from_chat_logprobs(content, k, self.where)
        text = self.tokenizer.decode(found.ids.tolist(), skip_special_tokens=True)
        missing = [
            p
            for p in (answer.get("reasoning") or "", answer["content"])
            if p.strip() and p.strip() not in text
        ]
        if missing:
            raise BackendError(
                f"{self.where}: the returned token ids decode to {text[:80]!r}, not to the answer "
                f"{missing[0].strip()[:80]!r}; teacher.tokenizer ({self.config.tokenizer or self.config.model}) "
                "is not the served model's tokenizer"
            )
        return found.to_json()

    def score(self, prompts: list[list[int]], responses: list[list[int]], k: int) -> list[Any]:
        """The served teacher's top-k logprobs at every token of each response after its prompt: one
        ``/v1/completions`` request per sequence, the tokens as the prompt, ``prompt_logprobs=k`` (vLLM's
        extension; one token is generated and unused)."""
        from distilflow.teachers.endpoint import RequestError
        from distilflow.teachers.logprobs import from_vllm_positions

        async def one(ep: Any, prompt: list[int], response: list[int]) -> Any:
            body = {
                "model": self.config.model,
                "prompt": list(prompt) + list(response),
                "max_tokens": 1,
                "temperature": 0,
                "prompt_logprobs": k,
            }
            reply = await ep.post("completions", body, check=_check_completion)
            positions = reply["choices"][0].get("prompt_logprobs")
            if not positions:
                raise BackendError(
                    f"{self.where} returned no prompt_logprobs; scoring given tokens needs vLLM's "
                    "/v1/completions with prompt_logprobs"
                )
            return from_vllm_positions(response, positions[len(prompt) :], k, self.where)

        async def every(ep: Any) -> list[Any]:
            return await asyncio.gather(*(one(ep, p, r) for p, r in zip(prompts, responses, strict=True)))

        try:
            return self._run(every)
        except RequestError as exc:
            raise self.error(exc) from None

    def score_answers(self, chats: list[list[dict]], answers: list[tuple[str, str]], k: int) -> list[Any]:
        """The served teacher's top-k logprobs over given answers ((reasoning, content) per chat),
        rendered with the teacher's tokenizer and chat template as it would have generated them."""
        from distilflow.teachers.logprobs import response_ids

        tok, kwargs = self.tokenizer, self.config.chat_template_kwargs or {}
        pairs = [response_ids(tok, chat, r, c, **kwargs) for chat, (r, c) in zip(chats, answers, strict=True)]
        return self.score([p for p, _ in pairs], [r for _, r in pairs], k)

    def _run(self, coro_fn: Any) -> Any:
        """Run ``coro_fn(endpoint)`` to completion from synchronous code (also inside a notebook's loop)."""

        async def main() -> Any:
            async with self.endpoint() as ep:
                return await coro_fn(ep)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with ThreadPoolExecutor(max_workers=1) as pool:  # a loop is running here: use another thread
            return pool.submit(asyncio.run, main()).result()

    def generate(self, chats: list[list[dict]], n: int = 1) -> list[list[Completion]]:
        from distilflow.teachers.endpoint import RequestError

        async def all_samples(ep: Any) -> list[dict]:
            jobs = [self.acomplete(ep, self.request(chat, s)) for chat in chats for s in range(n)]
            return await asyncio.gather(*jobs)

        try:
            flat = [completion_of(a) for a in self._run(all_samples)]
        except RequestError as exc:
            raise self.error(exc) from None
        return [flat[i * n : (i + 1) * n] for i in range(len(chats))]

    async def atop_probs(
        self, endpoint: Any, body: dict[str, Any], deadline: float | None = None
    ) -> dict[str, Any]:
        """Send one judgment body (``judge_body``); return its raw answer: the top next-token
        probabilities (``top``, what the teacher cache stores) and the usage. Raises BackendError
        when the server returns no logprobs (it cannot judge in logprobs mode). ``deadline`` as in
        ``acomplete``."""
        reply = await endpoint.post("chat/completions", body, check=_check_choices, deadline=deadline)
        top = top_of_reply(reply)
        if top is None:
            c = self.config
            raise BackendError(
                f"{c.base_url}: model {c.model!r} {NO_LOGPROBS}; use judge mode 'generate' or a server that "
                "returns top_logprobs (vLLM, SGLang)"
            )
        usage = reply.get("usage") or {}
        return {
            "top": top,
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 1),
        }

    def top_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        from distilflow.teachers.endpoint import RequestError

        async def every(ep: Any) -> list[dict[str, Any]]:
            return await asyncio.gather(*(self.atop_probs(ep, judge_body(self.config, c)) for c in chats))

        try:
            return [answer["top"] for answer in self._run(every)]
        except RequestError as exc:
            raise self.error(exc) from None

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float] | Unreadable]:
        mass = self.config.min_digit_mass
        return [read_digit_probs(top, digits, mass) for top in self.top_probs(chats, digits)]

    def close(self) -> None:
        pass


def logits_body(config: TeacherConfig, chat: list[dict], sample: int, k: int) -> dict[str, Any]:
    """The chat-completions body of a sample whose tokens come back as ids with their top-k logprobs
    (``return_tokens_as_token_ids`` is vLLM's extension; OpenAI caps ``top_logprobs`` at 20)."""
    return request_body(config, chat, sample, logprobs=True, top_logprobs=k, return_tokens_as_token_ids=True)


def _check_completion(reply: dict[str, Any]) -> None:
    """Raise ValueError unless ``reply`` is a text completion with a choice (else it is retried)."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices in the reply")


NO_LOGPROBS = "returned no logprobs"  # how a judgment from a server without top logprobs fails


def _check_choices(reply: dict[str, Any]) -> None:
    """Raise ValueError unless ``reply`` is a chat completion with a choice (else it is retried)."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices in the reply")


def _check_chat(reply: dict[str, Any]) -> None:
    """Raise ValueError unless ``reply`` is a chat completion with a message (else it is retried)."""
    _check_choices(reply)
    if not isinstance(reply["choices"][0].get("message"), dict):
        raise ValueError("the first choice has no message")


def top_of_reply(reply: dict[str, Any]) -> dict[str, float] | None:
    """The first generated token's top next-token probabilities (token -> probability, tokens that
    repeat summed) of a logprobs reply; None when the reply carries no logprobs."""
    logprobs = reply["choices"][0].get("logprobs") or {}
    content = logprobs.get("content") or []
    if not content or not isinstance(content[0], dict):
        return None
    # Without top_logprobs (a server that ignores the field) the generated token is all there is.
    candidates = content[0].get("top_logprobs") or [content[0]]
    top: dict[str, float] = {}
    for t in candidates:
        if "token" in t and t.get("logprob") is not None:
            top[t["token"]] = top.get(t["token"], 0.0) + math.exp(t["logprob"])
    return top


def answer_of(reply: dict[str, Any]) -> dict[str, Any]:
    """The parts of a chat completion worth keeping (and caching): raw text, reasoning, usage."""
    choice = reply["choices"][0]
    message = choice["message"]
    usage = reply.get("usage") or {}
    return {
        "content": message.get("content") or "",
        "reasoning": _reasoning_of(message),
        "finish_reason": choice.get("finish_reason") or "stop",
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
    }


def _reasoning_of(message: Any) -> str | None:
    """The server's separate reasoning field: ``reasoning_content`` (vLLM, SGLang, DeepSeek,
    transformers serve) or ``reasoning`` (newer vLLM, OpenRouter); from a JSON dict or an
    ``openai`` message object (declared or extra field)."""
    extra = message if isinstance(message, dict) else (getattr(message, "model_extra", None) or {})
    for key in ("reasoning_content", "reasoning"):
        value = (None if isinstance(message, dict) else getattr(message, key, None)) or extra.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None
