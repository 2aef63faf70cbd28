"""Run untrusted, model-written Python in a contained child process and grade it against tests.

Every program runs in its own process, started in a new session (its own process group) from a
fresh temporary folder, with an empty environment. What contains it, strongest first (``isolation()``
says which layers this machine gives; each result records it):

* **Namespaces** (Linux, ``unshare`` from util-linux): as root, ``unshare --net --pid --fork
  --kill-child``; otherwise ``unshare --user --map-root-user ...`` where unprivileged user namespaces
  are allowed. A fresh network namespace has no interface but a downed loopback: no packet leaves,
  whatever the program does (ctypes, raw syscalls). In a fresh PID namespace the program sees no host
  process, and when the namespace's first process ends the kernel kills every process left in it,
  so a daemonised grandchild cannot outlive the test.
* **An unprivileged user**: when the host runs as real root the program drops to ``nobody``
  (after its imports are loaded, so a root-only Python install still works): it cannot write
  root-owned files, and ``RLIMIT_NPROC`` (ignored for root) caps its processes, which stops a
  fork bomb in the kernel.
* **Resource limits** (``setrlimit`` in the child, before the program runs): CPU seconds
  (``RLIMIT_CPU``, SIGXCPU then SIGKILL), address space (``RLIMIT_AS``: a memory bomb gets
  MemoryError), file size (``RLIMIT_FSIZE``, which also caps its stdout), processes
  (``RLIMIT_NPROC``), open files, no core dumps. A wall-clock timer in the host kills the whole
  process group (and with it the PID namespace) on timeout.
* **An audit hook** (PEP 578) installed before the program's first line, ``python -I -S`` (isolated:
  no environment variables, no user or site packages, no current folder on ``sys.path``): opening,
  listing, creating or removing files outside its temporary folder and the Python standard library
  raises ``PermissionError``; so do sockets, ``subprocess``, ``os.system``/``exec*``/``fork``/
  ``posix_spawn`` and ``ctypes``. An audit hook is not a security boundary on its own (native code
  can bypass it), which is why the kernel layers above come first; where they are missing (no
  ``unshare``, not root) the hook and the resource limits are what is left, and ``isolation()``
  reports it.

Programs get the Python standard library only (``-S``: no site-packages), which is what
competitive-programming benchmarks such as LiveCodeBench assume. A ``call`` test (LeetCode style)
runs the function in the program's own process, so a program written to attack the grader could
forge its return value; a ``stdin`` test compares real output and cannot be forged that way.

The program's stdin, stdout and stderr are files in a host-only control folder; the verdict
(exit status or signal) is written there by a small supervisor process that the program cannot
write to, so a program cannot fake its own exit status. Test outputs are compared in the host.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

NOBODY = 65534
BLOCKED = "blocked by the distilflow sandbox"
RESULT_MARK = "__DISTILFLOW_RESULT__"

# Standard-library modules never imported ahead of the program (they act at import time or reach
# native code); everything else the program imports from the standard library is preloaded
# before privileges are dropped.
NO_PRELOAD = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "webbrowser",
        "ctypes",
        "_ctypes",
        "__hello__",
        "__phello__",
        "ensurepip",
        "venv",
        "pydoc",
        "pty",
    }
)


@dataclass
class Limits:
    """What one program run may spend."""

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    nproc: int = 32
    file_mb: int = 16
    open_files: int = 64
    output_bytes: int = 1 << 20


@dataclass
class RunResult:
    """How one program run ended.

    ``status``: ok, error (non-zero exit or an exception), timeout (wall clock), cpu-limit,
    memory-limit, output-limit, blocked (tried something the sandbox forbids), killed (a signal).
    """

    status: str
    returncode: int | None
    signal: int | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class TestCase:
    """One test: ``input`` on stdin (``stdin`` tests) or one JSON argument per line (``call`` tests)."""

    __test__ = False  # not a pytest class

    input: str
    output: str
    kind: str = "stdin"


@dataclass
class TestReport:
    """A program against its tests: passed only when every test passed."""

    __test__ = False  # not a pytest class

    passed: bool
    n_tests: int
    n_run: int
    n_passed: int
    first_failure: dict[str, Any] | None = None
    statuses: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ISOLATION: dict[str, Any] | None = None
_LOCK = threading.Lock()


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd + ["true"], capture_output=True, timeout=10, env={}).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def isolation() -> dict[str, Any]:
    """The containment this machine gives (probed once): namespaces, user switch, limits, hook."""
    global _ISOLATION
    with _LOCK:
        if _ISOLATION is not None:
            return _ISOLATION
        unshare = shutil.which("unshare") or (
            "/usr/bin/unshare" if os.path.exists("/usr/bin/unshare") else None
        )
        prefix: list[str] = []
        how = "none"
        if unshare and sys.platform.startswith("linux"):
            base = [unshare, "--net", "--pid", "--fork", "--kill-child"]
            rootless = [unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]
            if os.geteuid() == 0 and _probe(base):
                prefix, how = base, "netns+pidns"
            elif _probe(rootless):
                prefix, how = rootless, "userns+netns+pidns"
        real_root = os.geteuid() == 0 and how != "userns+netns+pidns"
        _ISOLATION = {
            "namespaces": how,
            "network": "netns+audit-hook" if prefix else "audit-hook",
            "user": "nobody" if real_root else "unchanged",
            "limits": "RLIMIT_CPU,RLIMIT_AS,RLIMIT_FSIZE,RLIMIT_NPROC,RLIMIT_NOFILE,RLIMIT_CORE",
            "files": "audit-hook" + ("+unprivileged-user" if real_root else ""),
            "prefix": prefix,
        }
        return _ISOLATION


def describe() -> dict[str, str]:
    """``isolation()`` without the command prefix, for reports and result files."""
    return {k: v for k, v in isolation().items() if k != "prefix"}


# The supervisor + payload, run with ``python -I -S guard.py CONFIG.json``. The supervisor (first
# process, PID 1 of the namespace where there is one) forks the payload, waits, and writes the
# verdict; the payload installs the hook and limits, drops privileges, and runs the program.
GUARD = r"""
import json, os, sys

