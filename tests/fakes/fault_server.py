"""A fault-injecting OpenAI-compatible HTTP server on 127.0.0.1 with a deterministic responder.

It answers ``POST /v1/chat/completions`` (and ``GET /v1/models``) after a fixed latency, serves at
most ``max_concurrency`` requests at once (the others wait, as on a saturated GPU server), and
injects faults at configurable rates: ``429`` with ``Retry-After``, ``500``, ``timeout`` (holds the
request longer than a client waits), ``drop`` (closes the connection without an answer),
``malformed`` (a 200 with truncated JSON), ``503`` (with ``Retry-After``), ``reset`` (headers and
half the body, then a TCP reset: a connection reset mid-stream) and ``truncated`` (a 200 whose
body stops short of its ``Content-Length``). It counts every request by a fingerprint of what was
asked (messages, sampling parameters, seed), so tests can see exactly what a client re-sent.

The answer is a pure function of the request: the reasoning is returned in ``<think>`` inside the
content for some requests and as ``reasoning_content`` for others, so clients must handle both.
A judge's request is answered as a judge: with ``logprobs`` it gets a top-logprobs distribution
over the digits, and a prompt asking for ``<score>N</score>`` gets a written judgment ending in one.
``responder`` replaces the message of every answer (hostile teachers, long chains).
It does not import distilflow: tests of the client are not checked against the client's own code.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import socket
import struct
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fakes.loopback import LoopbackHandler, LoopbackServer

# New kinds go at the end: the draws of a given rate table stay as they were.
FAULTS = ("429", "500", "timeout", "drop", "malformed", "503", "reset", "truncated")


def fingerprint(body: dict[str, Any]) -> str:
    keep = {k: body.get(k) for k in ("model", "messages", "max_tokens", "temperature", "top_p", "seed")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def judge_logprobs(body: dict[str, Any]) -> dict[str, Any]:
    """A one-token judgment with ``top_logprobs`` over the digits of the scale asked for (0-9, or 0 and
    1 for a prompt asking for "0 or 1"), deterministic in the request."""
    import math

    digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).digest()
    question = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    weights = [1 + b % 7 for b in digest[: 2 if "0 or 1" in question else 10]]
    total = sum(weights)
    top = [
        {"token": str(d), "logprob": math.log(w / total), "bytes": None}
        for d, w in sorted(enumerate(weights), key=lambda dw: -dw[1])
    ]
    first = dict(top[0], top_logprobs=top[: int(body.get("top_logprobs") or 0)])
    return {"content": [first]}


def respond(body: dict[str, Any]) -> tuple[dict[str, Any], str, int, int]:
    """``(message, finish_reason, prompt_tokens, completion_tokens)``, deterministic in the request."""
    digest = hashlib.sha256(
        json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()
    ).hexdigest()
    question = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    if "<score>N</score>" in question:  # a judge asked for a written judgment
        top = 1 if "from 0 or 1" in question else 9
        score = int(digest[:4], 16) % (top + 1)
        message = {"role": "assistant", "content": f"The reasoning is fine.\n<score>{score}</score>"}
        return message, "stop", len(question.split()), 8
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # the default backlog of 5 drops bursts of new connections


class FaultServer(LoopbackServer):
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
        responder: ``responder(body) -> message dict`` replaces the answer's message (None: ``respond``).
    """

    server_class = _Server

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
        responder: Any = None,
    ):
        unknown = (set(faults or {}) | set(script or [])) - set(FAULTS) - {None}
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {FAULTS}")
        self.latency_s, self.faults, self.retry_after = latency_s, dict(faults or {}), retry_after
        self.hang_s, self.api_key = hang_s, api_key
        self._slots = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
        self._rng = random.Random(seed)
        self._script = list(script or [])
        self.responder = responder
        self._lock = threading.Lock()
        self.log: list[
            dict[str, Any]
        ] = []  # one entry per chat request: fingerprint, fault, time, body, peer
        self.answered: collections.Counter[str] = collections.Counter()  # fingerprint -> 200 answers
        self.in_flight = self.max_in_flight = 0

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
        return super().start() + "/v1"

    def handler(self) -> type[LoopbackHandler]:
        server = self

        class Handler(LoopbackHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers and httpx's pool expect
            # Headers and body leave in two writes: with Nagle's algorithm on, the body waits for the
            # client's delayed ACK (about 40 ms on Linux) and every request looks 40 ms slower.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/_stats"):  # for a client in another process
                    self._send(200, {"requests": server.requests, "max_in_flight": server.max_in_flight})
                    return
                self._send(200, {"object": "list", "data": [{"id": "teacher", "object": "model"}]})

            def do_POST(self) -> None:
                body = self._read_json()
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid API key"}})
                    return
                fault = server._draw()
                entry = {
                    "fingerprint": fingerprint(body),
                    "fault": fault,
                    "t": time.monotonic(),
                    "body": body,
                    "peer": self.client_address[1],  # the client's port: one per connection
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
                retry = {"Retry-After": server.retry_after} if server.retry_after is not None else {}
                if fault == "429":
                    self._send(429, {"error": {"message": "rate limit reached", "type": "rate_limit"}}, retry)
                elif fault == "503":
                    self._send(503, {"error": {"message": "overloaded; try again"}}, retry)
                elif fault in ("reset", "truncated"):
                    data = json.dumps(self._payload(body)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    if fault == "reset":  # SO_LINGER 0: close() sends a RST instead of a FIN
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        self.connection.close()
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
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
                    self._send(200, self._payload(body))
                    if fault is None:
                        with server._lock:
                            server.answered[entry["fingerprint"]] += 1

            def _payload(self, body: dict[str, Any]) -> dict[str, Any]:
                message, finish, prompt, completion = respond(body)
                choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
                if body.get("logprobs"):
                    choice["logprobs"] = judge_logprobs(body)
                    choice["message"] = {
                        "role": "assistant",
                        "content": choice["logprobs"]["content"][0]["token"],
                    }
                    finish, completion = "length", 1
                    choice["finish_reason"] = finish
                elif server.responder is not None:
                    choice["message"] = server.responder(body)
                    completion = len(str(choice["message"].get("content", "")).split())
                return {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                }

        return Handler


def serve_forever(port_queue: Any, **kwargs: Any) -> None:
    """Run a FaultServer in this process until it is killed (for ``multiprocessing``): the
    base URL is put on ``port_queue``."""
    server = FaultServer(**kwargs)
    port_queue.put(server.start())
    threading.Event().wait()
