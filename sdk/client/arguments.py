"""Argument handling: ``--set`` items and a config file as a pipeline's typed parameters, for a local
run (``local_arguments``) or a run on a KFP backend (``run_arguments``)."""

from __future__ import annotations

import json
from typing import Any

from distilflow import uri as uris
from distilflow.client.pipelines import pipeline_config
from distilflow.config import deep_merge, merge_layers, parse_overrides, read_config_file
from distilflow.errors import ConfigError

CONFIG_PARAMETERS = ("config", "overrides")
"""Pipeline parameters that take the stage sections: ``--set sft.max_steps=3`` lands in the first present."""


_PARAMETER_TYPES = {
    "String": "STRING",
    "Integer": "NUMBER_INTEGER",
    "Float": "NUMBER_DOUBLE",
    "Boolean": "BOOLEAN",
    "Dict": "STRUCT",
    "List": "LIST",
}


def local_arguments(pipeline: Any, overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``--set`` items for a local run: ``NAME=VALUE`` where NAME is a top-level pipeline parameter
    (``preset``, ``gpu_count``, ...) becomes a typed argument; the rest stay config overrides."""
    inputs = dict(pipeline.component_spec.inputs or {})
    names = set(inputs) - {"config", "output_uri"}
    arguments: dict[str, Any] = {}
    rest = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if sep and key in names:
            ptype = _PARAMETER_TYPES.get(str(inputs[key].type), "STRING")
            arguments[key] = _coerce(key, {"parameterType": ptype}, raw)
        else:
            rest.append(item)
    return arguments, rest


def pipeline_spec_doc(package_or_spec: str | dict) -> dict[str, Any]:
    """The PipelineSpec of a compiled package (path) or of an uploaded version's ``pipeline_spec``."""
    if isinstance(package_or_spec, dict):
        spec = package_or_spec
    else:
        import yaml

        with open(package_or_spec, encoding="utf-8") as f:
            spec = next(d for d in yaml.safe_load_all(f) if d)
    return spec.get("pipeline_spec", spec) if "pipelineInfo" not in spec else spec


def pipeline_parameters(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The root input parameters of a PipelineSpec: name -> {parameterType, defaultValue?, description?}."""
    return dict(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))


def _coerce(name: str, spec: dict[str, Any], raw: str) -> Any:
    """A ``--set name=raw`` value as the parameter's type wants it."""
    import yaml

    from distilflow.config import load_yaml

    ptype = spec.get("parameterType", "STRING")
    if ptype == "STRING":
        return raw
    try:
        if ptype == "NUMBER_INTEGER":
            return int(raw)
        if ptype == "NUMBER_DOUBLE":
            return float(raw)
        if ptype == "BOOLEAN":
            value = load_yaml(raw)
            if isinstance(value, bool):
                return value
        elif ptype in ("STRUCT", "LIST"):
            value = load_yaml(raw)
            if isinstance(value, dict if ptype == "STRUCT" else list):
                return value
    except (ValueError, yaml.YAMLError):
        pass
    kind = {"NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number", "BOOLEAN": "true or false"}.get(
        ptype, "a JSON object" if ptype == "STRUCT" else "a JSON list"
    )
    raise ConfigError(f"--set {name}={raw}: parameter {name!r} takes {kind}")


def run_arguments(
    name: str,
    parameters: dict[str, dict[str, Any]],
    config_file: str | None = None,
    overrides: list[str] | None = None,
    output_uri: str | None = None,
) -> dict[str, Any]:
    """The run's parameter values for a pipeline with these root ``parameters``.

    ``--set KEY=VALUE`` whose first segment names a pipeline parameter sets that parameter (typed as
    the spec says; ``--set PARAM.a.b=v`` sets inside a struct parameter). Every other key, and the
    config file, go into the pipeline's ``config`` parameter (merged over the pipeline's default
    config, sections checked) or ``overrides`` parameter (only what was given; a JSON string when
    the parameter is a string). ``output_uri`` must be in object storage.
    """
    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sft.max_steps=20")
    config_param = next((p for p in CONFIG_PARAMETERS if p in parameters), None)
    direct = [i for i in overrides if i.split("=", 1)[0].split(".")[0] in set(parameters) - {config_param}]
    rest = [i for i in overrides if i not in direct]
    listed = ", ".join(parameters) or "none"
    args: dict[str, Any] = {}
    config_output = None
    if config_param:
        if config_param == "config":
            config = pipeline_config(name, config_file, rest)
        else:
            config = merge_layers(read_config_file(config_file) if config_file else {}, parse_overrides(rest))
        config_output = config.pop("output_uri", None)
        if config or config_param == "config":
            string = parameters[config_param].get("parameterType") == "STRING"
            args[config_param] = json.dumps(config) if string else config
    elif rest or config_file:
        what = ", ".join(f"--set {i.split('=', 1)[0]}" for i in rest) or f"--config {config_file}"
        raise ConfigError(f"pipeline {name!r} has no parameter for {what}; its parameters are: {listed}")
    for item in direct:
        key, raw = item.split("=", 1)
        top, _, sub = key.partition(".")
        spec = parameters[top]
        if not sub:
            args[top] = _coerce(top, spec, raw)
        elif spec.get("parameterType") == "STRUCT":
            base = args.get(top, spec.get("defaultValue") or {})
            args[top] = deep_merge(base, parse_overrides([f"{sub}={raw}"]))
        else:
            raise ConfigError(
                f"--set {key}: parameter {top!r} is a {spec.get('parameterType')}, not a struct"
            )
    if "output_uri" in parameters:
        out = output_uri or args.get("output_uri") or config_output
        out = out or parameters["output_uri"].get("defaultValue")
        if not out or uris.is_local(out):
            raise ConfigError(
                "submitting to a cluster needs output_uri in object storage, e.g. --output-uri s3://bucket/runs/r1"
                + (f" (got {out!r})" if out else "")
            )
        args["output_uri"] = out
    elif output_uri:
        raise ConfigError(f"pipeline {name!r} has no output_uri parameter; its parameters are: {listed}")
    missing = [
        p
        for p, s in parameters.items()
        if p not in args and "defaultValue" not in s and not s.get("isOptional")
    ]
    if missing:
        raise ConfigError(f"pipeline {name!r} needs {', '.join(missing)}; give them with --set NAME=VALUE")
    return args