cfg = json.load(open(sys.argv[1]))
verdict_path = cfg["verdict"]
pid = os.fork()
if pid:
    while True:
        try:
            got, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 0
            break
        except InterruptedError:
            continue
    verdict = {"exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
               "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}
    with open(verdict_path, "w") as f:
        json.dump(verdict, f)
    os._exit(0)

import io
import resource
import traceback

work = cfg["work"]
code = open(cfg["code"], encoding="utf-8").read()
call_input = None
if cfg["mode"] == "call":
    call_input = sys.stdin.read()
    sys.stdin = open(os.devnull)


def _limit(kind, soft, hard=None):
    try:
        resource.setrlimit(kind, (soft, soft if hard is None else hard))
    except (ValueError, OSError):
        pass


_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
_limit(resource.RLIMIT_FSIZE, cfg["file_bytes"])
_limit(resource.RLIMIT_NOFILE, cfg["open_files"])

import sysconfig
roots_read = [os.path.realpath(p) for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"], os.path.dirname(os.__file__)} if p]
dynload = os.path.join(os.path.dirname(os.__file__), "lib-dynload")
roots_read.append(os.path.realpath(dynload))
work_real = os.path.realpath(work)
READ_OK = tuple(roots_read) + (work_real,)
DEV_OK = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/zero", "/proc/self")
BLOCK_ALWAYS = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
    "os.killpg", "subprocess.Popen", "socket.__new__", "socket.connect", "socket.bind",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.cdata", "ctypes.call_function", "os.setuid", "os.setgid", "pty.spawn", "sys.remote_exec",
}
PATH_EVENTS = {
    "os.listdir": 0, "os.scandir": 0, "os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.rename": 0,
    "os.chmod": 0, "os.chown": 0, "os.symlink": 0, "os.link": 0, "os.truncate": 0, "os.utime": 0,
    "os.chdir": 0, "shutil.rmtree": 0, "shutil.copyfile": 0, "shutil.move": 0, "glob.glob": 0,
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
state = {"armed": False, "preloading": False}


def _inside(path, roots):
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def _path(value):
    if isinstance(value, int):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return os.fspath(value) if value is not None else None


def hook(event, args):
    if not state["armed"]:
        return
    if event in BLOCK_ALWAYS or event.startswith("os.exec") or event.startswith("os.spawn"):
        raise PermissionError(f"{event}: BLOCKED")
    if event == "import" and not state["preloading"] and args and str(args[0]).split(".")[0] in ("ctypes", "_ctypes", "_posixsubprocess"):
        raise PermissionError(f"import {args[0]}: BLOCKED")
    if event == "open":
        path = _path(args[0])
        if path is None:
            return
        mode = args[1] if len(args) > 1 else None
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & WRITE_FLAGS)
        if path in DEV_OK or any(path.startswith(d + "/") for d in DEV_OK):
            return
        if writing:
            if not _inside(path, (work_real,)):
                raise PermissionError(f"open {path!r} for writing: BLOCKED")
        elif not _inside(path, READ_OK):
            raise PermissionError(f"open {path!r}: BLOCKED")
        return
    if event in PATH_EVENTS:
        for value in args[:2]:
            path = _path(value)
            if path is not None and not isinstance(value, int) and not _inside(path, (work_real,)):
                if event in ("os.listdir", "os.scandir") and _inside(path, READ_OK):
                    continue
                raise PermissionError(f"{event} {path!r}: BLOCKED")


sys.addaudithook(hook)
os.chdir(work)
state["armed"] = True
BLOCKED_MSG = cfg["blocked"]
import builtins
_orig_pe = PermissionError

# Preload the standard-library modules the program imports (as the supervisor's user: the program
# may run as nobody, who cannot read a root-only Python install).
state["preloading"] = True
for name in cfg["preload"]:
    try:
        __import__(name)
    except BaseException:
        pass
state["preloading"] = False

_limit(resource.RLIMIT_AS, cfg["memory_bytes"])
if cfg["drop_to"] is not None:
    _limit(resource.RLIMIT_NPROC, cfg["nproc"])
    try:
        os.setgroups([])
    except OSError:
        pass
    state["armed"] = False
    os.setgid(cfg["drop_to"])
    os.setuid(cfg["drop_to"])
    state["armed"] = True
else:
    _limit(resource.RLIMIT_NPROC, cfg["nproc"])

del cfg["verdict"]
scope = {"__name__": "__main__" if call_input is None else "solution", "__builtins__": builtins}
real_stdout = sys.stdout
try:
    if call_input is not None:
        sys.stdout = io.StringIO()
    exec(compile(code, "solution.py", "exec"), scope)
    if call_input is not None:
        func = cfg["func_name"]
        target = scope.get("Solution")
        fn = getattr(target(), func) if target is not None and hasattr(target, func) else scope.get(func)
        if fn is None:
            raise NameError(f"no function or Solution method named {func!r}")
        lines = [ln for ln in call_input.split("\n") if ln.strip()]
        args = [json.loads(ln) for ln in lines]
        value = fn(*args)
        sys.stdout = real_stdout
        print(cfg["mark"] + json.dumps(value))
except SystemExit as exc:
    sys.stdout = real_stdout
    sys.stdout.flush()
    code_ = exc.code
    if code_ is None:
        os._exit(0)
    if isinstance(code_, int):
        os._exit(code_ & 0xFF)
    print(code_, file=sys.stderr)
    os._exit(1)
except BaseException as exc:
    sys.stdout = real_stdout
    if isinstance(exc, PermissionError) and "BLOCKED" in str(exc):
        print(BLOCKED_MSG + ": " + str(exc), file=sys.stderr)
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def _imported_modules(code: str) -> list[str]:
    """Top-level standard-library modules the program imports (to preload them)."""
    import ast

    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    std = sys.stdlib_module_names
    return sorted(n for n in names if n.split(".")[0] in std and n.split(".")[0] not in NO_PRELOAD)


def _read(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return ""
    text = data[:limit].decode("utf-8", "replace")
    return text + ("\n[... output truncated]" if len(data) > limit else "")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_program(
    code: str,
    stdin: str = "",
    limits: Limits | None = None,
    *,
    mode: str = "stdin",
    func_name: str | None = None,
    mark: str | None = None,
    audit_hook: bool = True,
) -> RunResult:
    """Run ``code`` once in the sandbox with ``stdin``; never raises for anything the program does.

    ``mode="call"``: the program defines ``func_name`` (a function or a ``Solution`` method);
    ``stdin`` holds one JSON argument per line and the return value comes back on stdout after
    ``mark``. ``audit_hook=False`` leaves only the kernel layers (for tests of those layers).
    """
    limits = limits or Limits()
    iso = isolation()
    drop_to = NOBODY if iso["user"] == "nobody" else None
    ctl = tempfile.mkdtemp(prefix="distilflow-sandbox-")
    started = time.monotonic()
    try:
        cfg = {"mode": mode, "func_name": func_name, "mark": mark or RESULT_MARK, "drop_to": drop_to}
        paths, cfg_path = _prepare(ctl, code, stdin, limits, cfg, audit_hook)
        cmd = iso["prefix"] + [sys.executable, "-I", "-S", "-B", paths["guard.py"], cfg_path]
        returncode, timed_out = _execute(cmd, paths, os.path.join(ctl, "work"), limits.wall_s)
        wall = time.monotonic() - started
        stdout = _read(paths["out"], limits.output_bytes)
        stderr = _read(paths["err"], 64 << 10)
        verdict: dict[str, Any] = {}
        try:
            with open(paths["verdict.json"], encoding="utf-8") as f:
                verdict = json.load(f)
        except (OSError, ValueError):
            verdict = {}
        status, rc, sig = _status(verdict, timed_out, returncode, wall, limits, stderr)
        return RunResult(status, rc, sig, stdout, stderr, round(wall, 4))
    finally:
        shutil.rmtree(ctl, ignore_errors=True)


def _prepare(
    ctl: str, code: str, stdin: str, limits: Limits, cfg: dict[str, Any], audit_hook: bool
) -> tuple[dict[str, str], str]:
    """Write the guard, the program, its stdin and the guard's config into the control folder ``ctl``
    (the program's own work folder inside it, owned by the unprivileged user when there is one)."""
    work = os.path.join(ctl, "work")
    os.mkdir(work, 0o700)
    if cfg["drop_to"] is not None:
        os.chown(work, cfg["drop_to"], cfg["drop_to"])
    names = ("guard.py", "main.py", "in", "out", "err", "verdict.json")
    paths = {name: os.path.join(ctl, name) for name in names}
    with open(paths["guard.py"], "w", encoding="utf-8") as f:
        f.write(GUARD if audit_hook else GUARD.replace("sys.addaudithook(hook)", "pass"))
    with open(paths["main.py"], "w", encoding="utf-8") as f:
        f.write(code)
    with open(paths["in"], "w", encoding="utf-8") as f:
        f.write(stdin)
    cfg = {
        "work": work,
        "code": paths["main.py"],
        "verdict": paths["verdict.json"],
        **cfg,
        "cpu_s": max(1, math.ceil(limits.cpu_s)),
        "memory_bytes": limits.memory_mb << 20,
        "file_bytes": limits.file_mb << 20,
        "open_files": limits.open_files,
        "nproc": limits.nproc,
        "preload": _imported_modules(code),
        "blocked": BLOCKED,
    }
    cfg_path = os.path.join(ctl, "config.json")
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return paths, cfg_path


def _execute(cmd: list[str], paths: dict[str, str], work: str, wall_s: float) -> tuple[int | None, bool]:
    """Run the guard in a new session, with no environment, for at most ``wall_s`` seconds; then kill
    whatever its process group left behind. Returns the exit code and whether time ran out."""
    with (
        open(paths["in"], "rb") as fin,
        open(paths["out"], "wb") as fout,
        open(paths["err"], "wb") as ferr,
    ):
        proc = subprocess.Popen(
            cmd,
            stdin=fin,
            stdout=fout,
            stderr=ferr,
            cwd=work,
            env={},
            start_new_session=True,
            close_fds=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Always: the group holds anything the program left behind (and, with a PID
        # namespace, its first process; killing it kills the namespace).
        _kill_group(proc.pid)
        proc.wait()
    return proc.returncode, timed_out


def _status(
    verdict: dict[str, Any],
    timed_out: bool,
    returncode: int | None,
    wall: float,
    limits: Limits,
    stderr: str,
) -> tuple[str, int | None, int | None]:
    """``(status, exit code, signal)`` of a run from the guard's verdict and how the process ended."""
    rc, sig = verdict.get("exit"), verdict.get("signal")
    if timed_out:
        status = "timeout"
    elif not verdict:
        status, sig = "killed", (-returncode if returncode and returncode < 0 else None)
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and wall >= limits.cpu_s):
        status = "cpu-limit"
    elif sig == signal.SIGXFSZ:
        status = "output-limit"
    elif sig is not None:
        status = "killed"
    elif rc == 0:
        status = "ok"
    elif BLOCKED in stderr:
        status = "blocked"
    elif "MemoryError" in stderr:
        status = "memory-limit"
    elif "File too large" in stderr:
        status = "output-limit"
    else:
        status = "error"
    return status, rc, sig


# --- grading ---------------------------------------------------------------------------------


def _tokens_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)


def outputs_match(got: str, expected: str) -> bool:
    """Line by line after trimming whitespace; numbers compare with a 1e-6 tolerance."""
    g = [ln.strip() for ln in got.strip().splitlines()]
    e = [ln.strip() for ln in expected.strip().splitlines()]
    if g == e:
        return True
    if len(g) != len(e):
        return False
    for gl, el in zip(g, e, strict=True):
        gt, et = gl.split(), el.split()
        if len(gt) != len(et) or not all(_tokens_equal(x, y) for x, y in zip(gt, et, strict=True)):
            return False
    return True


def _call_value(stdout: str, mark: str) -> tuple[bool, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(mark):
            try:
                return True, json.loads(line[len(mark) :])
            except ValueError:
                return False, None
    return False, None


def _expected_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def run_tests(
    code: str,
    tests: list[TestCase],
    limits: Limits | None = None,
    *,
    func_name: str | None = None,
    stop_on_failure: bool = True,
    audit_hook: bool = True,
    prelude: str = "",
) -> TestReport:
    """Run ``code`` against each test in its own sandboxed process; stop at the first failure.

    ``prelude`` is put before the program (LiveCodeBench prepends the usual imports, e.g.
    ``from typing import *`` for LeetCode signatures).
    """
    statuses: list[str] = []
    n_passed = 0
    first: dict[str, Any] | None = None
    if not code.strip():
        return TestReport(False, len(tests), 0, 0, {"index": None, "status": "no-code"}, [])
    code = prelude + code
    for i, test in enumerate(tests):
        mark = f"{RESULT_MARK}{uuid.uuid4().hex}:"
        if test.kind == "call":
            res = run_program(
                code, test.input, limits, mode="call", func_name=func_name, mark=mark, audit_hook=audit_hook
            )
            found, value = _call_value(res.stdout, mark) if res.ok else (False, None)
            expected = _expected_value(test.output)
            passed = found and json.loads(json.dumps(value)) == expected
        else:
            res = run_program(code, test.input, limits, audit_hook=audit_hook)
            passed = res.ok and outputs_match(res.stdout, test.output)
        status = "passed" if passed else (res.status if not res.ok else "wrong-answer")
        statuses.append(status)
        if passed:
            n_passed += 1
        elif first is None:
            first = {
                "index": i,
                "status": status,
                "stderr": res.stderr[-1000:],
                "stdout": res.stdout[:500],
                "expected": test.output[:500],
                "wall_s": res.wall_s,
            }
            if stop_on_failure:
                break
    return TestReport(first is None and len(tests) > 0, len(tests), len(statuses), n_passed, first, statuses)
