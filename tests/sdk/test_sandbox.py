"""The sandbox for model-written code: programs graded against tests; a hostile corpus is contained."""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from distilflow import sandbox
from distilflow.sandbox import Limits, TestCase, outputs_match, run_program, run_tests

FAST = Limits(wall_s=3.0, cpu_s=2.0, memory_mb=256)


def _sandbox_processes() -> list[str]:
    """Command lines of live processes started by the sandbox (they run the guard from its temp folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if "distilflow-sandbox-" in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def _wait_no_leftovers(timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _sandbox_processes()
        if not left:
            return []
        time.sleep(0.1)
    return _sandbox_processes()


def test_stdin_and_call_programs_are_graded():
    good = "a, b = map(int, input().split())\nprint(a + b)\n"
    tests = [TestCase("1 2\n", "3\n"), TestCase("10 -4\n", "6")]
    assert run_tests(good, tests, FAST).passed
    wrong = run_tests("print(0)", tests, FAST)
    assert not wrong.passed and wrong.first_failure["status"] == "wrong-answer" and wrong.n_run == 1
    crash = run_tests("raise ValueError('boom')", tests, FAST)
    assert (
        not crash.passed
        and crash.first_failure["status"] == "error"
        and "boom" in crash.first_failure["stderr"]
    )

    solution = (
        "from typing import List\n"
        "class Solution:\n"
        "    def twoLargest(self, nums: List[int], k: int) -> List[int]:\n"
        "        print('debug output does not count')\n"
        "        return sorted(nums)[-k:]\n"
    )
    call = [TestCase("[3, 1, 2]\n2", "[2, 3]", kind="call"), TestCase("[5]\n1", "[5]", kind="call")]
    assert run_tests(solution, call, FAST, func_name="twoLargest").passed
    off = run_tests(solution.replace("[-k:]", "[:k]"), call, FAST, func_name="twoLargest")
    assert not off.passed and off.first_failure["status"] == "wrong-answer"
    assert not run_tests("", call, FAST, func_name="twoLargest").passed


@pytest.mark.unit
def test_outputs_match_trims_whitespace_and_tolerates_float_noise():
    assert outputs_match("1 2\n3  \n\n", "1 2\n3")
    assert outputs_match("0.3333333333\n", "0.333333333")
    assert not outputs_match("1 2", "1 3")
    assert not outputs_match("1\n2", "1")


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that records whether anything connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)
    yield server
    server.close()


def _connected(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_hostile_corpus_is_contained_and_reported_as_failed_tests(listener, tmp_path, monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("DISTILFLOW_TEST_SECRET", secret)
    outside = tmp_path / "pwned.txt"
    os.chmod(tmp_path, 0o777)  # even a world-writable folder must stay untouched
    port = listener.getsockname()[1]
    project_file = os.path.abspath(__file__)
    corpus = {
        "infinite loop": "while True:\n    pass\n",
        "fork bomb": "import os\nwhile True:\n    os.fork()\n",
        "memory bomb": "x = []\nwhile True:\n    x.append(bytearray(64 << 20))\n",
        "network call": f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'leak')\nprint('ok')\n",
        "write outside": f"open({str(outside)!r}, 'w').write('owned')\nprint('ok')\n",
        "read env": "import os\nprint(os.environ.get('DISTILFLOW_TEST_SECRET', 'ok'))\n",
        "read project": f"print(open({project_file!r}).read()[:50])\n",
        "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'echo ok'])\n",
        "print flood": "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n",
    }
    tests = [TestCase("", "secret-free output")]
    started = time.monotonic()
    reports = {name: run_tests(code, tests, FAST) for name, code in corpus.items()}
    elapsed = time.monotonic() - started
    statuses = {name: r.first_failure["status"] for name, r in reports.items()}

    assert not any(r.passed for r in reports.values()), statuses
    assert statuses["infinite loop"] in ("timeout", "cpu-limit")
    assert statuses["memory bomb"] == "memory-limit"
    assert statuses["print flood"] in ("output-limit", "timeout", "cpu-limit")
    for name in ("fork bomb", "network call", "write outside", "read project", "subprocess"):
        assert statuses[name] == "blocked", (name, reports[name].first_failure)
    # The host is unharmed: no file outside, no secret out, no connection, nothing left running.
    assert not outside.exists()
    assert all(secret not in (r.first_failure.get("stdout") or "") for r in reports.values())
    assert reports["read env"].first_failure["stdout"].strip() == "ok"  # the variable was not there
    assert not _connected(listener)
    assert _wait_no_leftovers() == []
    assert elapsed < 30, f"corpus took {elapsed:.1f}s"
    # ... and the sandbox still works after all that.
    assert run_tests("print(input())", [TestCase("fine\n", "fine")], FAST).passed


@pytest.mark.skipif(
    sandbox.isolation()["namespaces"] == "none", reason="no network/PID namespaces on this machine"
)
def test_kernel_layers_contain_without_the_audit_hook(listener, tmp_path):
    """With the audit hook switched off, namespaces and limits alone still contain the program."""
    port = listener.getsockname()[1]
    marker = tmp_path / "late.txt"
    os.chmod(tmp_path, 0o777)
    net = run_program(
        f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n",
        limits=FAST,
        audit_hook=False,
    )
    assert net.status == "error" and not _connected(listener)
    # A daemonised grandchild (own session) is killed with the namespace when the program exits.
    daemon = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(1.5)\n"
        f"    open({str(marker)!r}, 'w').write('escaped')\n"
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    assert run_program(daemon, limits=FAST, audit_hook=False).status == "ok"
    if sandbox.isolation()["user"] == "nobody":
        bomb = run_program("import os\nwhile True:\n    os.fork()\n", limits=FAST, audit_hook=False)
        assert bomb.status in ("error", "timeout", "killed"), bomb
    time.sleep(2.0)
    assert not marker.exists()
    assert _wait_no_leftovers() == []


@pytest.mark.unit
def test_isolation_is_described():
    info = sandbox.describe()
    assert {"namespaces", "network", "user", "limits", "files"} <= set(info)
    assert "prefix" not in info
