"""Confirm the GPU figures in one go: every ``gpu``-marked test, then the GPU benchmarks (sft, dpo, reward),
within a time budget; a summary in ``<out>/summary.json`` and ``<out>/summary.md``, each step's full output
in ``<out>/<step>.log``.

    python scripts/gpu_check.py [--out gpu-check] [--budget 540] [--wheels DIR] [--steps tests,sft,dpo,reward]

On a node without network, bring the missing packages as wheels (``--wheels DIR``): they are installed
into a fresh ``site-packages`` folder (``pip install --no-index --no-deps --target``; the path must contain
``site-packages``, see shared NOTES.md) that every step finds through ``PYTHONPATH``. Make the folder here,
where the package index is reachable:

    python scripts/gpu_check.py --download wheels/        # CPython 3.12 manylinux wheels + deepspeed + this project

Each step gets what is left of the budget (``--budget`` seconds in all) up to its own cap; a step that
would start with less than ``MIN_STEP_S`` left is skipped and says so. Without a CUDA GPU every step is
skipped and the summary says why (exit 0; ``--require-gpu`` makes that exit 2). A failed step makes the
exit status 1.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_STEP_S = 30
GPU_TESTS = (
    "tests/components/sft/test_sft.py",
    "tests/components/sft/test_sft_speed.py",
    "tests/components/rl/test_rl.py",
    "tests/components/distill/test_distill.py",
)
"""The files holding ``gpu``-marked tests (their other tests are deselected by ``-m gpu``)."""


@dataclass
class Step:
    name: str
    command: list[str]
    cap_s: int
    kind: str  # "tests" or "bench"


STEPS = {
    "tests": Step(
        "tests",
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", *GPU_TESTS],
        240,
        "tests",
    ),
    "sft": Step(
        "sft", [sys.executable, "bench/bench_sft.py", "--gpu", "--profile", "{out}/profile-sft"], 270, "bench"
    ),
    "dpo": Step("dpo", [sys.executable, "bench/bench_dpo.py", "--gpu"], 150, "bench"),
    "reward": Step("reward", [sys.executable, "bench/bench_reward.py", "--gpu"], 120, "bench"),
}

WHEELS = (
    # what the GPU machine lacks (torch, transformers, accelerate, numpy, pyarrow, pandas are there); the
    # versions are this environment's, so the GPU run uses what CI tested
    "trl", "datasets", "peft", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
    "typing-extensions", "dill", "multiprocess", "xxhash", "fsspec", "hjson", "py-cpuinfo", "msgpack", "ninja",
    "einops", "pyyaml", "pytest", "pluggy", "iniconfig", "pytest-timeout", "pygments",
)  # fmt: skip
EXTRA_WHEELS = {"liger-kernel": "0.8.5"}
"""Wheels that need not be installed here (liger-kernel pulls Triton, which a CPU machine does not use)."""


@dataclass
class Outcome:
    name: str
    status: str  # passed, failed, timeout, skipped
    seconds: float = 0.0
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def pip_target_command(wheels: str, target: str) -> list[str]:
    """Install every wheel of ``wheels`` into ``target`` with no index and no dependency resolution."""
    found = sorted(glob.glob(os.path.join(wheels, "*.whl")))
    if not found:
        raise SystemExit(f"--wheels {wheels}: no .whl file there; make them with --download {wheels}")
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--target",
        target,
        *found,
    ]


def install_wheels(wheels: str) -> str:
    """Install ``wheels`` into a fresh ``.../site-packages`` folder; return it."""
    target = os.path.join(tempfile.mkdtemp(prefix="gpu-check-"), "site-packages")
    subprocess.run(pip_target_command(wheels, target), check=True)
    return target


def step_env(site: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every step: the wheels' folder first on ``PYTHONPATH``, the checkout next (so
    ``tests`` and ``bench`` import), hubs offline."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in (site, ROOT, env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def cuda_available(env: dict[str, str]) -> tuple[bool, str]:
    """Whether torch sees a CUDA GPU in ``env`` (asked in a subprocess), and the GPU's name or the reason."""
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return False, lines[-1] if lines else "torch did not import"
    said = done.stdout.strip()
    return said not in ("none", ""), said


