"""Judge, critic and rewriter calls through the teacher contract, cached like distill's teacher calls.

``CachedTeacher`` answers ``generate`` and ``digit_probs`` for a ``TeacherConfig`` (any backend).
Every answer is looked up in the content-addressed teacher cache first (``distilflow.teachers.cache``: the
key is the backend, the model and the full request) and stored the moment it arrives, so a stage run
(curate's judge and CRV, reward's pairwise judge) that was killed or failed re-sends none of the
answers it had received: the rerun takes them from the cache and asks only for the rest.

An endpoint judge gets one request per judgment with ``concurrency`` in flight. A request still
failing after ``max_retries`` while the judge answered others is retried in a final pass within the
judge's ``retry_budget_s``. Once a request fails for good no new request is sent; those in flight finish and are stored, then the error is
raised (the rerun resumes). An in-process judge (transformers, vLLM) is loaded only when something
is missing from the cache, and answers the missing chats in one batch, stored as a batch.

The cache keeps a judgment raw: the judge's top next-token probabilities (``top``), not yet read.
``digit_probs`` reads them with ``teachers.protocol.read_digit_probs``: a chat whose score digits carry
less than the judge's ``min_digit_mass`` of the probability gets ``Unreadable`` with the reason, an
unusable judgment the caller counts, never a score.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from distilflow import uri as uris
from distilflow.errors import BackendError
from distilflow.teachers.cache import TeacherCache, cache_key
from distilflow.teachers.config import TeacherConfig
from distilflow.teachers.protocol import (
    Completion,
    Unreadable,
    answer_of_completion,
    completion_of,
    judge_body,
    read_digit_probs,
    request_body,
)

# Marks the raw probabilities a judgment's cache entry keeps (not renormalised over the digits), so an
# entry of the older form (renormalised) is never read as one of them.
TOP_FORM = "next-token probabilities"


@dataclass
class Ask:
    """One answer wanted: what is sent, what the cache key covers, and the answer once known."""

    chat: list[dict]
    body: dict[str, Any]
    request: dict[str, Any]
    key: str
    sample: int = 0
    digits: str = ""
    answer: dict[str, Any] | None = field(default=None, repr=False)


class CachedTeacher:
    """A teacher (judge, CRV critic or rewriter) whose every answer goes through ``cache``.

    ``asked`` counts answers asked of the model in this process (cache misses), ``tokens`` the
    completion tokens it generated for them (1 per logprobs judgment).
    """

    def __init__(self, config: TeacherConfig, cache: TeacherCache):
        self.config, self.cache = config, cache
        self.name = config.display_name
        self.asked = self.tokens = 0
        self._teacher: Any = None

    @property
    def teacher(self) -> Any:
        """The backend, built on first use (a fully cached run never loads a model)."""
        if self._teacher is None:
            from distilflow.teachers import make_teacher

            self._teacher = make_teacher(self.config)
        return self._teacher

    def close(self) -> None:
        if self._teacher is not None:
            self._teacher.close()
            self._teacher = None

    def _ask(self, chat: list[dict], body: dict[str, Any], sample: int = 0, digits: str = "") -> Ask:
        request = body | ({"digits": digits, "top": TOP_FORM} if digits else {})
        key = cache_key(self.config.backend, self.config.model, request, sample)
        return Ask(chat, body, request, key, sample, digits)

    def _io(self, fn: Any, items: list[Any]) -> list[Any]:
        # A local cache entry is read in well under a millisecond; a remote one takes tens of ms.
        if uris.is_local(self.cache.uri) or len(items) < 2:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
            return list(pool.map(fn, items))

    def _lookup(self, asks: list[Ask]) -> list[Ask]:
        """Fill answers from the cache; return the asks still missing, one per key."""
        for ask, answer in zip(asks, self._io(self.cache.get, [a.key for a in asks]), strict=True):
            ask.answer = answer
        return list({a.key: a for a in asks if a.answer is None}.values())

    @staticmethod
    def _share(asks: list[Ask], asked: list[Ask]) -> None:
        """Give asks that repeat an asked key (the same judgment twice in a batch) its answer."""
        answers = {a.key: a.answer for a in asked}
        for ask in asks:
            if ask.answer is None:
                ask.answer = answers[ask.key]

    def _store(self, asks: list[Ask]) -> None:
        self._io(lambda a: self.cache.put(a.key, self.config.model, a.request, a.answer), asks)

    def _received(self, answer: dict[str, Any]) -> None:
        self.asked += 1
        self.tokens += int(answer.get("completion_tokens") or 0)

    # ------------------------------------------------------------------ generate

    def generate(self, chats: list[list[dict]], n: int = 1) -> list[list[Completion]]:
        """``n`` answers per chat (as ``Teacher.generate``), from the cache where it has them."""
        asks = [[self._ask(chat, request_body(self.config, chat, s), s) for s in range(n)] for chat in chats]
        flat = [a for row in asks for a in row]
        missing = self._lookup(flat)
        if missing and self.config.backend == "openai":
            self._ask_endpoint(missing, self.teacher.acomplete)
        elif missing:
            self._generate_in_process(asks, n)
        self._share(flat, missing)
        return [[completion_of(a.answer) for a in row] for row in asks]  # type: ignore[arg-type]

    def _generate_in_process(self, asks: list[list[Ask]], n: int) -> None:
        rows = [row for row in asks if any(a.answer is None for a in row)]
        got = self.teacher.generate([row[0].chat for row in rows], n=n)
        if len(got) != len(rows) or any(len(g) != n for g in got):
            raise BackendError(f"{self.name} returned {[len(g) for g in got]} answers for {len(rows)} x {n}")
        new = []
        for row, completions in zip(rows, got, strict=True):
            for ask in row:
                if ask.answer is None:
                    ask.answer = answer_of_completion(completions[ask.sample])
                    self._received(ask.answer)
                    new.append(ask)
        self._store(new)

    # ------------------------------------------------------------------ digit probabilities

    def digit_probs(
        self, chats: list[list[dict]], digits: str | list[str]
    ) -> list[dict[str, float] | Unreadable]:
        """Per chat, the judge's next-token distribution over its score digits (``digits``: one string
        for all chats or one per chat), or ``Unreadable`` (with the reason) where the digits carry
        less than ``min_digit_mass`` of the probability."""
        per_chat = [digits] * len(chats) if isinstance(digits, str) else digits
        asks = []
        for chat, d in zip(chats, per_chat, strict=True):
            ask = self._ask(chat, judge_body(self.config, chat), digits=d)
            asks.append(ask)
        missing = self._lookup(asks)
        if missing and self.config.backend == "openai":
            self._ask_endpoint(missing, self.teacher.atop_probs)
        elif missing:
            self._tops_in_process(missing)
        self._share(asks, missing)
        mass = self.config.min_digit_mass
        return [read_digit_probs(a.answer["top"], a.digits, mass) for a in asks]  # type: ignore[index]

    def _tops_in_process(self, missing: list[Ask]) -> None:
        by_digits: dict[str, list[Ask]] = {}
        for ask in missing:
            by_digits.setdefault(ask.digits, []).append(ask)
        for digits, asks in by_digits.items():
            tops = self.teacher.top_probs([a.chat for a in asks], digits)
            for ask, top in zip(asks, tops, strict=True):
                ask.answer = {"top": top, "prompt_tokens": 0, "completion_tokens": 1}
                self._received(ask.answer)
            self._store(asks)

    # ------------------------------------------------------------------ endpoint requests

    def _ask_endpoint(self, asks: list[Ask], send: Any) -> None:
        """Send every ask with ``concurrency`` in flight; store each answer as it arrives."""
        from distilflow.teachers.endpoint import RequestError

        teacher = self.teacher
        local = uris.is_local(self.cache.uri)
        errors: list[Exception] = []

        deferred: list[Ask] = []

        async def one(ep: Any, slots: asyncio.Semaphore, ask: Ask, deadline: float | None = None) -> None:
            async with slots:
                if errors:  # a request failed for good: send nothing new
                    return
                try:
                    ask.answer = await send(ep, ask.body, deadline)
                except RequestError as exc:
                    if exc.transient and deadline is None:
                        deferred.append(ask)  # failing while the judge answered others: final pass
                    else:
                        errors.append(exc)
                    return
                except BackendError as exc:
                    errors.append(exc)
                    return
                self._received(ask.answer)
                put = (self.cache.put, ask.key, self.config.model, ask.request, ask.answer)
                if local:
                    put[0](*put[1:])
                else:
                    await asyncio.to_thread(*put)

        async def main() -> None:
            slots = asyncio.Semaphore(teacher.config.concurrency)
            async with teacher.endpoint() as ep:
                await asyncio.gather(*(one(ep, slots, a) for a in asks))
                if deferred and not errors:
                    deadline = time.monotonic() + teacher.config.retry_budget_s
                    await asyncio.gather(*(one(ep, slots, a, deadline) for a in deferred))

        _run(main)
        if errors:
            exc = errors[0]
            err = teacher.error(exc) if isinstance(exc, RequestError) else exc
            raise BackendError(
                f"{err}; the {self.asked} answers received in this run are in the teacher cache "
                f"{self.cache.uri}: rerun to resume without sending them again"
            ) from None


def _run(coro_fn: Any) -> None:
    """Run ``coro_fn()`` to completion from synchronous code (also inside a notebook's event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro_fn())
        return
    with ThreadPoolExecutor(max_workers=1) as pool:  # a loop is running here: use another thread
        pool.submit(asyncio.run, coro_fn()).result()
