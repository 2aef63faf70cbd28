"""A loopback OpenAI-compatible teacher for the benchmarks, with a known limit and injected faults.

Each chat request holds one of ``cap`` slots for ``latency`` seconds, so no client can get more
than C/L answers per second. ``backlog`` is the listen queue: Python's ``socketserver`` default is
5 (``request_queue_size``), what many small servers and proxies run with; a burst of new
connections beyond it is refused or stalls until the server accepts. Faults are drawn per request
from ``faults`` (kind -> rate): ``429``/``503`` (with ``Retry-After: 0``), ``500``, ``slow`` (the
answer comes ``slow_s`` late, holding its slot), ``reset`` (half the body, then a TCP reset),
``drop`` (the connection closes without an answer) and ``malformed`` (a 200 with broken JSON).

The server counts every attempt and every answered request by its fingerprint (the messages and
seed), so a benchmark can tell rows delivered, requests per row and duplicates. It runs in its own
process (``start_in_process``) so that it does not share the client's GIL. It does not import
distilflow: the client under test is not checked against its own code. Not a test fixture; the
test suite has its own servers under ``tests/``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "503", "slow", "reset", "drop", "malformed")


def fingerprint(body: dict[str, Any]) -> str:
    keep = [body.get("messages"), body.get("seed")]
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class TeacherServer:
    """The server's state: slots, the fault draw and the counters."""

    def __init__(
        self,
        latency: float,
        cap: int,
        backlog: int = 5,
        faults: dict[str, float] | None = None,
        slow_s: float = 0.5,
        seed: int = 0,
    ):
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {FAULTS}")
        self.latency, self.slow_s, self.faults = latency, slow_s, dict(faults or {})
        self.slots = threading.BoundedSemaphore(cap)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.attempts: collections.Counter[str] = collections.Counter()
        self.answered: collections.Counter[str] = collections.Counter()
        self.faulted: collections.Counter[str] = collections.Counter()
        self.in_flight = self.max_in_flight = 0

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = backlog

        self.httpd = Server(("127.0.0.1", 0), self._handler())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def draw(self) -> str | None:
        with self.lock:
            x = self.rng.random()
        for kind in FAULTS:
            rate = self.faults.get(kind, 0.0)
            if x < rate:
                return kind
            x -= rate
        return None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": sum(self.attempts.values()),
                "distinct": len(self.attempts),
                "answered": sum(self.answered.values()),
                "answered_distinct": len(self.answered),
                "answered_twice": sum(1 for c in self.answered.values() if c > 1),
                "faults": dict(self.faulted),
                "max_in_flight": self.max_in_flight,
            }

    def reset_counters(self) -> None:
        with self.lock:
            self.attempts.clear()
            self.answered.clear()
            self.faulted.clear()
            self.max_in_flight = 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def send(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.endswith("/_stats"):
                    self.send(200, json.dumps(server.stats()).encode())
                elif self.path.endswith("/_reset"):
                    server.reset_counters()
                    self.send(200, b"{}")
                else:
                    self.send(200, b'{"object":"list","data":[{"id":"teacher","object":"model"}]}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                key, fault = fingerprint(body), server.draw()
                with server.lock:
                    server.attempts[key] += 1
                    if fault:
                        server.faulted[fault] += 1
                with server.slots:
                    with server.lock:
                        server.in_flight += 1
                        server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    try:
                        time.sleep(server.latency + (server.slow_s if fault == "slow" else 0.0))
                        self.answer(body, key, fault)
                    except OSError:
                        pass  # the client went away
                    finally:
                        with server.lock:
                            server.in_flight -= 1

            def answer(self, body: dict[str, Any], key: str, fault: str | None) -> None:
                retry = {"Retry-After": "0"}
                if fault in ("429", "503"):
                    self.send(int(fault), b'{"error":{"message":"busy, try again"}}', retry)
                elif fault == "500":
                    self.send(500, b'{"error":{"message":"internal error"}}')
                elif fault in ("reset", "drop"):
                    if fault == "reset":
                        self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"id":')
                        self.wfile.flush()
                    self.close_connection = True
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                elif fault == "malformed":
                    self.send(200, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess')
                else:
                    self.send(200, json.dumps(reply(body)).encode())
                    with server.lock:
                        server.answered[key] += 1

        return Handler


def reply(body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion with a short chain of thought, deterministic in the request."""
    question = body["messages"][-1]["content"]
    digest = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16)
    reasoning = f"Consider: {question} " + " ".join(f"step{i}" for i in range(20 + digest % 40))
    message = {"role": "assistant", "content": f"The answer is \\boxed{{{digest % 100}}}."}
    message["reasoning_content"] = reasoning
    return {
        "id": f"chatcmpl-{digest:x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 64, "total_tokens": 84},
    }


def _serve(queue: Any, kwargs: dict[str, Any]) -> None:
    server = TeacherServer(**kwargs)
    queue.put(server.base_url)
    server.httpd.serve_forever()


def start_in_process(**kwargs: Any) -> tuple[str, Any]:
    """Start a TeacherServer in a spawned process; return its base URL and the process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(queue, kwargs), daemon=True)
    proc.start()
    return queue.get(timeout=60), proc
