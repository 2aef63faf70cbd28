"""An async client for OpenAI-compatible ``/v1/chat/completions`` endpoints, built to saturate one.

``concurrency`` requests are in flight at once over one ``httpx.AsyncClient`` connection pool; an
optional requests-per-minute and tokens-per-minute budget holds requests back before they are sent
(a token bucket, as in the OpenAI cookbook's ``api_request_parallel_processor.py``); each attempt
has a timeout. Transient failures (429, 408/409, 5xx, timeouts, dropped or refused connections, a
reply that is not a chat completion) are retried with exponential backoff and full jitter (AWS
Architecture Blog, "Exponential Backoff And Jitter", 2015), honouring ``Retry-After``/
``retry-after-ms`` as openai-python's ``_calculate_retry_timeout`` does. Other 4xx answers cannot
succeed on a retry and fail at once. Every attempt and failure is counted by kind in ``EndpointStats``.

The API key lives only in the client's ``Authorization`` header: never in stats, errors or logs.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any

# Failure kinds, as counted in EndpointStats and reported by the distill stage.
RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION, MALFORMED, CLIENT_ERROR = (
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "malformed",
    "client_error",
)
RETRYABLE = {RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION, MALFORMED}
# openai-python retries 408 (request timeout) and 409 (lock timeout) besides 429 and 5xx.
RETRYABLE_STATUS = {408, 409, 429}
MAX_RETRY_AFTER_S = 60.0


class RequestError(Exception):
    """A request that failed for good (a non-retryable answer, or retries exhausted)."""

    def __init__(self, kind: str, message: str, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.kind, self.status, self.attempts = kind, status, attempts


@dataclass
class EndpointStats:
    """What one client sent and got back; shared by every request of a run."""

    requests: int = 0  # HTTP attempts sent, retries included
    succeeded: int = 0
    retries: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)  # per attempt, by kind
    failures: collections.Counter = field(default_factory=collections.Counter)  # given up on, by kind
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0  # summed over successful attempts

    @property
    def mean_latency_s(self) -> float:
        return self.latency_s / self.succeeded if self.succeeded else 0.0


class TokenBucket:
    """A budget of ``per_minute`` units, refilled continuously, at most one minute's worth banked.

    ``take`` waits until the amount is available; ``adjust`` corrects an estimate afterwards (the
    level may go negative, which delays later requests: a tokens-per-minute budget is charged the
    prompt estimate plus ``max_tokens`` up front and the real usage once the answer is back).
    """

    def __init__(self, per_minute: float):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)  # one request larger than the budget still goes, alone
        async with self._lock:  # FIFO: waiters are served in arrival order
            while True:
                self._refill()
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)

    def adjust(self, delta: float) -> None:
        self._refill()
        self.level -= delta


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return float(raw_ms) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        return None if parsed is None else email.utils.mktime_tz(parsed) - time.time()


def backoff_s(attempt: int, base_s: float, max_s: float, retry_after: float | None) -> float:
    """Delay before retry ``attempt`` (0-based): the server's wish when sane, else full jitter."""
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER_S:
        return retry_after
    return random.uniform(0, min(max_s, base_s * 2**attempt))


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens (about 4 characters each) plus the completion budget, for a TPM budget."""
    chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
    return chars // 4 + int(body.get("max_tokens") or 0)


class AsyncEndpoint:
    """One endpoint's connection pool, limits and retry policy; use as ``async with``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        concurrency: int = 8,
        timeout_s: float = 600.0,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        stats: EndpointStats | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self._rpm, self._tpm = requests_per_minute, tokens_per_minute
        self.stats = stats if stats is not None else EndpointStats()
        self._client: Any = None

    async def __aenter__(self) -> AsyncEndpoint:
        import httpx

        self._client = httpx.AsyncClient(
            base_url=self.base_url + "/",
            headers=self._headers,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self._slots = asyncio.Semaphore(self.concurrency)
        self._requests = TokenBucket(self._rpm) if self._rpm else None
        self._tokens = TokenBucket(self._tpm) if self._tpm else None
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._client.aclose()

    async def post(self, path: str, body: dict[str, Any], check: Any = None) -> dict[str, Any]:
        """POST ``body`` as JSON and return the parsed reply, retrying transient failures.

        ``check(reply)`` raises ValueError when a 200 reply is not what was asked for (counted as
        ``malformed`` and retried). Raises RequestError when the request fails for good.
        """
        attempt = 0
        while True:
            kind, message, status, wait = await self._attempt(path, body, check)
            if kind is None:
                return message  # type: ignore[return-value]
            self.stats.errors[kind] += 1
            if kind not in RETRYABLE or attempt >= self.max_retries:
                self.stats.failures[kind] += 1
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise RequestError(kind, f"{message}{tries}", status, attempt + 1)
            # Sleep outside the concurrency slot: a backing-off request does not block others.
            await asyncio.sleep(backoff_s(attempt, self.backoff_s, self.max_backoff_s, wait))
            attempt += 1
            self.stats.retries += 1

    async def _attempt(self, path: str, body: dict[str, Any], check: Any) -> tuple:
        """One HTTP attempt: ``(None, reply, 200, None)`` or ``(kind, message, status, retry_after)``."""
        import httpx

        estimate = estimate_tokens(body) if self._tokens else 0
        async with self._slots:
            if self._requests:
                await self._requests.take(1)
            if self._tokens:
                await self._tokens.take(estimate)
            self.stats.requests += 1
            start = time.monotonic()
            try:
                resp = await self._client.post(path, json=body)
            except httpx.TimeoutException as exc:
                return TIMEOUT, f"no answer within {self.timeout_s:g}s ({type(exc).__name__})", None, None
            except httpx.TransportError as exc:
                return CONNECTION, f"cannot reach the endpoint ({type(exc).__name__}: {exc})", None, None
            latency = time.monotonic() - start
        status = resp.status_code
        if status != 200:
            detail = _error_detail(resp)
            if status == 429:
                return RATE_LIMITED, f"HTTP 429: {detail}", status, retry_after_s(resp.headers)
            if status >= 500 or status in RETRYABLE_STATUS:
                return SERVER_ERROR, f"HTTP {status}: {detail}", status, retry_after_s(resp.headers)
            return CLIENT_ERROR, f"HTTP {status}: {detail}", status, None
        try:
            reply = resp.json()
            if not isinstance(reply, dict):
                raise ValueError(f"expected a JSON object, got {type(reply).__name__}")
            if check is not None:
                check(reply)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return MALFORMED, f"unusable reply ({exc})", status, None
        usage = reply.get("usage") or {}
        self.stats.succeeded += 1
        self.stats.latency_s += latency
        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        if self._tokens and usage:
            self._tokens.adjust(int(usage.get("total_tokens") or 0) - estimate)
        return None, reply, status, None


def _error_detail(resp: Any) -> str:
    """The server's error message (OpenAI's ``{"error": {"message": ...}}`` or the raw text), short."""
    try:
        payload = resp.json()
        error = payload.get("error") if isinstance(payload, dict) else None
        text = error.get("message") if isinstance(error, dict) else (error or payload)
    except ValueError:
        text = resp.text
    text = str(text).strip()
    return text if len(text) <= 300 else text[:297] + "..."
