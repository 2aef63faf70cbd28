"""The ``deploy`` stage: serve a model behind an OpenAI-compatible API and prove it answers.

``target: local`` starts the server as a subprocess on this machine: vLLM's OpenAI server when
``vllm`` is importable (``backend: auto`` or ``vllm``), else ``transformers serve`` (from
``transformers[serving]``). It waits for ``/health``, then smoke-tests the endpoint with the
``openai`` client (list models, one chat completion) and records latency and tokens/s in
``endpoint.json``. Unless ``keep_running`` is set, the server is stopped again afterwards.

It does not build images, create KServe/PAI-EAS services or autoscale (cluster targets come later).
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
from distilflow.components.deploy.config import DeployConfig
from distilflow.errors import BackendError, ConfigError
from distilflow.outputs import StageOutput

STAGE = "deploy"
ENDPOINT = "endpoint.json"
SERVER_LOG = "server.log"
LOG_TAIL_CHARS = 3000


class DeployResult(BaseModel):
    """Where the model is served and how the smoke test went."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    endpoint_url: str = Field(description="OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    served_model: str = Field(description="The model id requests must name")
    backend: str = Field(description="transformers or vllm")
    latency_s: float = Field(description="Wall time of the smoke-test chat completion")
    tokens_per_s: float = Field(description="Completion tokens per second of the smoke test")
    completion_tokens: int = Field(description="Completion tokens of the smoke test")
    stopped: bool = Field(description="Whether the server was stopped after the smoke test")
    pid: int | None = Field(None, description="Process id of the server when it was left running")
    endpoint_uri: str = Field(description="endpoint.json")
    log_uri: str = Field(description="server.log")


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


def server_command(backend: str, model_dir: str, host: str, port: int) -> list[str]:
    """The command line of the server; the model folder's path is the id requests name."""
    if backend == "vllm":
        module = ["vllm.entrypoints.openai.api_server", "--model", model_dir]
    else:
        # A positional model is preloaded before the port opens, and the server is pinned to it.
        module = ["transformers.cli.transformers", "serve", model_dir]
    return [sys.executable, "-m", *module, "--host", host, "--port", str(port)]


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
    env = dict(os.environ)
    # The model is a local folder: nothing needs the hub, and an offline CLI skips its update check.
    env["HF_HUB_OFFLINE"] = "1"
    if backend == "transformers":
        # `transformers serve` lists the models of the HF cache (a missing cache is an HTTP 500); an
        # empty private cache makes /v1/models answer without advertising models the server refuses.
        env["HF_HUB_CACHE"] = cache_dir
    if backend == "vllm" and key:
        env["VLLM_API_KEY"] = key  # by environment, not argv, so `ps` never shows it
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


