"""The ``deploy`` stage: serve a model behind an OpenAI-compatible API and prove it answers.

``target: local`` starts the server as a subprocess on this machine: vLLM's OpenAI server when
``vllm`` is importable (``backend: auto`` or ``vllm``), else distilflow's own OpenAI-compatible server
over transformers' ``generate`` that streams token by token (``server.py``), waits for ``/health``,
smoke-tests it and stops it unless ``keep_running``; a kept server's pid goes to ``server.pid`` in the
output folder, and ``distilflow stop OUTPUT`` (``stop_server``) stops it.

``target: kserve`` applies a KServe InferenceService running vLLM (``kserve.py``); ``target: pai-eas``
creates or updates a PAI-EAS service running vLLM (``eas.py``). Both write the manifest / service
description first (``dry_run`` stops there), wait until the service is ready, smoke-test it, and on
an update keep the previous revision serving until the new one has passed (rolling back otherwise).

The smoke test (``smoke.py``) lists the models, sends one chat completion and one streamed, and, for
models whose chat template honours ``enable_thinking``, one with thinking on and one off; latency and
tokens/s go to ``endpoint.json`` and the manifest. Keys come from environment variables named in the
config and are never written. It does not build images or set up autoscaling policies.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from distilflow import uri as uris
from distilflow.components.deploy import smoke as smoke_mod
from distilflow.components.deploy.config import DeployConfig
from distilflow.components.deploy.pidfile import write_pid_file
from distilflow.components.deploy.vllm_server import served_name, thinking_model, vllm_args
from distilflow.errors import BackendError, ConfigError
from distilflow.outputs import METRIC, StageOutput

STAGE = "deploy"
ENDPOINT = "endpoint.json"
SERVER_LOG = "server.log"
KSERVE_MANIFEST = "inferenceservice.yaml"
EAS_DESCRIPTION = "eas-service.json"
LOG_TAIL_CHARS = 3000


class DeployResult(BaseModel):
    """Where the model is served and how the smoke test went."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    endpoint_url: str = Field(
        description="OpenAI base URL, e.g. http://127.0.0.1:8000/v1 (empty on a dry run)"
    )
    served_model: str = Field(description="The model id requests must name")
    backend: str = Field(description="transformers or vllm")
    target: str = Field("local", description="local, kserve or pai-eas")
    latency_s: float | None = Field(
        None, description="Wall time of the smoke-test chat completion", json_schema_extra=METRIC
    )
    tokens_per_s: float | None = Field(
        None, description="Completion tokens per second of the smoke test", json_schema_extra=METRIC
    )
    completion_tokens: int | None = Field(
        None, description="Completion tokens of the smoke test", json_schema_extra=METRIC
    )
    stream_tokens_per_s: float | None = Field(
        None, description="Tokens per second of the streamed chat", json_schema_extra=METRIC
    )
    stopped: bool = Field(description="Whether the server was stopped after the smoke test (local)")
    pid: int | None = Field(None, description="Process id of the server when it was left running")
    dry_run: bool = Field(False, description="Whether only the manifest was written")
    rollout: str = Field("", description="What the deploy did to the service: created, updated, promoted")
    endpoint_uri: str = Field(description="endpoint.json")
    log_uri: str | None = Field(None, description="server.log (local target)")
    manifest_uri: str | None = Field(
        None, description="The InferenceService manifest or EAS service description"
    )


def pick_backend(backend: str) -> str:
    """The server to start: vLLM where asked for (or, for auto, where importable), else transformers."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not has_vllm:
        raise ConfigError(
            "deploy.backend='vllm' but vllm is not installed here; use backend 'auto' or 'transformers'"
        )
    if backend == "auto":
        return "vllm" if has_vllm else "transformers"
    return backend


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


SERVER_MODULES = {
    "vllm": "vllm.entrypoints.openai.api_server",
    "transformers": "distilflow.components.deploy.server",
}
"""The module each backend's server runs as (``stop_server`` checks a pid still runs one of them)."""


def server_command(
    config: DeployConfig, backend: str, model_dir: str, port: int, thinking: bool
) -> list[str]:
    """The command line of the server; requests name the model ``vllm_server.served_name``. vLLM gets the
    cluster targets' arguments (parallelism, length, reasoning parser, ``vllm_args``) from ``vllm_args``."""
    if backend == "vllm":
        args = vllm_args(config, model_dir, port, thinking, host=config.host)
        return [sys.executable, "-m", SERVER_MODULES["vllm"], *args]
    module = [SERVER_MODULES[backend], "--model", model_dir, "--served-model-name", served_name(config)]
    return [sys.executable, "-m", *module, "--host", config.host, "--port", str(port)]


