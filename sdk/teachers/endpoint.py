"""An async client for OpenAI-compatible ``/v1/chat/completions`` endpoints, built to saturate one.

``concurrency`` requests are in flight at once over one ``aiohttp`` connection pool: connections
are kept alive and reused, and aiohttp's pool costs the same per request at any concurrency
(httpcore 1.0.9's pool bookkeeping grows with connections x queued requests, encode/httpcore#1035:
at concurrency 256 a bare httpx loop spent 11 ms of CPU per request here, aiohttp 0.4 ms). New
connections open gradually (``RAMP_CONNECTIONS`` at a time, each holding its place until its first
answer or ``RAMP_HOLD_S``), so a burst never overflows a small listen backlog (Python's
``socketserver`` default is 5, as in many small servers and proxies). An optional requests-per-minute
and tokens-per-minute budget holds requests back before they are sent (a token bucket, as in the
OpenAI cookbook's ``api_request_parallel_processor.py``); each attempt has a timeout.

Transient failures (429, 408/409, 5xx, timeouts, refused, reset or dropped connections, a reply
that is not a chat completion) are retried. While the server keeps answering other requests (a
healthy server), a failed request is retried at once up to ``immediate_retries`` times; after that,
and whenever errors persist, it waits an exponential backoff with full jitter (AWS Architecture
Blog, "Exponential Backoff And Jitter", 2015) that grows only while no request succeeds in between.
``Retry-After``/``retry-after-ms`` is honoured as openai-python's ``_calculate_retry_timeout`` does.
Other 4xx answers cannot succeed on a retry and fail at once. A request that is still failing after
``max_retries`` on a server that has answered other requests is marked ``transient``: callers retry those in a
final pass with a time budget (``post(deadline=...)``) before counting the row as failed. Every
attempt and failure is counted by kind in ``EndpointStats``.

The API key lives only in the client's ``Authorization`` header: never in stats, errors or logs.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
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
# New connections being opened at once, below Python's default listen backlog of 5; each holds its
# place until its first answer or RAMP_HOLD_S, whichever comes first.
RAMP_CONNECTIONS = 4
RAMP_HOLD_S = 0.05


class RequestError(Exception):
    """A request that failed for good (a non-retryable answer, or retries exhausted)."""

    def __init__(
        self, kind: str, message: str, status: int | None = None, attempts: int = 1, transient: bool = False
    ):
        super().__init__(message)
        self.kind, self.status, self.attempts = kind, status, attempts
        # a retryable failure on a server that answered other requests: worth a final retry pass
        self.transient = transient


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


class _Opening:
    """A request's place among the connections being opened (``RAMP_CONNECTIONS``), if it holds one."""

    __slots__ = ("slots", "held")

    def __init__(self, slots: asyncio.Semaphore):
        self.slots, self.held = slots, False

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()


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
        immediate_retries: int = 2,
    ):
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.immediate_retries = immediate_retries
        self._rpm, self._tpm = requests_per_minute, tokens_per_minute
        self.stats = stats if stats is not None else EndpointStats()
        self._session: Any = None
        self._urls: dict[str, Any] = {}
        self._answered = 0  # successful attempts of this client: the server's health signal

    async def __aenter__(self) -> AsyncEndpoint:
        import aiohttp

        self._slots = asyncio.Semaphore(self.concurrency)
        self._opening = asyncio.Semaphore(RAMP_CONNECTIONS)
        ramp = aiohttp.TraceConfig()
        ramp.on_connection_create_start.append(self._connection_opening)
        ramp.on_connection_create_end.append(self._connection_opened)
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300),
            trace_configs=[ramp],
        )
        self._proxy = _env_proxy(self.base_url)
        self._requests = TokenBucket(self._rpm) if self._rpm else None
        self._tokens = TokenBucket(self._tpm) if self._tpm else None
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._session.close()

    async def _connection_opening(self, session: Any, trace: Any, params: Any) -> None:
        opening: _Opening = trace.trace_request_ctx
        await opening.slots.acquire()
        opening.held = True

    async def _connection_opened(self, session: Any, trace: Any, params: Any) -> None:
        asyncio.get_running_loop().call_later(RAMP_HOLD_S, trace.trace_request_ctx.release)

    def _url(self, path: str) -> Any:
        url = self._urls.get(path)
        if url is None:
            from yarl import URL

            url = self._urls[path] = URL(f"{self.base_url}/{path.lstrip('/')}")
        return url

    async def post(
        self, path: str, body: dict[str, Any], check: Any = None, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """POST ``body`` as JSON and return the parsed reply, retrying transient failures.

        ``check(reply)`` raises ValueError when a 200 reply is not what was asked for (counted as
        ``malformed`` and retried). Retries stop after ``max_retries``, or with ``deadline`` (a
        ``time.monotonic()`` value) when that time has come instead. Raises RequestError when the
        request fails for good (``transient`` when it was retryable and the server has answered requests of
        this client: a healthy server's fault, not a dead endpoint).
        """
        data = json.dumps(body).encode()
        attempt = streak = 0
        seen = self._answered
        while True:
            kind, message, status, wait = await self._attempt(path, body, data, check)
            if kind is None:
                return message  # type: ignore[return-value]
            self.stats.errors[kind] += 1
            # a streak of errors is broken whenever the server answered anyone in between
            streak = 1 if self._answered > seen else streak + 1
            seen = self._answered
            spent = attempt >= self.max_retries if deadline is None else time.monotonic() >= deadline
            if kind not in RETRYABLE or spent:
                self.stats.failures[kind] += 1
                tries = f" after {attempt + 1} attempts" if attempt else ""
                transient = kind in RETRYABLE and self._answered > 0
                raise RequestError(kind, f"{message}{tries}", status, attempt + 1, transient)
            delay = self.retry_delay(kind, streak, wait)
            if deadline is not None:
                delay = min(delay, max(deadline - time.monotonic(), 0.0))
            # Sleep outside the concurrency slot: a backing-off request does not block others.
            await asyncio.sleep(delay)
            attempt += 1
            self.stats.retries += 1

    def retry_delay(self, kind: str, streak: int, retry_after: float | None) -> float:
        """Seconds before the next attempt after ``streak`` errors in a row with no answer between.

        At once while the errors do not persist (``immediate_retries``; never for a 429 without
        ``Retry-After``: a rate limit is about pace), then full jitter that doubles per further error.
        """
        if retry_after is None and kind != RATE_LIMITED and streak <= self.immediate_retries:
            return 0.0
        extra = streak - 1 if kind == RATE_LIMITED else streak - self.immediate_retries - 1
        return backoff_s(extra, self.backoff_s, self.max_backoff_s, retry_after)

    async def _attempt(self, path: str, body: dict[str, Any], data: bytes, check: Any) -> tuple:
        """One HTTP attempt: ``(None, reply, 200, None)`` or ``(kind, message, status, retry_after)``."""
        import aiohttp

        estimate = estimate_tokens(body) if self._tokens else 0
        async with self._slots:
            if self._requests:
                await self._requests.take(1)
            if self._tokens:
                await self._tokens.take(estimate)
            self.stats.requests += 1
            start = time.monotonic()
            opening = _Opening(self._opening)
            try:
                async with self._session.post(
                    self._url(path), data=data, proxy=self._proxy, trace_request_ctx=opening
                ) as resp:
                    opening.release()
                    status, raw = resp.status, await resp.read()
                    headers = resp.headers
            except (asyncio.TimeoutError, TimeoutError) as exc:
                return TIMEOUT, f"no answer within {self.timeout_s:g}s ({type(exc).__name__})", None, None
            except (aiohttp.ClientError, OSError) as exc:
                return CONNECTION, f"cannot reach the endpoint ({type(exc).__name__}: {exc})", None, None
            finally:
                opening.release()
            latency = time.monotonic() - start
        if status != 200:
            detail = _error_detail(raw)
            if status == 429:
                return RATE_LIMITED, f"HTTP 429: {detail}", status, retry_after_s(headers)
            if status >= 500 or status in RETRYABLE_STATUS:
                return SERVER_ERROR, f"HTTP {status}: {detail}", status, retry_after_s(headers)
            return CLIENT_ERROR, f"HTTP {status}: {detail}", status, None
        try:
            reply = json.loads(raw)
            if not isinstance(reply, dict):
                raise ValueError(f"expected a JSON object, got {type(reply).__name__}")
            if check is not None:
                check(reply)
        except ValueError as exc:  # json.JSONDecodeError (and UnicodeDecodeError) are ValueErrors
            return MALFORMED, f"unusable reply ({exc})", status, None
        self._answered += 1
        self._account(reply, latency, estimate)
        return None, reply, status, None

    def _account(self, reply: dict[str, Any], latency: float, estimate: int) -> None:
        usage = reply.get("usage") or {}
        self.stats.succeeded += 1
        self.stats.latency_s += latency
        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        if self._tokens and usage:
            self._tokens.adjust(int(usage.get("total_tokens") or 0) - estimate)


def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment names for ``base_url`` (``HTTP(S)_PROXY``, unless ``NO_PROXY``
    covers its host), as httpx and openai-python honour; looked up once, not per request."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(base_url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _error_detail(raw: bytes) -> str:
    """The server's error message (OpenAI's ``{"error": {"message": ...}}`` or the raw text), short."""
    try:
        payload = json.loads(raw)
        error = payload.get("error") if isinstance(payload, dict) else None
        text = error.get("message") if isinstance(error, dict) else (error or payload)
    except ValueError:
        text = raw.decode("utf-8", "replace")
    text = str(text).strip()
    return text if len(text) <= 300 else text[:297] + "..."
