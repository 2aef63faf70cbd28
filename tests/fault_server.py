"""A fault-injecting OpenAI-compatible HTTP server on 127.0.0.1 with a deterministic responder.

It answers ``POST /v1/chat/completions`` (and ``GET /v1/models``) after a fixed latency, serves at
most ``max_concurrency`` requests at once (the others wait, as on a saturated GPU server), and
injects faults at configurable rates: ``429`` with ``Retry-After``, ``500``, ``timeout`` (holds the
request longer than a client waits), ``drop`` (closes the connection without an answer) and
``malformed`` (a 200 with truncated JSON). It counts every request by a fingerprint of what was
asked (messages, sampling parameters, seed), so tests can see exactly what a client re-sent.

The answer is a pure function of the request: the reasoning is returned in ``<think>`` inside the
content for some requests and as ``reasoning_content`` for others, so clients must handle both.
It does not import distilflow: tests of the client are not checked against the client's own code.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "timeout", "drop", "malformed")


def fingerprint(body: dict[str, Any]) -> str:
    keep = {k: body.get(k) for k in ("model", "messages", "max_tokens", "temperature", "top_p", "seed")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def respond(body: dict[str, Any]) -> tuple[dict[str, Any], str, int, int]:
    """``(message, finish_reason, prompt_tokens, completion_tokens)``, deterministic in the request."""
    digest = hashlib.sha256(
        json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()
    ).hexdigest()
    question = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    words = [f"step{i}" for i in range(4 + int(digest[:4], 16) % 60)]
    budget = int(body.get("max_tokens") or 10**6)
    finish = "length" if len(words) + 4 > budget else "stop"
    words = words[: max(budget - 4, 1)]
    reasoning = f"Consider: {question} " + " ".join(words)
    answer = f"The answer is \\boxed{{{int(digest[4:8], 16) % 100}}}."
    if int(digest[8], 16) % 2:
        message = {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}
    else:
        message = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
    prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    return message, finish, prompt, len(words) + 4


class FaultServer:
    """Serve on 127.0.0.1; ``start()`` returns the base URL ending in ``/v1``.

    Args:
        latency_s: Time each request takes once it holds one of the server's slots.
        max_concurrency: Requests served at once (None: no cap); the others queue.
        faults: Rate of each fault kind per request, e.g. ``{"429": 0.1, "drop": 0.05}``.
        retry_after: ``Retry-After`` header sent with a 429 (seconds, as text).
        hang_s: How long a ``timeout`` fault holds the request before it answers anyway.
        api_key: When given, requests without ``Authorization: Bearer <key>`` get a 401.
        seed: Seed of the fault draws (the same sequence of requests gets the same faults).
        script: Faults of the first requests, in arrival order (None: answer); the draws follow.
    """

    def __init__(
        self,
        latency_s: float = 0.0,
        max_concurrency: int | None = None,
        faults: dict[str, float] | None = None,
        retry_after: str | None = "0",
        hang_s: float = 2.0,
        api_key: str | None = None,
        seed: int = 0,
        script: list[str | None] | None = None,
    ):
        unknown = (set(faults or {}) | set(script or [])) - set(FAULTS) - {None}
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {FAULTS}")
        self.latency_s, self.faults, self.retry_after = latency_s, dict(faults or {}), retry_after
        self.hang_s, self.api_key = hang_s, api_key
        self._slots = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
        self._rng = random.Random(seed)
        self._script = list(script or [])
        self._lock = threading.Lock()
        self.log: list[dict[str, Any]] = []  # one entry per chat request: fingerprint, fault, time, headers
        self.answered: collections.Counter[str] = collections.Counter()  # fingerprint -> 200 answers
        self.in_flight = self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def requests(self) -> int:
        return len(self.log)

    def sent(self) -> collections.Counter[str]:
        """How many times each distinct request arrived (all attempts)."""
        with self._lock:
            return collections.Counter(e["fingerprint"] for e in self.log)

    def _draw(self) -> str | None:
        with self._lock:
            if self._script:
                return self._script.pop(0)
            x = self._rng.random()
        for kind in FAULTS:
            rate = self.faults.get(kind, 0.0)
            if x < rate:
                return kind
            x -= rate
        return None

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers and httpx's pool expect
            # Headers and body leave in two writes: with Nagle's algorithm on, the body waits for the
            # client's delayed ACK (about 40 ms on Linux) and every request looks 40 ms slower.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/_stats"):  # for a client in another process
                    self._send(200, {"requests": server.requests, "max_in_flight": server.max_in_flight})
                    return
                self._send(200, {"object": "list", "data": [{"id": "teacher", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid API key"}})
                    return
                fault = server._draw()
                entry = {
                    "fingerprint": fingerprint(body),
                    "fault": fault,
                    "t": time.monotonic(),
                    "body": body,
                }
                with server._lock:
                    server.log.append(entry)
                if server._slots:
                    server._slots.acquire()
                try:
                    with server._lock:
                        server.in_flight += 1
                        server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    time.sleep(server.latency_s)
                    self._answer(body, fault, entry)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer
                finally:
                    with server._lock:
                        server.in_flight -= 1
                    if server._slots:
                        server._slots.release()

            def _answer(self, body: dict[str, Any], fault: str | None, entry: dict[str, Any]) -> None:
                if fault == "429":
                    headers = {"Retry-After": server.retry_after} if server.retry_after is not None else {}
                    self._send(
                        429, {"error": {"message": "rate limit reached", "type": "rate_limit"}}, headers
                    )
                elif fault == "500":
                    self._send(500, {"error": {"message": "internal error"}})
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fault == "malformed":
                    self._send(200, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess')
                else:
                    if fault == "timeout":
                        time.sleep(server.hang_s)
                    message, finish, prompt, completion = respond(body)
                    payload = {
                        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                        },
                    }
                    self._send(200, payload)
                    if fault is None:
                        with server._lock:
                            server.answered[entry["fingerprint"]] += 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 256  # the default backlog of 5 drops bursts of new connections

        self._httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_forever(port_queue: Any, **kwargs: Any) -> None:
    """Run a FaultServer in this process until it is killed (for ``multiprocessing``): the
    base URL is put on ``port_queue``."""
    server = FaultServer(**kwargs)
    port_queue.put(server.start())
    threading.Event().wait()