def smoke_test(base_url: str, served_model: str, config: DeployConfig, key: str | None) -> dict[str, Any]:
    """List models, then one chat completion; return its latency, tokens and tokens/s."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=120, max_retries=0)
    try:
        listed = [m.id for m in client.models.list().data]
        started = time.monotonic()
        resp = client.chat.completions.create(
            model=served_model,
            messages=[{"role": "user", "content": config.smoke_prompt}],
            max_tokens=config.max_tokens,
            temperature=0,
        )
        latency = time.monotonic() - started
    except openai.APIStatusError as exc:
        raise BackendError(f"{base_url}: smoke test got HTTP {exc.status_code}: {exc.message}") from None
    except openai.APIConnectionError as exc:
        raise BackendError(f"{base_url}: smoke test could not reach the server ({exc})") from None
    finally:
        client.close()
    if not resp.choices:
        raise BackendError(f"{base_url}: the chat completion for {served_model!r} returned no choices")
    tokens = resp.usage.completion_tokens if resp.usage else 0
    return {
        "listed_models": listed,
        "prompt": config.smoke_prompt,
        "response": resp.choices[0].message.content or "",
        "finish_reason": resp.choices[0].finish_reason,
        "latency_s": round(latency, 4),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / latency, 3) if latency > 0 else 0.0,
    }


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
    config: DeployConfig, out: StageOutput, backend: str, model_dir: str, key: str | None
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
    cmd = server_command(backend, model_dir, config.host, port)
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
    """Start the server, wait until healthy, smoke-test it, record the endpoint; stop it unless kept.

    Any failure stops the server and raises with the server's error and the tail of its log.
    A rerun of a finished deploy returns the recorded endpoint, unless a server that was kept
    running no longer answers, in which case it deploys again.
    """
    from distilflow.models import resolve_model

    out = StageOutput(config.output_uri, STAGE)
    done = out.reusable(config)
    if done:
        result = DeployResult.model_validate(done["result"])
        if result.stopped or endpoint_alive(result.endpoint_url):
            return result
        print(f"[{STAGE}] the recorded server at {result.endpoint_url} is gone; deploying again", flush=True)
    model_dir = resolve_model(config.model)
    backend = pick_backend(config.backend)
    if backend == "transformers" and "@" in model_dir:
        raise ConfigError(
            f"model {model_dir!r}: `transformers serve` reads '@' as a revision; move the folder"
        )
    key = api_key(config)
    if key and backend == "transformers":
        print(
            f"[{STAGE}] warning: `transformers serve` does not check API keys; ${config.api_key_env} is only sent",
            flush=True,
        )
    out.begin(config)

    proc, root_url, log_path, work_dir = start_server(config, out, backend, model_dir, key)
    base_url = root_url + "/v1"
    try:
        ready_s = wait_ready(proc, root_url, config.startup_timeout_s)
        print(f"[{STAGE}] server ready at {base_url} after {ready_s:.1f}s (pid {proc.pid})", flush=True)
        smoke = smoke_test(base_url, model_dir, config, key)
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
    print(
        f"[{STAGE}] smoke test: {smoke['completion_tokens']} tokens in {smoke['latency_s']:.2f}s "
        f"({smoke['tokens_per_s']:.1f} tokens/s); server {'left running, pid ' + str(pid) if pid else 'stopped'}",
        flush=True,
    )
    result = _finish(out, config, backend, base_url, model_dir, smoke, pid, ready_s, log_path)
    if pid is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


def _save_log(out: StageOutput, log_path: str) -> None:
    if not uris.is_local(out.uri) and os.path.exists(log_path):
        with open(log_path, "rb") as f:
            uris.write_bytes(out.path(SERVER_LOG), f.read())


def _finish(
    out: StageOutput,
    config: DeployConfig,
    backend: str,
    base_url: str,
    model_dir: str,
    smoke: dict[str, Any],
    pid: int | None,
    ready_s: float,
    log_path: str,
) -> DeployResult:
    endpoint = {
        "url": base_url,
        "model": model_dir,
        "source_model": config.model,
        "backend": backend,
        "target": config.target,
        "keep_running": config.keep_running,
        "pid": pid,
        "stopped": pid is None,
        # The name of the variable only; the key never leaves the environment.
        "api_key_env": config.api_key_env,
        "api_key_enforced": bool(config.api_key_env) and backend == "vllm",
        "startup_s": round(ready_s, 3),
        "smoke": smoke,
    }
    uris.write_text(out.path(ENDPOINT), json.dumps(endpoint, indent=2))
    _save_log(out, log_path)
    result = DeployResult(
        endpoint_url=base_url,
        served_model=model_dir,
        backend=backend,
        latency_s=smoke["latency_s"],
        tokens_per_s=smoke["tokens_per_s"],
        completion_tokens=smoke["completion_tokens"],
        stopped=pid is None,
        pid=pid,
        endpoint_uri=out.path(ENDPOINT),
        log_uri=out.path(SERVER_LOG),
    )
    out.finish(
        result=result.model_dump(mode="json"),
        inputs={"model": config.model},
        outputs={"endpoint": ENDPOINT, "server_log": SERVER_LOG},
        counts={"smoke_requests": 1},
        metrics={k: smoke[k] for k in ("latency_s", "tokens_per_s", "completion_tokens")}
        | {"startup_s": ready_s},
    )
    return result