def figures_of(kind: str, output: str) -> dict[str, Any]:
    """A bench's last JSON line, or pytest's counts (``{"passed": 3, "skipped": 1}``)."""
    if kind == "bench":
        for line in reversed(output.strip().splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    break
        return {}
    counts = {}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|error|errors)\b", output):
        counts[word.rstrip("s") if word == "errors" else word] = int(number)
    return counts


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def run_step(step: Step, left_s: float, env: dict[str, str], out: str) -> Outcome:
    """Run one step with ``min(cap, left)`` seconds; its output goes to ``<out>/<name>.log``."""
    if left_s < MIN_STEP_S:
        return Outcome(
            step.name, "skipped", detail=f"budget: {left_s:.0f} s left, a step needs {MIN_STEP_S} s"
        )
    limit = min(step.cap_s, left_s)
    start = time.monotonic()
    command = [part.replace("{out}", os.path.abspath(out)) for part in step.command]
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit, check=False
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, code = "".join(_text(x) for x in (exc.stdout, exc.stderr)), None
    seconds = time.monotonic() - start
    with open(os.path.join(out, f"{step.name}.log"), "w", encoding="utf-8") as f:
        f.write(" ".join(command) + "\n\n" + output)
    if code is None:
        return Outcome(
            step.name, "timeout", seconds, f"stopped after {limit:.0f} s", figures_of(step.kind, output)
        )
    tail = output.strip().splitlines()[-1:] or [""]
    status = "passed" if code == 0 else "failed"
    return Outcome(
        step.name,
        status,
        seconds,
        "" if code == 0 else f"exit {code}: {tail[0][:300]}",
        figures_of(step.kind, output),
    )


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown page: one row a step, then each benchmark's table."""
    lines = [
        f"# GPU check ({summary['device']})",
        "",
        f"{summary['note']}",
        "",
        "| step | status | seconds | detail |",
        "|---|---|---|---|",
    ]
    for o in summary["steps"]:
        detail = o["detail"] or ", ".join(f"{k} {v}" for k, v in o["figures"].items() if isinstance(v, int))
        lines.append(f"| {o['name']} | {o['status']} | {o['seconds']:.0f} | {detail} |")
    for o in summary["steps"]:
        rows = o["figures"].get("rows") if isinstance(o["figures"], dict) else None
        if not rows:
            continue
        ratios = o["figures"].get("ratios_to_bare", {})
        lines += [
            "",
            f"## {o['name']}",
            "",
            "| run | batch | tokens/s | ratio to bare | MFU | padding | peak GiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
            pad = f"{r['padding_share']:.1%}" if r.get("padding_share") is not None else "n/a"
            ratio = ratios.get(f"{r['run']}@{r['batch']}", float("nan"))
            lines.append(
                f"| {r['run']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {ratio:.3f} | {mfu} | {pad} | {r['peak_gib']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def write_summary(out: str, summary: dict[str, Any]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(markdown(summary))


def download_commands(folder: str) -> list[list[str]]:
    """The commands ``--download`` runs: the wheels the GPU machine lacks, for CPython 3.12 manylinux
    x86_64, at this environment's versions; DeepSpeed (no wheel on the index, built without its ops) and
    this project built here."""
    target = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for platform in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64"):
        target += ["--platform", platform]
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    pins += [f"{name}=={version}" for name, version in EXTRA_WHEELS.items()]
    deepspeed = f"deepspeed=={importlib.metadata.version('deepspeed')}"
    return [
        [sys.executable, "-m", "pip", "download", "--no-deps", *target, "-d", folder, *pins],
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", folder, deepspeed],
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", folder, ROOT],
    ]


def download(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for command in download_commands(folder):
        subprocess.run(command, check=True, env={**os.environ, "DS_BUILD_OPS": "0"})


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-check", help="folder for summary.json, summary.md and the logs")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all steps together")
    parser.add_argument("--wheels", default=None, help="folder of wheels to install first (no network)")
    parser.add_argument(
        "--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}"
    )
    parser.add_argument("--require-gpu", action="store_true", help="exit 2 when no CUDA GPU is visible")
    parser.add_argument(
        "--download", metavar="DIR", default=None, help="download the wheels into DIR and exit"
    )
    opts = parser.parse_args(argv)
    unknown = [s for s in opts.steps.split(",") if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {', '.join(STEPS)}")
    if opts.budget <= 0:
        parser.error(f"--budget must be positive, got {opts.budget}")
    if opts.wheels and not os.path.isdir(opts.wheels):
        parser.error(f"--wheels {opts.wheels}: no such folder")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    if opts.download:
        download(opts.download)
        print(
            f"wheels in {opts.download}; on the GPU node: python scripts/gpu_check.py --wheels {opts.download}"
        )
        return 0
    start = time.monotonic()
    os.makedirs(opts.out, exist_ok=True)
    env = step_env(install_wheels(opts.wheels) if opts.wheels else None)
    gpu, device = cuda_available(env)
    steps = [STEPS[s] for s in opts.steps.split(",")]
    if not gpu:
        outcomes = [Outcome(s.name, "skipped", detail=f"no CUDA GPU visible ({device})") for s in steps]
    else:
        outcomes = []
        for step in steps:
            outcomes.append(run_step(step, opts.budget - (time.monotonic() - start), env, opts.out))
            print(
                f"{step.name}: {outcomes[-1].status} ({outcomes[-1].seconds:.0f} s) {outcomes[-1].detail}",
                flush=True,
            )
    note = (
        f"budget {opts.budget:.0f} s, used {time.monotonic() - start:.0f} s; wheels: {opts.wheels or 'none'}"
    )
    summary = {
        "device": device if gpu else "no GPU",
        "gpu": gpu,
        "note": note,
        "steps": [asdict(o) for o in outcomes],
    }
    write_summary(opts.out, summary)
    print(f"summary: {os.path.join(opts.out, 'summary.md')}")
    if any(o.status in ("failed", "timeout") for o in outcomes):
        return 1
    return 2 if (opts.require_gpu and not gpu) else 0


if __name__ == "__main__":
    sys.exit(main())
