"""A kept local server's pid file (``server.pid`` in deploy's output folder) and ``stop_server``, which
``distilflow stop OUTPUT`` calls to stop it.

The file records the pid (the server runs in its own process group: vLLM's workers stop with it), its
URL and the module it runs; ``stop_server`` signals the group only while that pid still runs that
module, so a pid the system has since given to another program is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from distilflow import uri as uris
from distilflow.errors import DistilflowError

PID_FILE = "server.pid"


def write_pid_file(out: Any, pid: int, url: str, backend: str) -> str:
    """Record a kept server in ``<output>/server.pid``; return its URI."""
    from distilflow.components.deploy.run import SERVER_MODULES

    path = out.path(PID_FILE)
    record = {"pid": pid, "url": url, "backend": backend, "module": SERVER_MODULES[backend]}
    uris.write_text(path, json.dumps(record) + "\n")
    return path


@dataclass
class Stopped:
    """What ``stop_server`` did."""

    pid: int
    url: str
    was_running: bool
    pid_file: str

    def line(self) -> str:
        if self.was_running:
            return f"stopped the server at {self.url} (pid {self.pid}); removed {self.pid_file}"
        return f"the server at {self.url} (pid {self.pid}) was no longer running; removed {self.pid_file}"


def _pid_file(output_uri: str) -> str:
    for candidate in (uris.join(output_uri, PID_FILE), uris.join(output_uri, "deploy", PID_FILE)):
        if uris.exists(candidate):
            return candidate
    raise DistilflowError(
        f"{output_uri}: no {PID_FILE} here or in its deploy/ folder: no server that deploy kept running "
        "(keep_running: true) was recorded there; give deploy's output folder or the run's"
    )


def _runs(pid: int, module: str) -> bool:
    """Whether ``pid`` is alive (not a zombie) and its command line runs ``module``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return module.encode() in f.read()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def stop_server(output_uri: str, grace_s: float = 15) -> Stopped:
    """Stop the server a deploy with ``keep_running`` left in ``output_uri`` (deploy's or the run's
    folder): SIGTERM to its process group, SIGKILL after ``grace_s``; then remove the pid file."""
    path = _pid_file(output_uri)
    record = json.loads(uris.read_text(path))
    pid, module = int(record["pid"]), str(record["module"])
    running = _runs(pid, module)
    if running:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _runs(pid, module) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _runs(pid, module):
            os.killpg(pid, signal.SIGKILL)
    uris.remove(path)
    return Stopped(pid=pid, url=str(record.get("url")), was_running=running, pid_file=path)
