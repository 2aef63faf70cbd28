"""A fault-injecting HTTP proxy in front of an S3-compatible server (moto's ``ThreadedMotoServer``).

Point ``DISTILFLOW_S3_ENDPOINT_URL`` at ``FaultyS3Proxy(upstream).start()`` and every S3 call of a
stage goes through it. Faults are drawn per request, from a seeded generator, for the HTTP methods
named in ``methods`` (default: writes, ``PUT`` and ``POST``, and reads, ``GET``):

* ``slow``: the request waits ``slow_s`` before it is forwarded (a slow write);
* ``500``: an S3 ``InternalError`` without forwarding (nothing is stored);
* ``503``: an S3 ``SlowDown`` without forwarding;
* ``drop``: the connection is closed without an answer, before forwarding;
* ``drop_after``: the request is forwarded (the store applies it), then the connection is closed
  without an answer: the client cannot know that its write landed and must send it again.

The proxy counts every request and fault, so tests can report how many requests were re-sent.
It does not import distilflow.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULTS = ("slow", "500", "503", "drop", "drop_after")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultyS3Proxy:
    """Forward to ``upstream`` (``http://127.0.0.1:PORT``); ``start()`` returns the proxy's URL.

    Args:
        upstream: The S3-compatible server's endpoint URL.
        faults: Rate of each fault kind per request, e.g. ``{"500": 0.1, "drop": 0.05}``.
        slow_s: How long a ``slow`` fault holds the request.
        methods: HTTP methods faults are injected into (others always pass).
        seed: Seed of the fault draws.
    """

    def __init__(
        self,
        upstream: str,
        faults: dict[str, float] | None = None,
        slow_s: float = 0.2,
        methods: tuple[str, ...] = ("PUT", "POST", "GET"),
        seed: int = 0,
    ):
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {FAULTS}")
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.faults, self.slow_s, self.methods = dict(faults or {}), slow_s, methods
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.enabled = True
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, fault)
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def requests(self) -> int:
        return len(self.log)

    def injected(self) -> collections.Counter[str]:
        """How many faults of each kind were injected."""
        with self._lock:
            return collections.Counter(f for _, _, f in self.log if f)

    def resent(self) -> int:
        """Requests a client had to send again: every injected fault but ``slow`` lost its answer."""
        return sum(n for kind, n in self.injected().items() if kind != "slow")

    def _draw(self, method: str) -> str | None:
        with self._lock:
            x = self._rng.random()
        if not self.enabled or method not in self.methods:
            return None
        for kind in FAULTS:
            rate = self.faults.get(kind, 0.0)
            if x < rate:
                return kind
            x -= rate
        return None

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(chunk)
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _error(self, status: int, code: str) -> None:
                data = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>injected by the test proxy</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    return resp.status, resp.getheaders(), data
                finally:
                    conn.close()

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._draw(self.command)
                with proxy._lock:
                    proxy.log.append((self.command, self.path, fault))
                if fault == "slow":
                    time.sleep(proxy.slow_s)
                elif fault == "500":
                    return self._error(500, "InternalError")
                elif fault == "503":
                    return self._error(503, "SlowDown")
                elif fault == "drop":
                    return self._drop()
                status, headers, data = self._forward(body)
                if fault == "drop_after":
                    return self._drop()
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                if self.command == "HEAD":
                    length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 256

        self._httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
