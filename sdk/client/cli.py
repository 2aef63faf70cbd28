"""The ``distilflow`` command line: thin over the rest of ``distilflow.client``.

Each command calls one SDK function, prints what it made and the next command to run, and on
failure prints a one-line reason and exits 1.
"""

from __future__ import annotations

import sys

import click

from distilflow import __version__
from distilflow.errors import DistilflowError


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def _fail(exc: Exception) -> None:
    """One line and exit 1; with ``--debug`` the traceback instead."""
    if _debug():
        raise exc
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


class _Main(click.Group):
    """The command group: an error no command expected (a bug, a library's own exception) is one line
    and exit 1 as well, with a pointer to ``--debug``, which shows the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            what = "" if isinstance(exc, DistilflowError) else f"{type(exc).__name__}: "
            hint = "" if isinstance(exc, DistilflowError) else " (distilflow --debug ... shows the traceback)"
            click.echo(f"error: {what}{exc}{hint}", err=True)
            sys.exit(1)


@click.group(cls=_Main)
@click.version_option(__version__, prog_name="distilflow")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of its one line.")
def main(debug: bool) -> None:
    """distilflow: DistilQwen-style reasoning distillation as Kubeflow Pipelines."""


@main.command("pipelines")
def pipelines_cmd() -> None:
    """List the pipelines."""
    from distilflow.client.pipelines import list_pipelines

    for name, text in list_pipelines().items():
        click.echo(f"{name:<14} {text}")


def kfp_options(command):
    """--host, --token-file and --namespace: how to reach and authenticate to the KFP API."""
    options = [
        click.option(
            "--host",
            envvar="KF_PIPELINES_ENDPOINT",
            default=None,
            help="KFP API endpoint, e.g. https://kfp.example.com/pipeline (or $KF_PIPELINES_ENDPOINT).",
        ),
        click.option(
            "--token-file",
            default=None,
            help="File holding a bearer token for the KFP API (e.g. a projected service-account token). "
            "Without it: $DISTILFLOW_KFP_TOKEN, $KFP_BEARER_TOKEN, then the file named by "
            "$DISTILFLOW_KFP_TOKEN_FILE or $KF_PIPELINES_SA_TOKEN_PATH.",
        ),
        click.option("--namespace", default=None, help="Namespace (profile) of a multi-user KFP deployment."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _client(host, token_file, namespace):
    from distilflow.client.remote import Client

    return Client(host, token_file=token_file, namespace=namespace)


def _wait(client, run_id, timeout, poll_interval) -> None:
    status = client.wait(run_id, timeout=timeout, poll_interval=poll_interval, echo=click.echo)
    click.echo("\n".join(status.lines()))
    if not status.succeeded:
        sys.exit(1)


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
    """Run PIPELINE locally (--local) or submit it to a KFP backend (--host; see also `submit`)."""
    from distilflow.client import local, remote

    try:
        if local_ == bool(host):
            raise DistilflowError("give exactly one of --local (run here) or --host URL (submit to KFP)")
        if local_:
            summary = local.run_local(pipeline, config_file, list(overrides), output_uri, runs_dir)
            click.echo("\n".join(summary.lines()))
        else:
            run_id = remote.submit(pipeline, host, config_file, list(overrides), output_uri)
            click.echo(f"submitted run {run_id} to {host}")
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)


@main.command("upload")
@click.argument("pipeline")
@kfp_options
@click.option(
    "--version",
    default=None,
    help="Name of the version to upload (default: v<package version>-<spec hash>, and an unchanged spec "
    "is not uploaded twice). A new pipeline's first version is named after the pipeline.",
)
@click.option("--description", default=None, help="Shown in the console (default: the pipeline's summary).")
def upload_cmd(pipeline, host, token_file, namespace, version, description) -> None:
    """Compile PIPELINE and upload it to a KFP backend, or a new version of it."""
    try:
        uploaded = _client(host, token_file, namespace).upload(pipeline, version, description)
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    click.echo("\n".join(uploaded.lines()))
    version_flag = f" --version {uploaded.version_name}" if uploaded.version_name else ""
    click.echo(
        f"next: run it from the console, or: distilflow submit {pipeline} --host {host}{version_flag} "
        "--set output_uri=s3://BUCKET/runs/r1"
    )


@main.command("submit")
@click.argument("pipeline")
@kfp_options
@click.option(
    "--set",
    "overrides",
    multiple=True,
    help="A pipeline parameter (--set output_uri=s3://b/r1) or a config value (--set sft.max_steps=20).",
)
@click.option("--config", "config_file", default=None, help="Config file (YAML/JSON), one section per stage.")
@click.option(
    "--output-uri", default=None, help="Where the run writes: object storage (s3://, oss://, gs://)."
)
@click.option(
    "--experiment", default="distilflow", show_default=True, help="Experiment of the run (made if missing)."
)
@click.option("--run-name", default=None, help="Display name of the run (default: PIPELINE and the time).")
@click.option(
    "--version", default=None, help="Run this uploaded version instead of compiling the installed pipeline."
)
@click.option("--wait", "wait_", is_flag=True, help="Follow the run to its end; exit 1 unless it succeeds.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option(
    "--poll-interval", type=float, default=10.0, show_default=True, help="With --wait: seconds between polls."
)
def submit_cmd(
    pipeline,
    host,
    token_file,
    namespace,
    overrides,
    config_file,
    output_uri,
    experiment,
    run_name,
    version,
    wait_,
    timeout,
    poll_interval,
) -> None:
    """Submit a run of PIPELINE to a KFP backend."""
    try:
        client = _client(host, token_file, namespace)
        status = client.submit(
            pipeline, config_file, list(overrides), output_uri, experiment, run_name, version
        )
        click.echo(f"submitted run {status.run_id} ({status.state}): {status.url}")
        if wait_:
            _wait(client, status.run_id, timeout, poll_interval)
        else:
            click.echo(f"next: distilflow status {status.run_id} --host {client.host} --wait")
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)


@main.command("status")
@click.argument("run_id")
@kfp_options
@click.option("--wait", "wait_", is_flag=True, help="Follow the run to its end; exit 1 unless it succeeds.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option(
    "--poll-interval", type=float, default=10.0, show_default=True, help="With --wait: seconds between polls."
)
def status_cmd(run_id, host, token_file, namespace, wait_, timeout, poll_interval) -> None:
    """Show the state of run RUN_ID (exit 1 when it failed)."""
    try:
        client = _client(host, token_file, namespace)
        if wait_:
            _wait(client, run_id, timeout, poll_interval)
            return
        status = client.status(run_id)
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    click.echo("\n".join(status.lines()))
    if status.done and not status.succeeded:
        sys.exit(1)


@main.command("compile")
@click.argument("pipeline")
@click.option("-o", "--output", required=True, help="Where to write the compiled pipeline YAML.")
def compile_cmd(pipeline, output) -> None:
    """Compile PIPELINE to a KFP pipeline spec (YAML) for upload."""
    from distilflow.client.pipelines import compile_pipeline

    try:
        path = compile_pipeline(pipeline, output)
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    click.echo(
        f"wrote {path}\nnext: upload it in the KFP console, or: distilflow upload {pipeline} --host URL"
    )


@main.command("stage")
@click.argument("name")
@click.option("--config", "config_file", required=True, help="The stage's config file (YAML/JSON).")
@click.option("--set", "overrides", multiple=True, help="Override a config value: --set max_steps=20")
def stage_cmd(name, config_file, overrides) -> None:
    """Run one stage NAME in this process, without KFP."""
    from distilflow.client.local import run_stage

    try:
        result = run_stage(name, config_file, list(overrides))
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    click.echo(result.model_dump_json(indent=2) if hasattr(result, "model_dump_json") else str(result))


@main.command("stop")
@click.argument("output_uri")
def stop_cmd(output_uri) -> None:
    """Stop the local server a deploy with keep_running left at OUTPUT_URI (deploy's or the run's folder)."""
    from distilflow.components.deploy.pidfile import stop_server

    try:
        stopped = stop_server(output_uri)
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    click.echo(stopped.line())


@main.command("validate")
@click.argument("config_file")
@click.option("--pipeline", default=None, help="The pipeline the config is for (default: quickstart).")
@click.option("--set", "overrides", multiple=True, help="Override a config value: --set sft.max_steps=20")
def validate_cmd(config_file, pipeline, overrides) -> None:
    """Check a pipeline config file: every section, input file, model folder and endpoint.

    It lists each default the pipeline filled in; only the quickstart fills in models."""
    pipeline_given = pipeline is not None
    pipeline = pipeline or "quickstart"
    from distilflow.client.local import validate_config

    which = "" if pipeline_given else " (the default; --pipeline NAME for another)"
    click.echo(f"validating {config_file} for pipeline {pipeline}{which}")
    try:
        result = validate_config(pipeline, config_file, list(overrides))
    except (DistilflowError, KeyError, OSError) as exc:
        _fail(exc)
    if result.filled:
        click.echo("defaults filled in (not in your config):")
        for line in result.filled:
            click.echo(f"  {line}")
    for line in result.checked:
        click.echo(f"ok  {line}")
    click.echo(f"{config_file}: valid\nnext: distilflow run {pipeline} --local --config {config_file}")


if __name__ == "__main__":
    main()