def api_key(config: DeployConfig) -> str | None:
    if not config.api_key_env:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ConfigError(
            f"deploy.api_key_env names ${config.api_key_env}, which is unset or empty; export the key in it "
            "(or mount it from a Kubernetes Secret), or drop api_key_env"
        )
    return key


def server_env(backend: str, key: str | None, cache_dir: str) -> dict[str, str]:
    from distilflow.components.deploy.server import API_KEY_ENV

    env = dict(os.environ)
    # The model is a local folder: nothing needs the hub, and an offline CLI skips its update check.
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_HUB_CACHE"] = cache_dir
    if key:
        # by environment, not argv, so `ps` never shows it; both servers refuse requests without it
        env["VLLM_API_KEY" if backend == "vllm" else API_KEY_ENV] = key
    return env


def log_tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return "(no server log)"
    return text[-LOG_TAIL_CHARS:].strip() or "(server log is empty)"


def wait_ready(proc: subprocess.Popen, root_url: str, timeout_s: float) -> float:
    """Poll ``/health`` until it answers 200; fail early if the server exits."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        code = proc.poll()
        if code is not None:
            raise BackendError(f"the server (pid {proc.pid}) exited with code {code} before it was ready")
        try:
            if httpx.get(root_url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise BackendError(
        f"the server did not answer {root_url}/health within startup_timeout_s={timeout_s:g}; raise it "
        "(large models or vLLM on CPU take minutes)"
    )


def stop(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """Terminate the server's process group (vLLM has worker processes), wait, then kill."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        pass


