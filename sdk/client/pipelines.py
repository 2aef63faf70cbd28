"""The pipelines as the client sees them: the registry, a pipeline's config (its defaults < a config
file < ``--set`` overrides, sections checked against its stages) and compiling one to KFP IR YAML."""

from __future__ import annotations

import os
from typing import Any

from distilflow.config import merge_layers, parse_overrides, read_config_file
from distilflow.errors import ConfigError

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
    default = getattr(module, "DEFAULT_CONFIG", None)
    config = merge_layers(
        read_config_file(module.data_file(default)) if default else {},
        read_config_file(config_file) if config_file else {},
        parse_overrides(overrides or []),
    )
    from distilflow.secrets import env_field_problems

    leaked = env_field_problems(config)
    if leaked:
        # refused here, before the config becomes a pipeline parameter, a KFP run or a file
        where = config_file or "--set"
        raise ConfigError(f"{where}: " + "\n  ".join([f"{len(leaked)} problem(s) in config:", *leaked]))
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
