"""The Python SDK: list, configure, compile and run pipelines; run one stage without KFP.

from distilflow.client import run_local
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
from distilflow.config import deep_merge, parse_overrides, read_config_file
from distilflow.errors import ConfigError, DistilflowError

RESERVED_KEYS = ("output_uri",)


def list_pipelines() -> dict[str, str]:
    from distilflow.pipelines import PIPELINES

    return dict(PIPELINES)


def pipeline_config(
    name: str, config_file: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """The pipeline's default config < ``config_file`` < ``overrides``, with sections checked against its stages."""
    from distilflow.pipelines import load_pipeline

    module = load_pipeline(name)
    config = read_config_file(module.data_file(module.DEFAULT_CONFIG))
    if config_file:
        config = deep_merge(config, read_config_file(config_file))
    config = deep_merge(config, parse_overrides(overrides or []))
    unknown = sorted(set(config) - set(module.STAGES) - set(RESERVED_KEYS))
    if unknown:
        where = config_file or "--set"
        raise ConfigError(
            f"{where}: unknown section(s) {unknown} for pipeline {name!r}; sections are: {', '.join(module.STAGES)}"
        )
    return config


def compile_pipeline(name: str, package_path: str) -> str:
    """Compile a pipeline to a KFP IR YAML file and return its path."""
    from kfp import compiler

    from distilflow.pipelines import load_pipeline

    module = load_pipeline(name)
    os.makedirs(os.path.dirname(os.path.abspath(package_path)), exist_ok=True)
    compiler.Compiler().compile(pipeline_func=module.pipeline, package_path=package_path)
    return package_path


@dataclass
class RunSummary:
    """Where a local run put its results, and the headline numbers."""

    pipeline: str
    output_uri: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

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
        return out


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def new_run_uri(name: str, runs_dir: str = "runs") -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return uris.join(runs_dir, f"{name}-{stamp}")


def _keep_executor_args_intact() -> None:
    """Work around kfp 2.17's SubprocessRunner rewriting 'python3' inside executor arguments.

    ``replace_python_executable`` substitutes ``sys.executable`` for every 'python3' in the whole
    command line, including the executor input JSON, so a path such as
    ``.../lib/python3.11/site-packages/...`` or ``runs/python3-test`` reaches the component
    corrupted (kubeflow/pipelines PR #14459, open). Keep the substitution in the bootstrap
    commands only.
    """
    from kfp.local import subprocess_task_handler as handler

    original = handler.replace_python_executable
    if getattr(original, "_distilflow_patched", False):
        return

    def replace(full_command: list[str], new_executable: str) -> list[str]:
        replaced = original(full_command, new_executable)
        boundary = next(
            (
                i
                for i, el in enumerate(full_command)
                if '"$program_path/ephemeral_component.py"' in el and '"$@"' in el
            ),
            None,
        )
        if boundary is None:
            return replaced
        # The component source and every executor argument after it stay exactly as compiled.
        return replaced[: boundary + 1] + list(full_command[boundary + 1 :])

    replace._distilflow_patched = True  # type: ignore[attr-defined]
    handler.replace_python_executable = replace


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
    config = pipeline_config(name, config_file, overrides)
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
    _keep_executor_args_intact()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(run_dir, "kfp"))
    try:
        module.pipeline(output_uri=output_uri, config=config)
    except RuntimeError as exc:
        raise DistilflowError(f"pipeline {name!r} failed: {exc}; the failing task's log is above") from None
    return summarize(name, output_uri, module.STAGES)


def summarize(name: str, output_uri: str, stages: list[str]) -> RunSummary:
    summary = RunSummary(pipeline=name, output_uri=output_uri)
    for stage in stages:
        path = uris.join(output_uri, stage, "manifest.json")
        if uris.exists(path):
            summary.stages[stage] = json.loads(uris.read_text(path))
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


def submit(
    name: str,
    host: str,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    output_uri: str | None = None,
    experiment: str = "distilflow",
) -> str:
    """Compile and submit a pipeline run to a KFP backend; return the run id."""
    import kfp

    config = pipeline_config(name, config_file, overrides)
    output_uri = output_uri or config.pop("output_uri", None)
    config.pop("output_uri", None)
    if not output_uri or uris.is_local(output_uri):
        raise ConfigError(
            "submitting to a cluster needs output_uri in object storage, e.g. --output-uri s3://bucket/runs/r1"
        )
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(name, os.path.join(tmp, f"{name}.yaml"))
        client = kfp.Client(host=host)
        run = client.create_run_from_pipeline_package(
            package, arguments={"output_uri": output_uri, "config": config}, experiment_name=experiment
        )
    return run.run_id