def endpoint_alive(endpoint_url: str) -> bool:
    import httpx

    try:
        return httpx.get(endpoint_url.removesuffix("/v1") + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_server(
    config: DeployConfig, out: StageOutput, backend: str, model_dir: str, key: str | None, thinking: bool
) -> tuple[subprocess.Popen, str, str, str]:
    """Start the server in its own process group; return it, its root URL, its log and a work folder."""
    port = config.port or free_port(config.host)
    connect_host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    work_dir = tempfile.mkdtemp(prefix="distilflow-deploy-")
    # Local outputs get the live log (it keeps growing while a kept server runs); remote ones a copy.
    log_path = out.path(SERVER_LOG) if uris.is_local(out.uri) else os.path.join(work_dir, SERVER_LOG)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    cache_dir = os.path.join(work_dir, "hf-cache")
    os.makedirs(cache_dir)
    cmd = server_command(config, backend, model_dir, port, thinking)
    print(f"[{STAGE}] starting {backend} server: {' '.join(cmd)}", flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(backend, key, cache_dir),
            start_new_session=True,  # its own process group, so stop() reaches vLLM's workers too
        )
    return proc, f"http://{connect_host}:{port}", log_path, work_dir


def run(config: DeployConfig) -> DeployResult:
    """Deploy to ``config.target``, smoke-test the endpoint, record it; see the module docstring.

    Any failure raises with the server's own error (the local server's log tail, the cluster's status
    message). A rerun of a finished deploy returns the recorded endpoint, unless a local server that was
    kept running no longer answers, in which case it deploys again.
    """
    out = StageOutput(config.output_uri, STAGE)
    done = out.reusable(config)
    if done:
        result = DeployResult.model_validate(done["result"])
        if result.target != "local" or result.stopped or endpoint_alive(result.endpoint_url):
            return result
        print(f"[{STAGE}] the recorded server at {result.endpoint_url} is gone; deploying again", flush=True)
    if config.target == "local":
        return run_local(config, out)
    return run_cluster(config, out)


def run_local(config: DeployConfig, out: StageOutput) -> DeployResult:
    """Start a server on this machine, wait until healthy, smoke-test it; stop it unless kept."""
    from distilflow.models import resolve_model

    model_dir = resolve_model(config.model)
    backend = pick_backend(config.backend)
    key = api_key(config)
    out.begin(config)
    template_thinking = smoke_mod.supports_thinking(model_dir)
    thinking = template_thinking if config.smoke_thinking is None else config.smoke_thinking
    name = served_name(config)
    proc, root_url, log_path, work_dir = start_server(config, out, backend, model_dir, key, template_thinking)
    base_url = root_url + "/v1"
    try:
        ready_s = wait_ready(proc, root_url, config.startup_timeout_s)
        print(f"[{STAGE}] server ready at {base_url} after {ready_s:.1f}s (pid {proc.pid})", flush=True)
        smoke = smoke_mod.smoke_test(base_url, name, config.smoke_prompt, config.max_tokens, key, thinking)
    except BaseException as exc:
        # Never leave a half-started server behind; the log tail carries the server's own error.
        stop(proc)
        _save_log(out, log_path)
        tail = log_tail(log_path)
        shutil.rmtree(work_dir, ignore_errors=True)
        if isinstance(exc, BackendError):
            raise BackendError(
                f"deploy of {config.model}: {exc}\nServer log ({out.path(SERVER_LOG)}) tail:\n{tail}"
            ) from None
        raise
    pid: int | None = proc.pid if config.keep_running else None
    if pid is None:
        stop(proc)
    else:
        write_pid_file(out, proc.pid, base_url, backend)
    print(
        f"[{STAGE}] server {'left running, pid ' + str(pid) if pid else 'stopped'}",
        flush=True,
    )
    _save_log(out, log_path)
    if pid is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    endpoint = {
        "url": base_url,
        "model": model_dir,
        "served_model": name,
        "backend": backend,
        "keep_running": config.keep_running,
        "pid": pid,
        "stopped": pid is None,
        "api_key_enforced": bool(key),
        "startup_s": round(ready_s, 3),
    }
    result = DeployResult(
        endpoint_url=base_url,
        served_model=name,
        backend=backend,
        stopped=pid is None,
        pid=pid,
        rollout="local server " + ("left running" if pid else "stopped after the smoke test"),
        endpoint_uri=out.path(ENDPOINT),
        log_uri=out.path(SERVER_LOG),
    )
    return _finish(out, config, result, endpoint, smoke, {"startup_s": ready_s}, {"server_log": SERVER_LOG})


def run_cluster(config: DeployConfig, out: StageOutput) -> DeployResult:
    """Render, write and (unless dry_run) apply the service; wait, smoke-test, promote or roll back."""
    import yaml

    from distilflow.components.deploy import eas, kserve

    key = api_key(config)
    out.begin(config)
    thinking = thinking_model(config)
    if config.target == "kserve":
        manifest_name = KSERVE_MANIFEST
        manifest = kserve.render(config, thinking)
        uris.write_text(out.path(manifest_name), yaml.safe_dump(manifest, sort_keys=False))
    else:
        from distilflow.components.deploy.eas_instances import assumption

        manifest_name = EAS_DESCRIPTION
        manifest = eas.render(config, thinking)
        uris.write_text(out.path(manifest_name), json.dumps(manifest, indent=2))
        note = assumption(config.eas.instance_type, config.eas.resource, config.gpus)
        if note:
            print(f"[{STAGE}] note: {note}", flush=True)
    print(f"[{STAGE}] wrote {out.path(manifest_name)}", flush=True)
    result = DeployResult(
        endpoint_url="",
        served_model=served_name(config),
        backend="vllm",
        target=config.target,
        stopped=False,
        dry_run=config.dry_run,
        rollout="dry run: nothing applied",
        endpoint_uri=out.path(ENDPOINT),
        manifest_uri=out.path(manifest_name),
    )
    if config.dry_run:
        return _finish(
            out, config, result, {"service": config.service_name}, None, {}, {"manifest": manifest_name}
        )
    thinking = config.smoke_thinking if config.smoke_thinking is not None else thinking
    start = time.monotonic()
    if config.target == "kserve":
        url, smoke, rollout, where = _apply_kserve(config, manifest, key, thinking)
    else:
        url, smoke, rollout, where = _apply_eas(config, manifest, key, thinking)
    print(f"[{STAGE}] {rollout}", flush=True)
    result = result.model_copy(update={"endpoint_url": url, "rollout": rollout})
    endpoint = {
        "url": url,
        "model": served_name(config),
        "service": config.service_name,
        **where,
        "rollout": rollout,
    }
    metrics = {"deploy_s": time.monotonic() - start}
    return _finish(out, config, result, endpoint, smoke, metrics, {"manifest": manifest_name})


def _smoke(config: DeployConfig, url: str, key: str | None, thinking: bool) -> dict[str, Any] | None:
    if not config.smoke_test:
        return None
    return smoke_mod.smoke_test(
        url, served_name(config), config.smoke_prompt, config.max_tokens, key, thinking
    )


def _apply_kserve(
    config: DeployConfig, manifest: dict[str, Any], key: str | None, thinking: bool
) -> tuple[str, dict[str, Any] | None, str, dict[str, Any]]:
    from distilflow.components.deploy import kserve

    dep = kserve.KServeDeployment(config, kserve.custom_objects_api(config.kserve.context))
    applied = dep.apply(manifest)
    try:
        obj = dep.wait_ready((applied.get("metadata") or {}).get("generation"))
        url, smoke_url = kserve.urls(obj, config.kserve.smoke_via, dep.canary)
        smoke = _smoke(config, smoke_url, key, thinking)
        if dep.canary:
            obj = dep.promote()
            url = kserve.urls(obj, config.kserve.smoke_via, canary=False)[0]
    except BackendError as exc:
        raise BackendError(f"deploy of {config.model}: {exc}\n{dep.roll_back()}") from None
    predictor = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
    revision = predictor.get("latestReadyRevision")
    if dep.previous_revision is None:
        rollout = f"created {dep.where}; revision {revision} serves all traffic"
    else:
        how = (
            f"after a {config.kserve.canary_traffic_percent}% canary passed the smoke test"
            if dep.canary
            else ""
        )
        rollout = f"updated {dep.where}: revision {revision} replaced {dep.previous_revision} {how}".strip()
    where = {
        "namespace": config.kserve.namespace,
        "revision": revision,
        "previous_revision": dep.previous_revision,
    }
    return url, smoke, rollout, where


def _apply_eas(
    config: DeployConfig, description: dict[str, Any], key: str | None, thinking: bool
) -> tuple[str, dict[str, Any] | None, str, dict[str, Any]]:
    from distilflow.components.deploy import eas

    dep = eas.EasDeployment(config, eas.eas_client(config))
    dep.apply(description)
    try:
        svc = dep.wait_running()
        url = eas.endpoint(svc, config.eas.endpoint_kind)
        # The service token EAS issued is used in memory only; api_key_env overrides it.
        smoke = _smoke(config, url, key or svc.access_token, thinking)
    except BackendError as exc:
        raise BackendError(f"deploy of {config.model}: {exc}\n{dep.roll_back()}") from None
    if dep.previous_version is None:
        rollout = f"created EAS service {dep.name}; version {svc.current_version} is Running"
    else:
        rollout = (
            f"updated EAS service {dep.name}: version {svc.current_version} replaced {dep.previous_version}"
        )
    where = {
        "region": config.eas.region,
        "version": svc.current_version,
        "previous_version": dep.previous_version,
    }
    return url, smoke, rollout, where


def _save_log(out: StageOutput, log_path: str) -> None:
    if not uris.is_local(out.uri) and os.path.exists(log_path):
        with open(log_path, "rb") as f:
            uris.write_bytes(out.path(SERVER_LOG), f.read())


def _finish(
    out: StageOutput,
    config: DeployConfig,
    result: DeployResult,
    endpoint: dict[str, Any],
    smoke: dict[str, Any] | None,
    metrics: dict[str, float],
    outputs: dict[str, str],
) -> DeployResult:
    """Record the smoke test in the result, write ``endpoint.json``, then the manifest (``metrics``:
    the startup or rollout time, beside the result's own)."""
    if smoke:
        stream = smoke["stream"]
        print(
            f"[{STAGE}] smoke test: {smoke['completion_tokens']} tokens in {smoke['latency_s']:.2f}s "
            f"({smoke['tokens_per_s']:.1f} tokens/s); streamed {stream['completion_tokens']} tokens at "
            f"{stream['tokens_per_s']:.1f} tokens/s; thinking modes tested: {sorted(smoke['thinking']) or 'none'}",
            flush=True,
        )
        result = result.model_copy(
            update={
                "latency_s": smoke["latency_s"],
                "tokens_per_s": smoke["tokens_per_s"],
                "completion_tokens": smoke["completion_tokens"],
                "stream_tokens_per_s": stream["tokens_per_s"],
            }
        )
        if stream["time_to_first_token_s"] is not None:
            metrics["time_to_first_token_s"] = stream["time_to_first_token_s"]
    record = {
        **endpoint,
        "source_model": config.model,
        "target": config.target,
        "dry_run": result.dry_run,
        # The name of the variable only; the key never leaves the environment.
        "api_key_env": config.api_key_env,
        "smoke": smoke,
    }
    uris.write_text(out.path(ENDPOINT), json.dumps(record, indent=2))
    requests = 0 if not smoke else 2 + len(smoke["thinking"])
    out.finish(
        result,
        inputs={"model": config.model},
        outputs={"endpoint": ENDPOINT, **outputs},
        counts={"smoke_requests": requests},
        metrics=metrics,
    )
    return result
