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
from distilflow.config import merge_layers, parse_overrides, read_config_file
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


@dataclass
class Validation:
    """What ``validate_config`` checked, and the defaults it filled into the user's config."""

    pipeline: str
    checked: list[str]
    filled: list[str]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def validate_config(
    name: str, config_file: str | None = None, overrides: list[str] | None = None
) -> Validation:
    """The ``validate`` stage's checks on a pipeline config, writing nothing and building nothing.

    It validates what the user wrote merged with the pipeline's defaults, and lists each default it
    filled in (``Validation.filled``): a section left out entirely is named as running on defaults.
    Only the quickstart fills in models (SmolLM2 teacher and judge, a tiny student named, not built).
    """
    from distilflow.components.validate.config import ValidateConfig
    from distilflow.components.validate.run import check_all
    from distilflow.pipelines import load_pipeline

    module = load_pipeline(name)
    config = pipeline_config(name, config_file, overrides)
    user = merge_layers(
        read_config_file(config_file) if config_file else {}, parse_overrides(overrides or [])
    )
    output_uri = config.pop("output_uri", None)
    run_dir = os.path.join(tempfile.gettempdir(), "distilflow-validate")  # named, never written
    pending, before = [], config
    if hasattr(module, "prepare"):
        config = module.prepare(config, run_dir, build=False)
        pending = [
            (section, key, value)
            for section, body in config.items()
            if isinstance(body, dict)
            for key, value in body.items()
            if key not in (before.get(section) or {})
        ]
    checked, configs = check_all(
        ValidateConfig(
            output_uri=os.path.join(run_dir, "validate"),
            run_uri=output_uri or run_dir,
            stages=list(module.STAGES),
            pipeline_config=config,
            pending_models=sorted(_models_in(config) - _models_in(before)),
        )
    )
    made = {f"{s}.{k}": getattr(module, "STUDENT", v) if k == "model" else v for s, k, v in pending}
    filled = defaults_filled(user, config, list(module.STAGES), getattr(module, "DEFAULT_CONFIG", None), made)
    return Validation(pipeline=name, checked=checked, filled=filled, configs=configs)


def _models_in(tree: Any) -> set[str]:
    """Every value of a ``model`` key anywhere in a config (sections, lists such as evaluate.models)."""
    if isinstance(tree, list):
        return set().union(*(_models_in(v) for v in tree)) if tree else set()
    if not isinstance(tree, dict):
        return set()
    found = {tree["model"]} if isinstance(tree.get("model"), str) else set()
    return found.union(*(_models_in(v) for v in tree.values()))


def _brief(value: Any) -> str:
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_brief(v)}" for k, v in value.items()) + "}"
    else:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 70 else text[:67] + "..."


def defaults_filled(
    user: dict[str, Any],
    final: dict[str, Any],
    stages: list[str],
    default_file: str | None,
    made: dict[str, str] | None = None,
) -> list[str]:
    """``path = value (source)`` for each value of ``final`` that the user's config does not set; a stage
    section the user left out is one line saying it runs on defaults. ``made`` names what a local run
    fills in itself (the quickstart's problems and student), by dotted path."""
    made = made or {}
    source = f"default of the pipeline, {default_file}" if default_file else "default of the pipeline"
    lines = []
    for stage in stages:
        if stage == "validate":
            continue
        theirs = final.get(stage) or {}
        if user.get(stage):
            lines.extend(_filled(user[stage], theirs, f"{stage}.", source, made))
            continue
        shown = ", ".join(f"{k}={_brief(made.get(f'{stage}.{k}', v))}" for k, v in theirs.items())
        lines.append(
            f"{stage}: not in your config; runs on "
            + (
                f"the pipeline's defaults ({shown}) and the stage's own"
                if shown
                else "the stage's own defaults"
            )
        )
    return lines


def _filled(mine: dict, theirs: dict, prefix: str, source: str, made: dict[str, str]) -> list[str]:
    lines = []
    for key, value in theirs.items():
        path = prefix + key
        if key not in mine:
            lines.append(
                f"{path} = {made[path]} (local run)"
                if path in made
                else f"{path} = {_brief(value)} ({source})"
            )
        elif isinstance(value, dict) and isinstance(mine[key], dict):
            lines.extend(_filled(mine[key], value, path + ".", source, made))
    return lines
