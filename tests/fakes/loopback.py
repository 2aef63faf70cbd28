"""Shared scaffolding of the loopback HTTP servers the tests run on 127.0.0.1.

``LoopbackServer`` owns the ``ThreadingHTTPServer`` on a free port, the daemon thread that serves
it, ``start()``/``stop()`` and the context manager; a server supplies its request handler class from
``handler()``. ``LoopbackHandler`` is a quiet ``BaseHTTPRequestHandler`` with the JSON responder
(``_send``) and the ``Content-Length`` body readers the servers share. What each server answers
stays in its own module.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing, reads ``Content-Length`` bodies and answers JSON."""

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(
        self,
        code: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer ``payload`` (bytes and text as they are, anything else as JSON) with its length."""
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        """The request body, ``Content-Length`` bytes of it (empty without one)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_json(self) -> Any:
        """The request body parsed as JSON; None when it is empty."""
        raw = self._read_body()
        return json.loads(raw) if raw else None


class LoopbackServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 (a free port), served by a daemon thread.

    Subclasses implement ``handler()``; ``start()`` returns ``url`` (override it to return another
    form of the address). As a context manager it starts on entry and stops on exit.
    """

    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
    _httpd: ThreadingHTTPServer | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class; it reaches this server through a closure."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the started server."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the started server."""
        return f"http://{self.address}"

    def start(self) -> str:
        self._httpd = self.server_class(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
