"""The ``deploy`` stage: a real `transformers serve` subprocess on 127.0.0.1 serving the tiny Qwen3."""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as real types.

import json
import os
import shutil
import signal
import socket
import time

import pytest

from distilflow.components.deploy.config import DeployConfig
from distilflow.components.deploy.run import run
from distilflow.errors import BackendError, ConfigError
from distilflow.outputs import MANIFEST, MARKER


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """One torch/OpenMP thread, here and in the subprocesses the tests start: on 2 shared cores,
    2 spinning OpenMP threads made 8 tiny generate() calls take 24.6 s instead of 0.8 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def _config(model: str, out: str, **overrides) -> DeployConfig:
    base = {
        "output_uri": out,
        "model": model,
        "backend": "transformers",
        "max_tokens": 8,
        "startup_timeout_s": 90,
    }
    return DeployConfig.from_dict({**base, **overrides})


def _wait_gone(pid: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)  # the server is this process's child: reap it
        if done == pid:
            return True
        time.sleep(0.2)
    return False


def test_components_run_under_kfp_local(tiny_qwen3, problems_file, tmp_path):
    """evaluate then deploy as KFP tasks (kfp.local, no venv): the model arrives as an upstream artifact."""
    from kfp import dsl, local

    from distilflow.components.deploy.component import deploy
    from distilflow.components.evaluate.component import evaluate

    stage_dir = tmp_path / "run" / "sft"  # stands in for a finished upstream stage
    stage_dir.mkdir(parents=True)
    (stage_dir / MARKER).write_text("done\n")
    (stage_dir / MANIFEST).write_text("{}")
    root = str(tmp_path / "run")

    @dsl.pipeline(name="evaluate-deploy")
    def pipeline(output_uri: str, config: dict) -> str:
        model = dsl.importer(
            artifact_uri=tiny_qwen3,
            artifact_class=dsl.Model,
            metadata={"uri": tiny_qwen3, "stage_uri": str(stage_dir)},
        )
        evaluate_task = evaluate(config=config, output_uri=output_uri, model=model.output)
        deploy_task = deploy(config=config, output_uri=output_uri, model=model.output).after(evaluate_task)
        return deploy_task.outputs["Output"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    config = {
        "evaluate": {"problems_uri": problems_file, "samples": 1, "temperature": 0.0, "max_new_tokens": 8},
        "deploy": {"backend": "transformers", "max_tokens": 8},
    }
    url = pipeline(output_uri=root, config=config).output

    out = tmp_path / "run" / "deploy"
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    info = json.loads((out / "endpoint.json").read_text())
    assert info["url"] == url and info["model"] == tiny_qwen3 and info["backend"] == "transformers"
    smoke = info["smoke"]
    assert 0 < smoke["completion_tokens"] <= 8 and smoke["latency_s"] > 0 and smoke["tokens_per_s"] > 0
    assert info["stopped"] is True and info["pid"] is None
    assert "Uvicorn running" in (out / "server.log").read_text()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["result"]["completion_tokens"] == smoke["completion_tokens"] and (out / MARKER).exists()
    assert not _port_open(url), "the server still listens after keep_running=False"
    # evaluate's KFP outputs: the Markdown report artifact and the metrics it logged.
    reports = list((tmp_path / "kfp").rglob("report"))
    assert reports and "| pass@1 |" in reports[0].read_text()
    metrics = json.loads((tmp_path / "run" / "evaluate" / "metrics.json").read_text())
    assert metrics["n_answers"] == 4
    executor = json.loads(next((tmp_path / "kfp").rglob("evaluate/executor_output.json")).read_text())
    logged = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged == {k: metrics[k] for k in ("accuracy", "mean_tokens")} | {"pass@1": metrics["pass_at_k"]}


def test_keep_running_leaves_a_working_endpoint(tiny_qwen3, s3_bucket, tmp_path):
    """A kept server answers the test's own client; endpoint.json and server.log land in object storage."""
    import openai

    from distilflow import uri as uris

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = f"s3://{s3_bucket}/runs/r1/deploy"
    cfg = _config(tiny_qwen3, out, keep_running=True, port=port)
    result = run(cfg)
    try:
        assert result.endpoint_url == f"http://127.0.0.1:{port}/v1"
        assert result.stopped is False and result.pid
        info = json.loads(uris.read_text(out + "/endpoint.json"))
        assert info["url"] == result.endpoint_url and info["pid"] == result.pid and info["stopped"] is False
        assert "Uvicorn running" in uris.read_text(out + "/server.log")
        client = openai.OpenAI(base_url=result.endpoint_url, api_key="EMPTY", timeout=60)
        resp = client.chat.completions.create(
            model=result.served_model, messages=[{"role": "user", "content": "Hello"}], max_tokens=5
        )
        assert resp.usage.completion_tokens > 0 and resp.choices[0].finish_reason in ("stop", "length")
        client.close()
        # A rerun finds the kept server answering and returns it instead of starting another.
        assert run(cfg) == result
    finally:
        os.killpg(result.pid, signal.SIGTERM)
        assert _wait_gone(result.pid)
    assert not _port_open(result.endpoint_url)


def test_missing_model_folder_is_named(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(BackendError, match="no-such-model.*no such folder"):
        run(_config(missing, str(tmp_path / "deploy")))
    assert not (tmp_path / "deploy" / MARKER).exists()


def test_server_crash_fails_with_its_log(tiny_qwen3, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen3, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "deploy"
    with pytest.raises(BackendError) as err:
        run(_config(str(broken), str(out)))
    message = str(err.value)
    assert str(broken) in message and "exited with code" in message
    assert "Server log" in message and "SafetensorError" in message  # the server's own error, not only ours
    assert (out / "server.log").exists() and not (out / MARKER).exists()


def test_unset_api_key_variable_is_refused(tiny_qwen3, tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILFLOW_TEST_SERVE_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$DISTILFLOW_TEST_SERVE_KEY"):
        run(_config(tiny_qwen3, str(tmp_path / "deploy"), api_key_env="DISTILFLOW_TEST_SERVE_KEY"))
