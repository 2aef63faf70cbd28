"""scripts/gpu_check.py on a CPU machine: arguments, the offline wheel install, the budget, the summary
(JSON + Markdown) and the skip without a GPU. The GPU run itself is what the script is for."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


BENCH_LINE = {
    "bench": "sft",
    "ratios_to_bare": {"stage@4": 0.97, "bare@4": 1.0},
    "rows": [
        {
            "run": "stage",
            "batch": 4,
            "tokens_per_s": 66500.0,
            "padding_share": 0.004,
            "peak_gib": 21.5,
            "mfu": 0.2,
        },
        {
            "run": "bare",
            "batch": 4,
            "tokens_per_s": 68600.0,
            "padding_share": 0.004,
            "peak_gib": 20.1,
            "mfu": None,
        },
    ],
}


def fake_steps(gpu_check, **commands):
    return {
        name: gpu_check.Step(name, command, 20, "tests" if name == "tests" else "bench")
        for name, command in commands.items()
    }


@pytest.mark.unit
def test_arguments_are_checked(gpu_check, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse(["--steps", "sft,train"])
    assert "unknown ['train']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse(["--budget", "0"])
    assert "--budget must be positive, got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse(["--wheels", str(tmp_path / "nowhere")])
    assert "no such folder" in capsys.readouterr().err
    opts = gpu_check.parse(["--steps", "sft,dpo", "--budget", "100"])
    assert opts.steps == "sft,dpo" and opts.budget == 100 and opts.out == "gpu-check"


@pytest.mark.unit
def test_wheel_install_and_download_commands(gpu_check, tmp_path):
    (tmp_path / "b-1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"")
    command = gpu_check.pip_target_command(str(tmp_path), "/x/site-packages")
    assert command[1:] == ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", "/x/site-packages",
                           str(tmp_path / "a-1.0-py3-none-any.whl"), str(tmp_path / "b-1.0-py3-none-any.whl")]  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no .whl file there; make them with --download"):
        gpu_check.pip_target_command(str(empty), "/x/site-packages")

    fetch, deepspeed, project = gpu_check.download_commands("/w")
    assert fetch[fetch.index("--python-version") + 1] == "3.12" and "manylinux_2_17_x86_64" in fetch
    assert "--no-deps" in fetch and "--only-binary=:all:" in fetch
    pins = dict(p.split("==") for p in fetch if "==" in p)
    assert pins["trl"] == importlib.metadata.version("trl") == "1.16.0"
    assert pins["datasets"] == importlib.metadata.version("datasets") and pins["liger-kernel"] == "0.8.5"
    assert {"pydantic", "pydantic-core", "dill", "multiprocess", "hjson", "peft", "fsspec"} <= set(pins)
    assert "torch" not in pins and "transformers" not in pins  # the GPU machine has its own CUDA builds
    assert (
        deepspeed[-1] == f"deepspeed=={importlib.metadata.version('deepspeed')}"
        and "--no-build-isolation" in deepspeed
    )
    assert project[-1] == ROOT


@pytest.mark.unit
def test_step_env_puts_the_wheels_first(gpu_check):
    env = gpu_check.step_env("/t/site-packages", {"PYTHONPATH": "/mine", "PATH": "/bin"})
    assert env["PYTHONPATH"].split(os.pathsep) == ["/t/site-packages", ROOT, "/mine"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == "/bin"
    assert gpu_check.step_env(None, {})["PYTHONPATH"] == ROOT


@pytest.mark.unit
def test_figures_of_tests_and_benches(gpu_check):
    out = "....\n=== 3 passed, 1 skipped, 40 deselected in 12.1s ==="
    assert gpu_check.figures_of("tests", out) == {"passed": 3, "skipped": 1, "deselected": 40}
    assert gpu_check.figures_of("bench", "table\n" + json.dumps(BENCH_LINE) + "\n") == BENCH_LINE
    assert gpu_check.figures_of("bench", "crashed\n") == {}


@pytest.mark.unit
def test_run_step_outcomes_and_budget(gpu_check, tmp_path):
    ok = gpu_check.Step(
        "sft", python(f"print('table'); print({json.dumps(json.dumps(BENCH_LINE))})"), 20, "bench"
    )
    got = gpu_check.run_step(ok, 100, dict(os.environ), str(tmp_path))
    assert got.status == "passed" and got.figures == BENCH_LINE
    assert "print('table')" in (tmp_path / "sft.log").read_text()
    bad = gpu_check.Step("dpo", python("import sys; print('boom'); sys.exit(3)"), 20, "bench")
    got = gpu_check.run_step(bad, 100, dict(os.environ), str(tmp_path))
    assert got.status == "failed" and got.detail == "exit 3: boom"
    slow = gpu_check.Step(
        "reward", python("import time; print('started', flush=True); time.sleep(30)"), 1, "bench"
    )
    got = gpu_check.run_step(slow, 100, dict(os.environ), str(tmp_path))
    assert got.status == "timeout" and got.seconds < 10 and got.detail == "stopped after 1 s"
    got = gpu_check.run_step(ok, gpu_check.MIN_STEP_S - 1, dict(os.environ), str(tmp_path))
    assert got.status == "skipped" and "budget" in got.detail


def test_without_a_gpu_every_step_is_skipped(gpu_check, tmp_path):
    """Here torch sees no CUDA GPU: the real probe says so, nothing runs, the summary tells why."""
    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gpu"] is False and [s["name"] for s in summary["steps"]] == [
        "tests",
        "sft",
        "dpo",
        "reward",
    ]
    assert {s["status"] for s in summary["steps"]} == {"skipped"}
    assert "no CUDA GPU visible" in summary["steps"][0]["detail"]
    assert "| sft | skipped |" in (out / "summary.md").read_text()
    assert gpu_check.main(["--out", str(out), "--require-gpu"]) == 2


def make_wheel(folder, name: str = "gpucheckprobe", version: str = "1.0") -> str:
    """A minimal valid pure-Python wheel: one module saying where it was installed."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "import os\nWHERE = os.path.dirname(__file__)\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as whl:
        for file, text in files.items():
            whl.writestr(file, text)
        whl.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


