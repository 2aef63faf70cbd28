"""A KFP backend: upload and submit pipelines, follow their runs (for notebooks and the CLI)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

from distilflow.client import kfp_lookup
from distilflow.client.arguments import pipeline_parameters, pipeline_spec_doc, run_arguments
from distilflow.client.auth import TOKEN_ENVS, read_token, resolve_token
from distilflow.client.pipelines import compile_pipeline, list_pipelines
from distilflow.errors import ConfigError, DistilflowError

TERMINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")


SUCCESS_STATES = ("SUCCEEDED", "SKIPPED")


@dataclass
class RunStatus:
    """Where a submitted run stands, and where to see it."""

    run_id: str
    state: str
    url: str
    name: str | None = None
    error: str | None = None
    failed_tasks: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state in SUCCESS_STATES

    def lines(self) -> list[str]:
        out = [f"run {self.run_id} {self.state}: {self.url}"]
        if self.error:
            out.append(f"  error: {self.error}")
        out.extend(f"  failed task {t}" for t in self.failed_tasks)
        return out

    def _repr_html_(self) -> str:  # a link in notebooks
        return f'run <code>{self.run_id}</code> {self.state}: <a href="{self.url}" target="_blank">{self.url}</a>'


@dataclass
class Uploaded:
    """A pipeline (version) on the KFP backend."""

    pipeline_id: str
    pipeline_name: str
    version_id: str | None
    version_name: str | None
    url: str
    created_pipeline: bool = False
    new_version: bool = True

    def lines(self) -> list[str]:
        what = "created pipeline" if self.created_pipeline else "pipeline"
        verb = "uploaded" if self.new_version else "already there, unchanged:"
        return [
            f"{what} {self.pipeline_name} ({self.pipeline_id}); {verb} version {self.version_name}: {self.url}"
        ]


def default_version_name(spec: dict[str, Any]) -> str:
    """``<package version>-<hash of the spec>``: uploading the same spec twice names the same version."""
    import hashlib

    from distilflow import __version__

    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return f"v{__version__}-{digest}"


class Client:
    """Upload and submit pipelines to a KFP backend, and follow their runs (for notebooks and the CLI).

    >>> client = Client("https://kfp.example.com", token_file="/var/run/secrets/kfp/token")
    >>> client.upload("quickstart")
    >>> run = client.submit("quickstart", overrides=["output_uri=s3://bucket/runs/r1"])
    >>> client.wait(run.run_id).state

    Authentication: a bearer token (see :func:`resolve_token` for where it is looked for) passed to
    ``kfp.Client(existing_token=...)``; it is never printed. A token read from a file is read again
    before each status poll, so a projected service-account token that the kubelet rotates keeps working.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        token: str | None = None,
        token_file: str | None = None,
        namespace: str | None = None,
        ui_host: str | None = None,
        verify_ssl: bool | None = None,
    ) -> None:
        host = host or os.environ.get("KF_PIPELINES_ENDPOINT")
        if not host:
            raise ConfigError("no KFP API endpoint; give --host URL (or set KF_PIPELINES_ENDPOINT)")
        self.host = host.rstrip("/")
        self.namespace = namespace
        self.ui_host = (ui_host or os.environ.get("KF_PIPELINES_UI_ENDPOINT") or self.host).rstrip("/")
        self.verify_ssl = verify_ssl
        self._token, self._token_file, self.auth = resolve_token(token, token_file)
        self._client: Any = None

    def __repr__(self) -> str:
        return f"Client(host={self.host!r}, auth={self.auth!r})"

    @property
    def kfp(self) -> Any:
        """The underlying ``kfp.Client``, made at first use (so bad arguments fail before any request)."""
        if self._client is None:
            import kfp

            self._probe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._client = self._call(
                    "connect",
                    kfp.Client,
                    host=self.host,
                    existing_token=self._token,
                    namespace=self.namespace or "kubeflow",
                    ui_host=self.ui_host,
                    verify_ssl=self.verify_ssl,
                )
        return self._client

    def _probe(self) -> None:
        """One GET of the health endpoint with the token: fail at once, and clearly, on a wrong host or token.

        (``kfp.Client`` asks the same endpoint at start, but retries five times 5 s apart on any error.)
        """
        import ssl
        import urllib.error
        import urllib.request

        url = f"{self.host}/apis/v2beta1/healthz"
        request = urllib.request.Request(url)
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        context = ssl._create_unverified_context() if self.verify_ssl is False else None
        try:
            with urllib.request.urlopen(request, timeout=30, context=context):
                return
        except urllib.error.HTTPError as exc:
            hint = ""
            if exc.code in (401, 403):
                hint = f" (authentication: {self.auth}); give a valid token with --token-file or ${TOKEN_ENVS[0]}"
            elif exc.code == 404:
                hint = "; is this the KFP API endpoint (e.g. https://HOST/pipeline)?"
            raise DistilflowError(f"connect: the KFP API at {self.host} answered {exc.code}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DistilflowError(f"connect: cannot reach the KFP API at {self.host}: {reason}") from None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the KFP API; its errors become one line naming the host, the status and the server's message."""
        import kfp_server_api
        import urllib3

        try:
            # kfp.Client prints its own "... details: URL" lines; the caller gets the links returned
            with contextlib.redirect_stdout(io.StringIO()):
                return fn(*args, **kwargs)
        except kfp_server_api.ApiException as exc:
            message = _server_message(exc.body) or exc.reason
            hint = ""
            if exc.status in (401, 403):
                hint = (
                    f" (authentication: {self.auth}); give a valid token with --token-file or "
                    f"${TOKEN_ENVS[0]}"
                )
            raise DistilflowError(
                f"{what}: the KFP API at {self.host} answered {exc.status}: {message}{hint}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DistilflowError(f"{what}: cannot reach the KFP API at {self.host}: {exc}") from None

    def _refresh_token(self) -> None:
        if self._token_file and self._client is not None:
            self._token = read_token(self._token_file)
            self._client._existing_config.api_key["authorization"] = self._token

    # --- pipelines ----------------------------------------------------------------------------

    def compile(self, name: str, package_path: str) -> str:
        """Compile pipeline ``name`` to ``package_path`` (KFP IR YAML)."""
        return compile_pipeline(name, package_path)

    def _pipeline_id(self, name: str) -> str | None:
        """The id of pipeline ``name`` in this client's namespace (display_name filter, answer checked)."""
        found = self._call(
            f"look up pipeline {name}",
            self.kfp.list_pipelines,
            filter=kfp_lookup.name_filter(name),
            namespace=self.namespace,
            page_size=10,
        )
        pipe = kfp_lookup.pick("pipeline", name, found.pipelines, self.host)
        return pipe.pipeline_id if pipe is not None else None

    def _version(self, pipeline_id: str, version: str) -> Any:
        found = self._call(
            f"look up version {version}",
            self.kfp.list_pipeline_versions,
            pipeline_id=pipeline_id,
            filter=kfp_lookup.name_filter(version),
        )
        return kfp_lookup.pick("pipeline version", version, found.pipeline_versions, self.host)

    def _newest_version(self, pipeline_id: str) -> Any:
        found = self._call(
            "look up the newest version",
            self.kfp.list_pipeline_versions,
            pipeline_id=pipeline_id,
            page_size=1,
            sort_by="created_at desc",
        )
        return (found.pipeline_versions or [None])[0]

    def upload(self, name: str, version: str | None = None, description: str | None = None) -> Uploaded:
        """Upload pipeline ``name``: create it if the backend lacks it, else add version ``version``.

        The default version name is ``v<package version>-<hash of the compiled spec>``. Without
        ``version``, a spec equal to the newest version's (or to the version of that default name) is
        not uploaded again: the version already there is reported. An existing version name with a
        different spec is refused.
        """
        description = description or list_pipelines().get(name)
        with tempfile.TemporaryDirectory() as tmp:
            package = compile_pipeline(name, os.path.join(tmp, f"{name}.yaml"))
            spec = pipeline_spec_doc(package)
            pipeline_id = self._pipeline_id(name)
            created = pipeline_id is None
            if created:
                pipe = self._call(
                    f"upload pipeline {name}",
                    self.kfp.upload_pipeline,
                    package,
                    pipeline_name=name,
                    description=description,
                    namespace=self.namespace,
                )
                pipeline_id = kfp_lookup.check_named("pipeline", name, pipe, self.host).pipeline_id
                if version is None:  # the backend names the first version after the pipeline
                    first = self._version(pipeline_id, name)
                    return self._uploaded(name, pipeline_id, first, created=True)
            if version is None:
                newest = self._newest_version(pipeline_id)
                if newest is not None and pipeline_spec_doc(newest.pipeline_spec or {}) == spec:
                    return self._uploaded(name, pipeline_id, newest, created=False, new=False)
            version = version or default_version_name(spec)
            there = self._version(pipeline_id, version)
            if there is not None:
                if pipeline_spec_doc(there.pipeline_spec or {}) != spec:
                    raise ConfigError(
                        f"pipeline {name} already has a version {version!r} with another spec; "
                        "upload under a new --version"
                    )
                return self._uploaded(name, pipeline_id, there, created=created, new=False)
            ver = self._call(
                f"upload version {version} of {name}",
                self.kfp.upload_pipeline_version,
                package,
                version,
                pipeline_id=pipeline_id,
                description=description,
            )
            kfp_lookup.check_named("pipeline version", version, ver, self.host)
        return self._uploaded(name, pipeline_id, ver, created=created)

    def _uploaded(self, name: str, pipeline_id: str, ver: Any, created: bool, new: bool = True) -> Uploaded:
        vid = ver.pipeline_version_id if ver is not None else None
        url = f"{self.ui_host}/#/pipelines/details/{pipeline_id}" + (f"/version/{vid}" if vid else "")
        return Uploaded(
            pipeline_id=pipeline_id,
            pipeline_name=name,
            version_id=vid,
            version_name=ver.display_name if ver is not None else None,
            url=url,
            created_pipeline=created,
            new_version=new,
        )

    # --- runs ---------------------------------------------------------------------------------

    def submit(
        self,
        name: str,
        config_file: str | None = None,
        overrides: list[str] | None = None,
        output_uri: str | None = None,
        experiment: str = "distilflow",
        run_name: str | None = None,
        version: str | None = None,
    ) -> RunStatus:
        """Create a run of pipeline ``name`` in ``experiment`` (made if missing) and return its status.

        Without ``version`` the pipeline is compiled from this installation and sent with the run;
        with it, the run uses that uploaded version (see :meth:`upload`). Parameters come from
        ``overrides`` and ``config_file`` as :func:`run_arguments` says.
        """
        run_name = run_name or f"{name} {_dt.datetime.now().strftime('%Y-%m-%d %H-%M-%S')}"
        if version:
            pipeline_id = self._pipeline_id(name)
            ver = self._version(pipeline_id, version) if pipeline_id else None
            if ver is None:
                raise ConfigError(
                    f"pipeline {name} has no uploaded version {version!r} at {self.host}; "
                    f"upload it first: distilflow upload {name} --host {self.host} --version {version}"
                )
            spec = pipeline_spec_doc(ver.pipeline_spec or {})
            args = run_arguments(name, pipeline_parameters(spec), config_file, overrides, output_uri)
            exp = self._experiment(experiment)
            run = self._call(
                f"submit {name} {version}",
                self.kfp.run_pipeline,
                exp.experiment_id,
                run_name,
                params=args,
                pipeline_id=pipeline_id,
                version_id=ver.pipeline_version_id,
            )
            return self._status(run)
        with tempfile.TemporaryDirectory() as tmp:
            package = compile_pipeline(name, os.path.join(tmp, f"{name}.yaml"))
            args = run_arguments(
                name, pipeline_parameters(pipeline_spec_doc(package)), config_file, overrides, output_uri
            )
            result = self._call(
                f"submit {name}",
                self.kfp.create_run_from_pipeline_package,
                package,
                arguments=args,
                run_name=run_name,
                experiment_id=self._experiment(experiment).experiment_id,
                namespace=self.namespace,
            )
        return self._status(result.run_info)

    def _experiment(self, name: str) -> Any:
        """Experiment ``name`` in this client's namespace, made if missing; one of another name is refused."""
        exp = self._call(
            f"create experiment {name}", self.kfp.create_experiment, name, namespace=self.namespace
        )
        return kfp_lookup.check_named("experiment", name, exp, self.host)

    def run_url(self, run_id: str) -> str:
        """The run's page in the KFP UI."""
        return f"{self.ui_host}/#/runs/details/{run_id}"

    def status(self, run_id: str) -> RunStatus:
        """The run's state now, its error and failed tasks if any, and its UI link."""
        self._refresh_token()
        return self._status(self._call(f"get run {run_id}", self.kfp.get_run, run_id))

    def _status(self, run: Any) -> RunStatus:
        failed = []
        for task in getattr(getattr(run, "run_details", None), "task_details", None) or []:
            if str(task.state) in ("FAILED", "CANCELED"):
                why = task.error.message if task.error is not None and task.error.message else task.state
                failed.append(f"{task.display_name}: {why}")
        error = run.error.message if run.error is not None and run.error.message else None
        return RunStatus(
            run_id=run.run_id,
            state=str(run.state or "PENDING"),
            url=self.run_url(run.run_id),
            name=run.display_name,
            error=error,
            failed_tasks=failed,
        )

    def wait(
        self,
        run_id: str,
        timeout: float | None = None,
        poll_interval: float = 10.0,
        echo: Any = print,
    ) -> RunStatus:
        """Poll the run until it reaches a terminal state; ``echo`` each state change. Returns the last status.

        Raises:
            DistilflowError: ``timeout`` seconds passed first (the run goes on; its link is in the message).
        """
        import time

        deadline = time.monotonic() + timeout if timeout else None
        last = None
        while True:
            status = self.status(run_id)
            if status.state != last:
                last = status.state
                if echo:
                    echo(f"run {run_id}: {status.state}")
            if status.done:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise DistilflowError(
                    f"run {run_id} did not finish within {timeout:.0f} s (state {status.state}); it goes on: "
                    f"{status.url}"
                )
            time.sleep(poll_interval)


def _server_message(body: Any) -> str | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body)[:300]
    return (data.get("message") or data.get("error") or str(data))[:300] if isinstance(data, dict) else None


def submit(
    name: str,
    host: str,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    output_uri: str | None = None,
    experiment: str = "distilflow",
    **client_options: Any,
) -> str:
    """Compile and submit a pipeline run to a KFP backend; return the run id (see :class:`Client`)."""
    client = Client(host, **client_options)
    return client.submit(name, config_file, overrides, output_uri, experiment).run_id
