"""The Python SDK: list, configure, compile and run pipelines; run one stage without KFP.

from distilflow.client import run_local
summary = run_local("quickstart", overrides=["sft.max_steps=10"])
"""

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

from distilflow import kfp_lookup
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
    default = getattr(module, "DEFAULT_CONFIG", None)
    config = read_config_file(module.data_file(default)) if default else {}
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


def _resolve_oneof_artifacts() -> None:
    """Let kfp 2.17's local orchestrator resolve ``dsl.OneOf`` over artifacts, as it already does over
    parameters: a DAG output fed by several conditional branches takes the one branch that produced it
    (``lifecycle``'s model after its optional dpo / rl). kfp.local otherwise stops with "Expected 1
    artifact in ArtifactSelectorSpec"; a KFP cluster resolves it itself."""
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
    from kfp.pipeline_spec import pipeline_spec_pb2

    original = OrchestratorUtils.get_dag_output_artifacts
    if getattr(original, "_distilflow_patched", False):
        return

    def get_dag_output_artifacts(dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
        plain = pipeline_spec_pb2.DagOutputsSpec()
        chosen = {}
        for key, spec in dag_outputs_spec.artifacts.items():
            if len(spec.artifact_selectors) <= 1:
                plain.artifacts[key].CopyFrom(spec)
                continue
            produced = []
            for selector in spec.artifact_selectors:
                try:
                    produced.append(
                        io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key)
                    )
                except (KeyError, ValueError):  # that branch did not run
                    continue
            if len(produced) != 1:
                raise ValueError(
                    f"dsl.OneOf output {key!r}: {len(produced)} branches produced it, expected 1"
                )
            chosen[key] = produced[0]
        return {**original(plain, io_store), **chosen}

    get_dag_output_artifacts._distilflow_patched = True  # type: ignore[attr-defined]
    OrchestratorUtils.get_dag_output_artifacts = staticmethod(get_dag_output_artifacts)


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
    _keep_executor_args_intact()
    _resolve_oneof_artifacts()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(run_dir, "kfp"))
    try:
        module.pipeline(output_uri=output_uri, config=config, **arguments)
    except RuntimeError as exc:
        raise DistilflowError(f"pipeline {name!r} failed: {exc}; the failing task's log is above") from None
    return summarize(name, output_uri, module.STAGES)


# KFP input types of a pipeline function -> the spec's parameter types (for _coerce)
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


# --- submission to a KFP backend -------------------------------------------------------------

TOKEN_ENVS = ("DISTILFLOW_KFP_TOKEN", "KFP_BEARER_TOKEN")
"""Environment variables holding a bearer token for the KFP API, in the order they are tried."""

TOKEN_FILE_ENVS = ("DISTILFLOW_KFP_TOKEN_FILE", "KF_PIPELINES_SA_TOKEN_PATH")
"""Environment variables naming a token file (the second is kfp's own, for a projected token)."""

DEFAULT_TOKEN_FILE = "/var/run/secrets/kubeflow/pipelines/token"
"""Where Kubeflow's PodDefault projects a pipelines service-account token into notebook pods."""

CONFIG_PARAMETERS = ("config", "overrides")
"""Pipeline parameters that take the stage sections: ``--set sft.max_steps=3`` lands in the first present."""

TERMINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")
SUCCESS_STATES = ("SUCCEEDED", "SKIPPED")


def resolve_token(
    token: str | None = None, token_file: str | None = None, environ: dict[str, str] | None = None
) -> tuple[str | None, str | None, str]:
    """``(token, token_file, source)``: where the KFP bearer token comes from, and the token itself.

    Order: ``token``; ``token_file``; ``$DISTILFLOW_KFP_TOKEN``; ``$KFP_BEARER_TOKEN``; the file named by
    ``$DISTILFLOW_KFP_TOKEN_FILE`` or ``$KF_PIPELINES_SA_TOKEN_PATH``; the projected token at
    ``/var/run/secrets/kubeflow/pipelines/token`` when it exists; else no token. ``source`` names the
    place (never the value), for messages.
    """
    environ = os.environ if environ is None else environ
    if token:
        return token, None, "the token argument"
    if token_file:
        return _read_token(token_file), token_file, f"token file {token_file}"
    for name in TOKEN_ENVS:
        if environ.get(name):
            return environ[name].strip(), None, f"${name}"
    for name in TOKEN_FILE_ENVS:
        if environ.get(name):
            return _read_token(environ[name]), environ[name], f"token file {environ[name]} (${name})"
    if os.path.isfile(DEFAULT_TOKEN_FILE):
        return _read_token(DEFAULT_TOKEN_FILE), DEFAULT_TOKEN_FILE, f"token file {DEFAULT_TOKEN_FILE}"
    return None, None, "no token"


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(
            f"token file {path}: cannot read it ({exc.strerror}); give a readable --token-file"
        ) from None
    if not token:
        raise ConfigError(f"token file {path} is empty; it should hold a bearer token for the KFP API")
    return token


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
            config = deep_merge(read_config_file(config_file) if config_file else {}, parse_overrides(rest))
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
            self._token = _read_token(self._token_file)
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
