"""Local runs: a pipeline under ``kfp.local`` in this environment (no cluster, no Docker), one stage in
this process, or the validate stage's checks on a pipeline config.

from distilflow.client.local import run_local
summary = run_local("quickstart", overrides=["sft.max_steps=10"])
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

from distilflow import uri as uris
from distilflow.client import _kfp_local
from distilflow.client.arguments import local_arguments
from distilflow.client.pipelines import pipeline_config
from distilflow.errors import DistilflowError


@dataclass
class RunSummary:
    """Where a local run put its results, and the headline numbers."""

    pipeline: str
    output_uri: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # the pipeline's own account (its summary_lines)

    def lines(self) -> list[str]:
        out = [f"pipeline {self.pipeline} finished; results under {self.output_uri}"]
        for stage, manifest in self.stages.items():
            result = manifest.get("result", {})
            shown = {k: v for k, v in {**manifest.get("counts", {}), **manifest.get("metrics", {})}.items()}
            for key in ("model_uri", "endpoint_url", "report_md", "report_uri"):
                if result.get(key):
                    shown[key] = result[key]
            text = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
            out.append(f"  {stage:<9} {manifest.get('uri', '')}  {text}")
        return out + self.notes


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def new_run_uri(name: str, runs_dir: str = "runs") -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return uris.join(runs_dir, f"{name}-{stamp}")


def run_local(
    name: str,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    output_uri: str | None = None,
    runs_dir: str = "runs",
) -> RunSummary:
    """Run a pipeline under ``kfp.local`` (SubprocessRunner, no venv, no Docker) in this environment."""
    from kfp import local

    from distilflow.pipelines import load_pipeline

    module = load_pipeline(name)
    arguments, rest = local_arguments(module.pipeline, overrides or [])
    config = pipeline_config(name, config_file, rest)
    output_uri = output_uri or config.pop("output_uri", None) or new_run_uri(name, runs_dir)
    config.pop("output_uri", None)
    run_dir = (
        uris.local_path(output_uri)
        if uris.is_local(output_uri)
        else uris.local_path(new_run_uri(name, runs_dir))
    )
    os.makedirs(run_dir, exist_ok=True)
    if hasattr(module, "prepare"):
        config = module.prepare(config, run_dir)
    if uris.is_local(output_uri):
        output_uri = run_dir
    # Stage images are only references here; SubprocessRunner runs them in this environment on purpose.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    _kfp_local.install()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(run_dir, "kfp"))
    try:
        module.pipeline(output_uri=output_uri, config=config, **arguments)
    except RuntimeError as exc:
        raise DistilflowError(f"pipeline {name!r} failed: {exc}; the failing task's log is above") from None
    summary = summarize(name, output_uri, module.STAGES)
    if hasattr(module, "summary_lines"):  # the pipeline's own account of the run (quickstart)
        summary.notes = module.summary_lines(summary.stages)
    return summary


def summarize(name: str, output_uri: str, stages: list[str]) -> RunSummary:
    """The manifests of a run's stage outputs: ``<output_uri>/<stage>`` for each stage, then any other
    finished stage output below ``output_uri`` (e.g. thoughty's ``no-thinking/evaluate``) on local disk."""
    summary = RunSummary(pipeline=name, output_uri=output_uri)
    for stage in stages:
        path = uris.join(output_uri, stage, "manifest.json")
        if uris.exists(path):
            summary.stages[stage] = json.loads(uris.read_text(path))
    if uris.is_local(output_uri):
        root = uris.local_path(output_uri)
        for folder, dirs, files in sorted(os.walk(root)):
            dirs[:] = sorted(d for d in dirs if d not in ("kfp", "checkpoints", "cache", "model"))
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            if "manifest.json" in files and "_COMPLETE" in files and rel not in summary.stages:
                with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
                    summary.stages[rel] = json.load(f)
    return summary


def run_stage(stage: str, config_file: str | None = None, overrides: list[str] | None = None):
    """Run one stage in this process (no KFP): its config from a file plus overrides."""
    from distilflow.components import load_config_class, load_run

    cls = load_config_class(stage)
    config = cls.load(config_file, overrides)
    return load_run(stage)(config)


def validate_config(name: str, config_file: str | None = None, overrides: list[str] | None = None):
    """Run the ``validate`` stage's checks on a pipeline config, without running anything else."""
    from distilflow.components.validate.config import ValidateConfig
    from distilflow.components.validate.run import run
    from distilflow.pipelines import load_pipeline

    module = load_pipeline(name)
    config = pipeline_config(name, config_file, overrides)
    output_uri = config.pop("output_uri", None)
    scratch = tempfile.mkdtemp(prefix="distilflow-validate-")
    if hasattr(module, "prepare"):
        config = module.prepare(config, scratch)
    return run(
        ValidateConfig(
            output_uri=os.path.join(scratch, "validate"),
            run_uri=output_uri or scratch,
            stages=list(module.STAGES),
            pipeline_config=config,
        )
    )
