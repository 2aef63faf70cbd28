"""How a recipe's console parameters become the pipeline config every stage reads.

Precedence, lowest first:

1. the recipe's defaults (``pipelines/<recipe>.yaml``),
2. the preset for the student size (``pipelines/presets/<preset>.yaml``),
3. the top-level parameters (teacher endpoint and model, student model, problems URI), where given,
4. ``config``: a whole config dict, as the SDK and CLI pass it (file < ``--set``),
5. ``overrides``: one JSON object for everything else, as typed in the KFP console.

The recipe defaults and the presets never set the same key (a test checks it), so a preset is not
undone by the recipe defaults the SDK folds into ``config``. Sections for stages the recipe does not
run are dropped, so one preset serves every recipe. Plain functions (no KFP): the ``configure``
component calls :func:`resolve_config` inside its image; tests call it directly.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from distilflow.config import load_yaml, merge_layers
from distilflow.errors import ConfigError

PRESETS = ("1.5b-1node", "7b-1node", "32b-4nodes")
"""Student-size presets shipped in ``pipelines/presets/``."""

SWITCHES: dict[str, tuple[str, ...]] = {
    "with_dpo": ("dpo",),
    "with_rl": ("reward", "rl"),
    "with_deploy": ("deploy",),
}
"""``lifecycle``'s switches and the stages each one turns off when false."""

TEACHER_KEY_ENV = "TEACHER_API_KEY"
"""Environment variable holding the teacher's key inside a step; filled from the Secret named by the
``teacher_key_secret`` parameter (its key ``api-key``)."""

TEACHER_KEY_SECRET_KEY = "api-key"
"""Key inside the teacher's Kubernetes Secret that holds the API key."""


TEACHER_GENERATION: dict[str, Any] = {
    "max_new_tokens": 16384,
    "temperature": 0.6,
    "concurrency": 32,
    "timeout_s": 1200,
}
"""Generation settings of a teacher named by the top-level parameters: long chains of thought
(DistilQwen2.5-R1 sampled up to 16k tokens); ``overrides`` can change any of them."""


def _read_yaml(*parts: str) -> dict[str, Any]:
    path = resources.files("distilflow.pipelines").joinpath(*parts)
    data = load_yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"pipelines/{'/'.join(parts)}: expected a mapping, got {type(data).__name__}")
    return data


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """The recipe's default config (``pipelines/<recipe>.yaml``)."""
    return _read_yaml(f"{recipe}.yaml")


def load_preset(name: str) -> dict[str, Any]:
    """A student-size preset (``pipelines/presets/<name>.yaml``); ``""`` is no preset."""
    if not name:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is not one of {', '.join(PRESETS)} (or empty for none)")
    return _read_yaml("presets", f"{name}.yaml")


def parse_overrides_json(text: str) -> dict[str, Any]:
    """The ``overrides`` parameter: a JSON object of config sections, e.g. ``{"sft": {"max_steps": 100}}``."""
    if not text or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"overrides: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
            'expected an object such as {"sft": {"max_steps": 100}}'
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"overrides: expected a JSON object of config sections, got {type(data).__name__}")
    return data


def parameter_config(
    teacher_base_url: str = "",
    teacher_model: str = "",
    student_model: str = "",
    problems_uri: str = "",
    corpus_uri: str = "",
) -> dict[str, Any]:
    """The config the top-level parameters stand for; empty parameters set nothing.

    ``teacher_model`` may list several comma-separated models served at ``teacher_base_url``: one
    teacher each, sharing the problems equally (multi-teacher distillation). The judge (and CRV
    rewriter) is the first of them. ``student_model`` is the student to train (and, in recipes with a
    reward model, the model the reward model starts from).
    ``corpus_uri`` (thoughtx, thoughty) names a corpus already scored, in OmniThought's layout: curate
    selects from it (``curate.corpus``, preset ``omnithought``; ``overrides`` can give another layout)
    and no judge is configured, since none is called.
    """
    out: dict[str, Any] = {}
    models = [m.strip() for m in teacher_model.split(",") if m.strip()]
    if teacher_base_url and not models:
        raise ConfigError(
            "teacher_base_url is set but teacher_model is empty; name the model the endpoint serves"
        )
    if models:
        endpoint: dict[str, Any] = {"backend": "openai", "api_key_env": TEACHER_KEY_ENV}
        if teacher_base_url:
            endpoint["base_url"] = teacher_base_url
        teachers = [{**endpoint, **TEACHER_GENERATION, "model": m} for m in models]
        out["distill"] = {"teacher": teachers[0]} if len(teachers) == 1 else {"teachers": teachers}
        if not corpus_uri:
            out["curate"] = {"judge": {**endpoint, "model": models[0]}}
    if corpus_uri:
        out["curate"] = {"corpus": {"uri": corpus_uri, "preset": "omnithought"}}
    if problems_uri:
        out.setdefault("distill", {})["problems_uri"] = problems_uri
        out["rl"] = {"problems_uri": problems_uri}
    if student_model:
        out["sft"] = {"model": student_model}
        out["reward"] = {"model": student_model}
    return out


