"""Importing the SDK (every package: client, teachers and their backends, training, launch), the
components and pipelines, compiling every pipeline and the CLI's help must not load torch,
transformers, trl, vllm or deepspeed (they live in the stage images), nor mlflow, tensorboard, wandb,
pyarrow or huggingface_hub (loaded when a stage tracks its run or reads Parquet or hf://)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "trl", "vllm", "deepspeed", "peft", "accelerate", "datasets")
# tracking (issue 20): mlflow (and its sqlalchemy, pandas), tensorboard and wandb load only in a tracked stage
HEAVY += ("mlflow", "tensorboard", "wandb", "pyarrow", "huggingface_hub")

SCRIPT = """
import sys, tempfile, os
import distilflow, distilflow.client.cli, distilflow.client.local, distilflow.client.remote, distilflow.records, distilflow.models
import distilflow.teachers.openai, distilflow.teachers.transformers, distilflow.teachers.vllm, distilflow.teachers.cached
import distilflow.training.fields, distilflow.training.data, distilflow.training.arguments, distilflow.training.callbacks
import distilflow.training.checkpointing, distilflow.training.report, distilflow.training.save
import distilflow.launch.torchrun, distilflow.launch.trainjob, distilflow.launch.dlc
import distilflow.tracking, distilflow.sources, distilflow.components.evaluate.registry
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
