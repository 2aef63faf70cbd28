"""Importing the SDK, components and pipelines, compiling every pipeline and the CLI's help
must not load torch, transformers, trl, vllm or deepspeed (they live in the stage images)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "trl", "vllm", "deepspeed", "peft", "accelerate", "datasets")

SCRIPT = """
import sys, tempfile, os
import distilflow, distilflow.client, distilflow.client.cli, distilflow.teachers, distilflow.teachers.openai, distilflow.teachers.transformers, distilflow.teachers.vllm, distilflow.records, distilflow.models
from distilflow.components import STAGES, load_component, load_config_class
from distilflow.pipelines import PIPELINES
from distilflow.client.pipelines import compile_pipeline
for stage in STAGES:
    load_config_class(stage)
    load_component(stage)
with tempfile.TemporaryDirectory() as tmp:
    for name in PIPELINES:
        compile_pipeline(name, os.path.join(tmp, name + ".yaml"))
from click.testing import CliRunner
assert CliRunner().invoke(distilflow.client.cli.main, ["--help"]).exit_code == 0
heavy = [m for m in %r if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
"""


def test_no_heavy_imports():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT % (HEAVY,)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY=")][-1]
    assert line == "HEAVY=", f"heavy modules imported by the SDK/components/pipelines: {line[6:]}"