def resolve_config(
    recipe: str,
    stages: list[str] | tuple[str, ...],
    preset: str = "",
    config: dict[str, Any] | None = None,
    overrides: str = "",
    teacher_base_url: str = "",
    teacher_model: str = "",
    student_model: str = "",
    problems_uri: str = "",
    corpus_uri: str = "",
) -> dict[str, Any]:
    """The whole pipeline config of one run (see the module docstring for the precedence)."""
    layers = [
        recipe_defaults(recipe),
        load_preset(preset),
        parameter_config(teacher_base_url, teacher_model, student_model, problems_uri, corpus_uri),
        config or {},
        parse_overrides_json(overrides),
    ]
    merged = merge_layers(*layers, replace=_drop_replaced_models)
    from distilflow.components import STAGES as ALL_STAGES

    unknown = sorted(k for k in merged if k not in ALL_STAGES)
    if unknown:
        raise ConfigError(
            f"config: unknown section(s) {unknown}; sections are stage names: {', '.join(stages)}"
        )
    return {k: v for k, v in merged.items() if k in stages}


TRACKED_STAGES = ("sft", "dpo", "reward", "rl", "evaluate")
"""Stages with a ``tracking`` block (distilflow.tracking)."""


def with_pipeline_run(resolved: dict[str, Any], pipeline_run: str) -> dict[str, Any]:
    """``resolved`` with ``tracking.pipeline_run`` set (unless given) in every stage that tracks its run,
    so the runs of one pipeline run are named ``<pipeline run>/<stage>``. It is left out of the stages'
    fingerprints: a rerun under another pipeline run still resumes."""
    if not pipeline_run:
        return resolved
    out = dict(resolved)
    for stage in TRACKED_STAGES:
        section = out.get(stage)
        tracking = section.get("tracking") if isinstance(section, dict) else None
        if isinstance(tracking, dict) and tracking.get("backend", "none") != "none":
            out[stage] = {**section, "tracking": {"pipeline_run": pipeline_run, **tracking}}
    return out


def running_stages(stages: list[str] | tuple[str, ...], corpus_uri: str = "", **switches: bool) -> list[str]:
    """The stages a run executes: ``stages`` less those a false switch (``SWITCHES``) turns off, and
    less distill when curate starts from a scored corpus, so validate and the config skip what will
    not run."""
    unknown = sorted(set(switches) - set(SWITCHES))
    if unknown:
        raise ConfigError(f"unknown switch(es) {unknown}; switches are {', '.join(SWITCHES)}")
    off = {stage for name, on in switches.items() if not on for stage in SWITCHES[name]}
    off |= {"distill"} if corpus_uri else set()
    return [stage for stage in stages if stage not in off]


def pod_gpus(resolved: dict[str, Any], stage: str, gpu_count: int) -> int:
    """GPUs the pod of training ``stage`` requests: ``gpu_count`` when it trains in its pod, none when
    its ``launcher`` (trainjob, dlc) only submits and follows a job whose nodes request their own GPUs,
    so the follower never holds GPUs the job may be waiting for."""
    section = resolved.get(stage)
    launcher = section.get("launcher", "local") if isinstance(section, dict) else "local"
    return gpu_count if launcher == "local" else 0


def _drop_replaced_models(merged: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """A model setting that names its ``model`` (or a ``teachers`` list) replaces the one below it
    instead of merging into it: a local transformers teacher does not inherit an endpoint's
    ``base_url``. Settings without ``model`` (e.g. ``{"teacher": {"max_new_tokens": 4096}}``) merge."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in merged.items()}
    distill = (layer.get("distill") or {}) if isinstance(layer.get("distill"), dict) else {}
    below = out.get("distill") if isinstance(out.get("distill"), dict) else {}
    if isinstance(distill.get("teacher"), dict) and "model" in distill["teacher"]:
        below.pop("teacher", None)
        below.pop("teachers", None)
        below.pop("shares", None)
    if distill.get("teachers"):
        below.pop("teacher", None)
    for section, key in (("curate", "judge"), ("curate", "crv_rewriter")):
        value = (layer.get(section) or {}).get(key) if isinstance(layer.get(section), dict) else None
        if isinstance(value, dict) and "model" in value and isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out
