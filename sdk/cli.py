"""The ``distilflow`` command line: thin over ``distilflow.client``.

Each command calls one SDK function, prints what it made and the next command to run, and on
failure prints a one-line reason and exits 1.
"""

from __future__ import annotations

import sys

import click

from distilflow import __version__
from distilflow.errors import DistilflowError


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.group()
@click.version_option(__version__, prog_name="distilflow")
def main() -> None:
    """distilflow: DistilQwen-style reasoning distillation as Kubeflow Pipelines."""


@main.command("pipelines")
def pipelines_cmd() -> None:
    """List the pipelines."""
    from distilflow.client import list_pipelines

    for name, text in list_pipelines().items():
        click.echo(f"{name:<14} {text}")


@main.command("run")
@click.argument("pipeline")
@click.option("--local", "local_", is_flag=True, help="Run here under kfp.local (no cluster, no Docker).")
@click.option("--host", default=None, help="KFP API endpoint to submit the run to instead.")
@click.option(
    "--config", "config_file", default=None, help="Pipeline config file (YAML/JSON), one section per stage."
)
@click.option("--set", "overrides", multiple=True, help="Override a config value: --set sft.max_steps=20")
@click.option("--output-uri", default=None, help="Where the run writes (default: runs/<pipeline>-<time>).")
@click.option("--runs-dir", default="runs", show_default=True, help="Parent folder of local runs.")
def run_cmd(pipeline, local_, host, config_file, overrides, output_uri, runs_dir) -> None:
    """Run PIPELINE locally (--local) or submit it to a KFP backend (--host)."""
    from distilflow import client

    try:
        if local_ == bool(host):
            raise DistilflowError("give exactly one of --local (run here) or --host URL (submit to KFP)")
        if local_:
            summary = client.run_local(pipeline, config_file, list(overrides), output_uri, runs_dir)
            click.echo("\n".join(summary.lines()))
        else:
            run_id = client.submit(pipeline, host, config_file, list(overrides), output_uri)
            click.echo(f"submitted run {run_id} to {host}")
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)


@main.command("compile")
@click.argument("pipeline")
@click.option("-o", "--output", required=True, help="Where to write the compiled pipeline YAML.")
def compile_cmd(pipeline, output) -> None:
    """Compile PIPELINE to a KFP pipeline spec (YAML) for upload."""
    from distilflow import client

    try:
        path = client.compile_pipeline(pipeline, output)
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    click.echo(f"wrote {path}\nnext: upload it in the KFP console, or: distilflow run {pipeline} --host URL")


@main.command("stage")
@click.argument("name")
@click.option("--config", "config_file", required=True, help="The stage's config file (YAML/JSON).")
@click.option("--set", "overrides", multiple=True, help="Override a config value: --set max_steps=20")
def stage_cmd(name, config_file, overrides) -> None:
    """Run one stage NAME in this process, without KFP."""
    from distilflow import client

    try:
        result = client.run_stage(name, config_file, list(overrides))
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    click.echo(result.model_dump_json(indent=2) if hasattr(result, "model_dump_json") else str(result))


@main.command("validate")
@click.argument("config_file")
@click.option("--pipeline", default="quickstart", show_default=True, help="The pipeline the config is for.")
@click.option("--set", "overrides", multiple=True, help="Override a config value: --set sft.max_steps=20")
def validate_cmd(config_file, pipeline, overrides) -> None:
    """Check a pipeline config file: every section, input file, model folder and endpoint."""
    from distilflow import client

    try:
        result = client.validate_config(pipeline, config_file, list(overrides))
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    for line in result.checked:
        click.echo(f"ok  {line}")
    click.echo(f"{config_file}: valid\nnext: distilflow run {pipeline} --local --config {config_file}")


if __name__ == "__main__":
    main()