def test_offline_wheels_reach_every_step_and_the_summary_has_the_figures(gpu_check, tmp_path, monkeypatch):
    """--wheels: a wheel installed with no index into a fresh site-packages is importable in each step;
    with a (faked) GPU the steps run in order, the bench table lands in summary.md, a failed step makes
    the exit status 1."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(str(wheels))
    monkeypatch.setattr(gpu_check, "cuda_available", lambda env: (True, "Fake H200"))
    probe = (
        "import gpucheckprobe, json; print('at', gpucheckprobe.WHERE); print("
        + json.dumps(json.dumps(BENCH_LINE))
        + ")"
    )
    monkeypatch.setattr(gpu_check, "STEPS", fake_steps(
        gpu_check, tests=python("print('2 passed, 1 skipped in 1.0s')"), sft=python(probe), dpo=python("raise SystemExit(4)")
    ))  # fmt: skip
    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out), "--wheels", str(wheels), "--steps", "tests,sft,dpo"]) == 1
    log = (out / "sft.log").read_text()
    assert f"{os.sep}site-packages{os.sep}gpucheckprobe" in log
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("tests", "passed"),
        ("sft", "passed"),
        ("dpo", "failed"),
    ]
    assert summary["steps"][0]["figures"] == {"passed": 2, "skipped": 1} and summary["device"] == "Fake H200"
    page = (out / "summary.md").read_text()
    assert "| stage | 4 | 66,500 | 0.970 | 20.0% | 0.4% | 21.5 |" in page
    assert "| bare | 4 | 68,600 | 1.000 | n/a | 0.4% | 20.1 |" in page
