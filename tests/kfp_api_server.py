"""A loopback HTTP server answering the KFP v2beta1 REST paths that ``kfp.Client`` calls to
create an experiment and a run; it records every request so tests can assert on what was sent."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class KfpApiServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.experiments: dict[str, dict] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                return json.loads(raw) if raw else {}

            def do_GET(self) -> None:
                server.requests.append(("GET", self.path, {}))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/healthz":
                    self._send(200, {"multi_user": False})
                elif path == "/apis/v2beta1/experiments":
                    self._send(200, {"experiments": list(server.experiments.values())})
                elif path.startswith("/apis/v2beta1/experiments/"):
                    self._send(200, server.experiments[path.rsplit("/", 1)[1]])
                else:
                    self._send(404, {"error": f"no route {path}"})

            def do_POST(self) -> None:
                body = self._body()
                server.requests.append(("POST", self.path, body))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": str(uuid.uuid4())}
                    server.experiments[exp["experiment_id"]] = exp
                    self._send(200, exp)
                elif path == "/apis/v2beta1/runs":
                    self._send(200, {**body, "run_id": "run-" + uuid.uuid4().hex[:8], "state": "PENDING"})
                else:
                    self._send(404, {"error": f"no route {path}"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> KfpApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
