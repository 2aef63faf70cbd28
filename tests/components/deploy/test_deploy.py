"""The ``deploy`` stage.

target local: a real server subprocess (distilflow's own over transformers' generate, ``server.py``) on
127.0.0.1 serving the tiny Qwen3, smoke-tested (chat, streamed chat token by token, thinking on/off)
through the `openai` client, kept running and stopped with `distilflow stop`. target kserve: the manifest checked
field by field against the InferenceService schema, applied with the `kubernetes` client to a loopback
API server (tests/fakes/k8s_api_server.py) that plays KServe's controller. target pai-eas: the service
description checked field by field, created and updated through the EAS SDK against a loopback EAS API
(tests/fakes/eas_api_server.py). Both clusters' endpoints are a real `transformers serve` on 127.0.0.1.
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as real types.

import json
import os
import shutil
import signal
import socket
import time

import pytest
from click.testing import CliRunner

from distilflow.client.cli import main
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
    stream = smoke["stream"]
    assert stream["chunks"] > 0 and 0 < stream["completion_tokens"] <= 8 and stream["tokens_per_s"] > 0
    # token by token: one chunk per generated token (transformers serve sent the answer in one chunk)
    assert stream["chunks"] == stream["completion_tokens"] and stream["tokens_from_usage"]
    assert 0 < stream["time_to_first_token_s"] < stream["latency_s"]
    assert smoke["listed_models"] == [info["served_model"]]  # /v1/models lists the served name
    # The tiny Qwen3's template honours enable_thinking: one chat each with thinking on and off.
    assert set(smoke["thinking"]) == {"on", "off"}
    assert all(0 < m["completion_tokens"] <= 8 for m in smoke["thinking"].values())
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
    assert logged == {k: metrics[k] for k in ("accuracy", "mean_tokens", "pass_at_k", "truncated")} | {
        "problems": metrics["n_problems"],
        "answers": metrics["n_answers"],
    }


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
        stream = client.chat.completions.create(
            model=result.served_model,
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=5,
            stream=True,
        )
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len([p for p in pieces if p]) > 0
        client.close()
        assert result.stream_tokens_per_s > 0 and info["smoke"]["stream"]["chunks"] > 0
        # A rerun finds the kept server answering and returns it instead of starting another.
        assert run(cfg) == result
        assert json.loads(uris.read_text(out + "/server.pid"))["pid"] == result.pid
        stopped = CliRunner().invoke(main, ["stop", out])
        assert stopped.exit_code == 0, stopped.output
        assert stopped.output.strip() == (
            f"stopped the server at {result.endpoint_url} (pid {result.pid}); removed {out}/server.pid"
        )
        assert _wait_gone(result.pid) and not uris.exists(out + "/server.pid")
        again = CliRunner().invoke(main, ["stop", out])
        assert again.exit_code == 1 and "no server.pid" in again.output
    finally:
        if _port_open(result.endpoint_url):
            os.killpg(result.pid, signal.SIGTERM)
            _wait_gone(result.pid)
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


# ----------------------------------------------------------------------------------------------
# Cluster targets: KServe and PAI-EAS against loopback control planes, a real OpenAI server behind.

SERVE_KEY = "sk-distilflow-test-9f8e7d6c"  # the key clients send; must never be written anywhere
K8S_TOKEN = "k8s-bearer-test-token-51a2"
EAS_AK_SECRET = "eas-ak-secret-test-7b3c"
EAS_SERVICE_TOKEN = "eas-service-token-test-0d4e"
SECRETS = (SERVE_KEY, K8S_TOKEN, EAS_AK_SECRET, EAS_SERVICE_TOKEN)


@pytest.fixture(scope="module")
def openai_endpoint(tiny_qwen3, tmp_path_factory):
    """`transformers serve` on 127.0.0.1 serving the tiny Qwen3: what every cluster revision answers with."""
    import subprocess
    import sys

    import httpx

    from tests.conftest import free_port

    port = free_port()
    cache = tmp_path_factory.mktemp("hf-cache")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", tiny_qwen3]
    with open(tmp_path_factory.mktemp("serve-log") / "serve.log", "wb") as log:  # the child keeps its own fd
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("transformers serve did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _assert_no_secrets(folder, *texts: str) -> None:
    """No secret value in any file under ``folder`` nor in the captured output."""
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_text(errors="replace")
            for secret in SECRETS:
                assert secret not in content, f"{path} contains a secret value"
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, "the captured logs contain a secret value"


@pytest.fixture
def model_on_s3(tiny_qwen3, s3_bucket):
    """The tiny Qwen3 folder uploaded to the moto S3 server (its chat template honours enable_thinking)."""
    from distilflow import uri as uris

    uri = f"s3://{s3_bucket}/runs/r1/sft/model"
    uris.upload_dir(tiny_qwen3, uri)
    return uri


def _cluster_config(target: str, model: str, out: str, **overrides):
    base = {
        "output_uri": out,
        "model": model,
        "target": target,
        "service_name": "qwen3-student" if target == "kserve" else "qwen3_student",
        "max_tokens": 8,
        "startup_timeout_s": 30,
        "poll_interval_s": 0.05,
    }
    return DeployConfig.from_dict({**base, **overrides})


def _admitted(manifest: dict, version: str) -> dict:
    """The manifest as the API server of KServe ``version`` stores it: the vendored InferenceService CRD
    schema with unknown fields refused (fieldValidation=Strict), then KServe's webhooks."""
    from tests.fakes import kserve_webhook
    from tests.fakes.k8s_api_server import SCHEMAS
    from tests.fakes.k8s_schema import admit, load_crd

    obj, warnings = admit(load_crd(SCHEMAS[version]), manifest, field_validation="Strict")
    kserve_webhook.default(obj, version)
    kserve_webhook.validate(obj, None, version)
    assert warnings == []
    return obj


def test_kserve_dry_run_manifest_matches_the_inferenceservice_schema(model_on_s3, tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("DISTILFLOW_TEST_SERVE_KEY", SERVE_KEY)
    out = tmp_path / "deploy"
    cfg = _cluster_config(
        "kserve",
        model_on_s3,
        str(out),
        dry_run=True,
        gpus=2,
        max_model_len=4096,
        image="registry.example/vllm:1",
        api_key_env="DISTILFLOW_TEST_SERVE_KEY",
        kserve={
            "namespace": "llm",
            "gpu_type": "NVIDIA-A100-SXM4-80GB",
            "node_selector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "cpu": "8",
            "memory": "64Gi",
            "shm_size": "16Gi",
            "service_account_name": "models-s3",
            "api_key_secret": "qwen3-student-key",
        },
    )
    result = run(cfg)
    assert result.dry_run and result.endpoint_url == "" and result.rollout.startswith("dry run")
    manifest = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    for version in ("v0.15.0", "v0.20.0"):  # the oldest and newest KServe supported
        assert (
            _admitted(manifest, version)["spec"]["predictor"]["nodeSelector"]
            == manifest["spec"]["predictor"]["nodeSelector"]
        )

    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    meta = manifest["metadata"]
    assert meta["name"] == "qwen3-student" and meta["namespace"] == "llm"
    # the default mode: a Deployment honours nodeSelector/tolerations without Knative feature flags
    assert meta["annotations"] == {"serving.kserve.io/deploymentMode": "RawDeployment"}
    predictor = manifest["spec"]["predictor"]
    assert (
        set(manifest["spec"]) == {"predictor"} and "canaryTrafficPercent" not in predictor
    )  # set per update
    assert predictor["minReplicas"] == 1 and predictor["maxReplicas"] == 1
    assert predictor["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert predictor["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert predictor["serviceAccountName"] == "models-s3"
    assert predictor["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"] == "registry.example/vllm:1"
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = container["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs == {
        "--model": "/mnt/models",
        "--served-model-name": "qwen3-student",
        "--host": "0.0.0.0",
        "--port": "8080",
        "--tensor-parallel-size": "2",
        "--max-model-len": "4096",
        "--reasoning-parser": "qwen3",  # auto: the template on S3 honours enable_thinking
    }
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi"},
        "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
    }
    assert container["env"] == [
        {"name": "STORAGE_URI", "value": model_on_s3},
        {
            "name": "VLLM_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "qwen3-student-key", "key": "api-key"}},
        },
    ]
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert (out / MARKER).exists() and json.loads((out / "endpoint.json").read_text())["dry_run"] is True
    _assert_no_secrets(out)


def test_kserve_schema_check_can_fail(model_on_s3, tmp_path):
    """The vendored schema refuses an invented field and a wrong type (so the test above can fail)."""
    from tests.fakes.k8s_schema import ApiError

    manifest = kserve_render(model_on_s3, tmp_path)
    manifest["spec"]["predictor"]["containers"][0]["gpuCount"] = 1
    with pytest.raises(
        ApiError, match=r'strict decoding error: unknown field "spec.predictor.containers\[0\].gpuCount"'
    ):
        _admitted(manifest, "v0.20.0")
    manifest = kserve_render(model_on_s3, tmp_path)
    manifest["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(ApiError, match=r"spec.predictor.minReplicas in body must be of type integer"):
        _admitted(manifest, "v0.15.0")


def kserve_render(model: str, tmp_path, **overrides) -> dict:
    from distilflow.components.deploy import kserve

    return kserve.render(_cluster_config("kserve", model, str(tmp_path / "r"), **overrides), thinking=True)


@pytest.fixture
def fake_kserve(openai_endpoint, tmp_path_factory, monkeypatch):
    from tests.fakes.k8s_api_server import FakeKServe, write_kubeconfig

    fake = FakeKServe(predictor_url=openai_endpoint, ready_after=3)
    server = fake.start()
    monkeypatch.setenv(
        "KUBECONFIG", write_kubeconfig(str(tmp_path_factory.mktemp("kube") / "config"), server, K8S_TOKEN)
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod: use the kubeconfig
    monkeypatch.setenv("DISTILFLOW_TEST_SERVE_KEY", SERVE_KEY)
    yield fake
    fake.stop()


def test_kserve_create_then_canary_update_is_patched_promoted_and_never_deleted(
    fake_kserve, model_on_s3, tiny_qwen3, tmp_path, capfd
):
    path = "/apis/serving.kserve.io/v1beta1/namespaces/llm/inferenceservices"
    settings = {
        "served_model_name": tiny_qwen3,  # the id `transformers serve` answers to
        "api_key_env": "DISTILFLOW_TEST_SERVE_KEY",
        "kserve": {
            "namespace": "llm",
            "api_key_secret": "qwen3-student-key",
            "deployment_mode": "Serverless",
        },
    }
    first = run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d1"), **settings))
    assert first.endpoint_url == fake_kserve.predictor_url + "/v1" and not first.dry_run
    assert (
        first.rollout
        == "created InferenceService llm/qwen3-student; revision qwen3-student-predictor-00001 serves all traffic"
    )
    info = json.loads((tmp_path / "d1" / "endpoint.json").read_text())
    smoke = info["smoke"]
    assert (
        0 < smoke["completion_tokens"] <= 8
        and smoke["stream"]["chunks"] > 0
        and set(smoke["thinking"]) == {"on", "off"}
    )
    assert info["url"] == first.endpoint_url and info["namespace"] == "llm"
    created = [r for r in fake_kserve.requests if r["method"] == "POST"]
    assert (
        len(created) == 1
        and created[0]["path"] == path
        and created[0]["query"] == {"fieldValidation": "Strict"}
    )
    assert created[0]["body"]["spec"]["predictor"]["containers"][0]["args"][:4] == [
        "--model",
        "/mnt/models",
        "--served-model-name",
        tiny_qwen3,
    ]
    # The kubeconfig's credentials reached the API server; they never reach a file.
    assert all(r["headers"].get("authorization") == f"Bearer {K8S_TOKEN}" for r in fake_kserve.requests)
    polls = [r for r in fake_kserve.requests if r["method"] == "GET"]
    assert len(polls) >= 3  # the status was polled until the controller flipped Ready

    # Redeploy under the same name with a new setting: the object is replaced (PUT at the resourceVersion
    # read) with a 10% canary, smoke-tested on the canary's own "latest" URL (the service URL still points
    # at the old revision), then promoted with a merge patch that removes canaryTrafficPercent.
    fake_kserve.requests.clear()
    second = run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d2"), max_model_len=2048, **settings))
    [put] = [r for r in fake_kserve.requests if r["method"] == "PUT"]
    assert put["path"] == f"{path}/qwen3-student" and put["query"] == {"fieldValidation": "Strict"}
    assert put["body"]["metadata"]["resourceVersion"]  # optimistic concurrency: fails if changed meanwhile
    assert put["body"]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "--max-model-len" in put["body"]["spec"]["predictor"]["containers"][0]["args"]
    [promotion] = [r for r in fake_kserve.requests if r["method"] == "PATCH"]
    assert promotion["headers"]["content-type"] == "application/merge-patch+json"
    assert promotion["body"] == {"spec": {"predictor": {"canaryTrafficPercent": None}}}
    assert "DELETE" not in fake_kserve.methods() and "POST" not in fake_kserve.methods()
    assert second.rollout == (
        "updated InferenceService llm/qwen3-student: revision qwen3-student-predictor-00002 replaced "
        "qwen3-student-predictor-00001 after a 10% canary passed the smoke test"
    )
    status = fake_kserve.objects[("llm", "qwen3-student")]["status"]["components"]["predictor"]
    assert status["latestRolledoutRevision"] == "qwen3-student-predictor-00002"
    assert second.endpoint_url == fake_kserve.predictor_url + "/v1"
    captured = capfd.readouterr()
    _assert_no_secrets(tmp_path, captured.out, captured.err)


def test_kserve_failed_update_rolls_back_to_the_previous_revision(
    fake_kserve, model_on_s3, tiny_qwen3, tmp_path
):
    settings = {
        "served_model_name": tiny_qwen3,
        "kserve": {"namespace": "llm", "deployment_mode": "Serverless"},
    }
    run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d1"), **settings))
    fake_kserve.failing_revisions.add(2)
    fake_kserve.requests.clear()
    with pytest.raises(BackendError) as err:
        run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d2"), max_model_len=999999, **settings))
    message = str(err.value)
    assert "ModelLoadFailed" in message and "CUDA out of memory" in message  # the cluster's own error
    assert "rolled back: the previous revision qwen3-student-predictor-00001 serves all traffic" in message
    [put] = [r["body"] for r in fake_kserve.requests if r["method"] == "PUT"]
    assert put["spec"]["predictor"]["canaryTrafficPercent"] == 10
    patches = [r["body"] for r in fake_kserve.requests if r["method"] == "PATCH"]
    assert patches == [{"spec": {"predictor": {"canaryTrafficPercent": 0}}}]
    assert "DELETE" not in fake_kserve.methods()
    assert not (tmp_path / "d2" / MARKER).exists()
    # The controller now routes everything to the old revision.
    from distilflow.components.deploy.kserve import KServeDeployment, custom_objects_api

    cfg = _cluster_config("kserve", model_on_s3, str(tmp_path / "d3"), **settings)
    obj = KServeDeployment(cfg, custom_objects_api(None)).get()
    traffic = obj["status"]["components"]["predictor"]["traffic"]
    assert {t["revisionName"]: t["percent"] for t in traffic} == {
        "qwen3-student-predictor-00001": 100,
        "qwen3-student-predictor-00002": 0,
    }


def test_kserve_timeout_names_the_service(fake_kserve, model_on_s3, tmp_path):
    fake_kserve.ready_after = 10_000
    cfg = _cluster_config("kserve", model_on_s3, str(tmp_path / "d"), startup_timeout_s=0.5)
    with pytest.raises(BackendError, match=r"qwen3-student was not Ready within startup_timeout_s=0.5"):
        run(cfg)


# PAI-EAS service description fields (Alibaba Cloud "Deploy services with JSON configuration files":
# metadata, cloud.computing.instances, containers, storage with an OSS mount).
EAS_MODEL = "oss://models-bucket/runs/r1/sft/model"


@pytest.fixture
def eas_env(monkeypatch):
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-test-id")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", EAS_AK_SECRET)
    monkeypatch.delenv("ALIBABA_CLOUD_SECURITY_TOKEN", raising=False)


def test_eas_dry_run_service_description(eas_env, tmp_path):
    out = tmp_path / "deploy"
    cfg = _cluster_config(
        "pai-eas",
        EAS_MODEL,
        str(out),
        dry_run=True,
        gpus=1,
        max_model_len=8192,
        reasoning_parser="deepseek_r1",
        image="eas-registry-vpc.cn-hangzhou.cr.aliyuncs.com/pai-eas/vllm:0.31",
        eas={"workspace_id": "12345", "instances": 2, "shm_size_gb": 16},
    )
    result = run(cfg)
    assert result.dry_run and result.target == "pai-eas" and result.served_model == "qwen3_student"
    description = json.loads((out / "eas-service.json").read_text())
    assert set(description) == {"metadata", "cloud", "containers", "storage"}
    assert description["metadata"] == {
        "name": "qwen3_student",
        "instance": 2,
        "rolling_strategy": {"max_surge": 1, "max_unavailable": 0},
        "workspace_id": "12345",
        "shm_size": 16,
    }
    assert description["cloud"] == {"computing": {"instances": [{"type": "ecs.gn7i-c16g1.4xlarge"}]}}
    [container] = description["containers"]
    assert set(container) == {"image", "script", "port"} and container["port"] == 8000
    assert container["image"] == "eas-registry-vpc.cn-hangzhou.cr.aliyuncs.com/pai-eas/vllm:0.31"
    assert container["script"] == (
        "python3 -m vllm.entrypoints.openai.api_server --model /model_dir --served-model-name qwen3_student "
        "--host 0.0.0.0 --port 8000 --tensor-parallel-size 1 --max-model-len 8192 --reasoning-parser deepseek_r1"
    )
    assert description["storage"] == [
        {"mount_path": "/model_dir", "oss": {"path": EAS_MODEL + "/", "readOnly": True}}
    ]
    # A dedicated resource group replaces cloud.computing with metadata.resource and its sizes.
    cfg = cfg.model_copy(update={"output_uri": str(tmp_path / "d2")})
    cfg.eas = cfg.eas.model_copy(update={"resource": "eas-r-abc", "cpu": 16, "memory_mb": 64000})
    run(cfg)
    dedicated = json.loads((tmp_path / "d2" / "eas-service.json").read_text())
    assert "cloud" not in dedicated
    assert {k: dedicated["metadata"][k] for k in ("resource", "gpu", "cpu", "memory")} == {
        "resource": "eas-r-abc",
        "gpu": 1,
        "cpu": 16,
        "memory": 64000,
    }
    _assert_no_secrets(tmp_path)


@pytest.fixture
def fake_eas(openai_endpoint, eas_env):
    from tests.fakes.eas_api_server import FakeEas

    fake = FakeEas(endpoint_url=openai_endpoint, access_token=EAS_SERVICE_TOKEN, ready_after=3)
    fake.api = fake.start()
    yield fake
    fake.stop()


def test_eas_create_update_and_failed_update_roll_back(fake_eas, tiny_qwen3, tmp_path, capfd):
    settings = {
        "served_model_name": tiny_qwen3,
        "smoke_thinking": True,
        "eas": {"endpoint": fake_eas.api, "protocol": "http", "workspace_id": "12345"},
    }
    first = run(_cluster_config("pai-eas", EAS_MODEL, str(tmp_path / "d1"), **settings))
    assert first.endpoint_url == fake_eas.endpoint_url + "/v1"
    assert first.rollout == "created EAS service qwen3_student; version 1 is Running"
    [create] = [r for r in fake_eas.requests if r["method"] == "POST"]
    assert create["path"] == "/api/v2/services" and create["query"] == {"WorkspaceId": "12345"}
    assert create["body"] == json.loads((tmp_path / "d1" / "eas-service.json").read_text())
    # Signed with the AccessKey pair from the environment: the id is named, the secret only signs.
    assert all("Credential=LTAI-test-id" in r["headers"]["authorization"] for r in fake_eas.requests)
    polls = [r for r in fake_eas.requests if r["method"] == "GET"]
    assert len(polls) >= 3 and all(r["path"] == "/api/v2/services/cn-hangzhou/qwen3_student" for r in polls)
    smoke = json.loads((tmp_path / "d1" / "endpoint.json").read_text())["smoke"]
    assert (
        smoke["completion_tokens"] > 0
        and smoke["stream"]["chunks"] > 0
        and set(smoke["thinking"]) == {"on", "off"}
    )

    # Redeploy under the same name: UpdateService (PUT) in place, never a delete.
    fake_eas.requests.clear()
    second = run(_cluster_config("pai-eas", EAS_MODEL, str(tmp_path / "d2"), max_model_len=4096, **settings))
    [update] = [r for r in fake_eas.requests if r["method"] == "PUT"]
    assert update["path"] == "/api/v2/services/cn-hangzhou/qwen3_student"
    assert "--max-model-len 4096" in update["body"]["containers"][0]["script"]
    assert second.rollout == "updated EAS service qwen3_student: version 2 replaced 1"
    assert {"DELETE", "POST"}.isdisjoint(r["method"] for r in fake_eas.requests)

    # A version that fails is rolled back to the one that ran before (UpdateServiceVersion).
    fake_eas.failing_versions.add(3)
    fake_eas.requests.clear()
    with pytest.raises(BackendError) as err:
        run(_cluster_config("pai-eas", EAS_MODEL, str(tmp_path / "d3"), max_model_len=999999, **settings))
    assert "is Failed: ContainerExit vLLM exited: CUDA out of memory" in str(err.value)
    assert "rolled back: EAS service qwen3_student is set back to version 2" in str(err.value)
    rollback = fake_eas.requests[-1]
    assert rollback["method"] == "PUT" and rollback["path"].endswith("/qwen3_student/version")
    assert rollback["body"] == {"Version": 2}
    assert fake_eas.services["qwen3_student"]["CurrentVersion"] == 2
    assert "DELETE" not in [r["method"] for r in fake_eas.requests]
    captured = capfd.readouterr()
    _assert_no_secrets(tmp_path, captured.out, captured.err, json.dumps(fake_eas.requests))


def test_eas_missing_credentials_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", raising=False)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-test-id")
    with pytest.raises(ConfigError, match=r"\$ALIBABA_CLOUD_ACCESS_KEY_SECRET is unset"):
        run(_cluster_config("pai-eas", EAS_MODEL, str(tmp_path / "d"), eas={"endpoint": "127.0.0.1:9"}))


def test_cluster_target_config_errors_are_collected(tmp_path):
    with pytest.raises(ConfigError) as err:
        DeployConfig.from_dict(
            {
                "output_uri": str(tmp_path),
                "model": str(tmp_path / "model"),
                "target": "kserve",
                "gpus": 1,
                "tensor_parallel_size": 2,
            }
        )
    message = str(err.value)
    assert "needs service_name" in message and "not a file path the cluster cannot read" in message
    assert "tensor_parallel_size=2 exceeds gpus=1" in message and "s3:// or gs://" in message
    with pytest.raises(ConfigError, match="not a valid EAS service name"):
        DeployConfig.from_dict(
            {"output_uri": "o", "model": EAS_MODEL, "target": "pai-eas", "service_name": "Bad-Name"}
        )
    with pytest.raises(ConfigError, match=r"tolerations\[0\] has unknown key"):
        DeployConfig.from_dict({"output_uri": "o", "model": "m", "kserve": {"tolerations": [{"keys": "x"}]}})


def test_component_takes_the_kserve_target_from_its_config_section(model_on_s3, tmp_path):
    """The deploy component under kfp.local: target, cluster settings and dry_run come from config['deploy']."""
    from kfp import dsl, local

    from distilflow.components.deploy.component import deploy

    stage_dir = tmp_path / "run" / "sft"
    stage_dir.mkdir(parents=True)
    (stage_dir / MARKER).write_text("done\n")
    (stage_dir / MANIFEST).write_text("{}")

    @dsl.pipeline(name="deploy-kserve-dry-run")
    def pipeline(output_uri: str, config: dict) -> str:
        model = dsl.importer(
            artifact_uri=model_on_s3,
            artifact_class=dsl.Model,
            metadata={"uri": model_on_s3, "stage_uri": str(stage_dir)},
        )
        return deploy(config=config, output_uri=output_uri, model=model.output).outputs["Output"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    config = {
        "deploy": {
            "target": "kserve",
            "service_name": "student",
            "dry_run": True,
            "gpus": 4,
            "kserve": {"namespace": "team-a", "gpu_type": "NVIDIA-H100-80GB-HBM3"},
        }
    }
    url = pipeline(output_uri=str(tmp_path / "run"), config=config).output
    assert url == ""  # a dry run deploys nothing
    import yaml

    manifest = yaml.safe_load((tmp_path / "run" / "deploy" / "inferenceservice.yaml").read_text())
    predictor = manifest["spec"]["predictor"]
    assert manifest["metadata"]["namespace"] == "team-a"
    assert predictor["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert predictor["containers"][0]["env"][0] == {"name": "STORAGE_URI", "value": model_on_s3}
    executor = json.loads(next((tmp_path / "kfp").rglob("deploy/executor_output.json")).read_text())
    meta = executor["artifacts"]["endpoint"]["artifacts"][0]["metadata"]
    assert (
        meta["target"] == "kserve"
        and meta["dry_run"] is True
        and meta["manifest_uri"].endswith("inferenceservice.yaml")
    )


def test_kserve_raw_deployment_update_failure_keeps_the_old_revision(
    fake_kserve, model_on_s3, tiny_qwen3, tmp_path
):
    """Without a canary step (RawDeployment, the default) a failed update is one PUT; the old pods keep serving."""
    settings = {"served_model_name": tiny_qwen3}
    run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d1"), **settings))
    fake_kserve.failing_revisions.add(2)
    fake_kserve.requests.clear()
    with pytest.raises(BackendError, match="previous revision qwen3-student-predictor-00001 keeps serving"):
        run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d2"), max_model_len=999999, **settings))
    writes = [r for r in fake_kserve.requests if r["method"] in ("PUT", "PATCH", "POST", "DELETE")]
    assert [r["method"] for r in writes] == ["PUT"]
    assert "canaryTrafficPercent" not in writes[0]["body"]["spec"]["predictor"]
    assert writes[0]["body"]["metadata"]["annotations"] == {
        "serving.kserve.io/deploymentMode": "RawDeployment"
    }


def test_kserve_canary_that_fails_the_smoke_test_is_rolled_back(
    fake_kserve, model_on_s3, tiny_qwen3, tmp_path
):
    """A canary that is Ready but does not answer for the served name fails with the server's error."""
    serverless = {"kserve": {"deployment_mode": "Serverless"}}
    run(
        _cluster_config(
            "kserve", model_on_s3, str(tmp_path / "d1"), served_model_name=tiny_qwen3, **serverless
        )
    )
    fake_kserve.requests.clear()
    with pytest.raises(BackendError) as err:
        run(
            _cluster_config(
                "kserve", model_on_s3, str(tmp_path / "d2"), served_model_name="no-such-model", **serverless
            )
        )
    message = str(err.value)
    assert "chat completion got HTTP" in message and "no-such-model" in message
    assert "rolled back: the previous revision qwen3-student-predictor-00001 serves all traffic" in message
    patches = [r["body"] for r in fake_kserve.requests if r["method"] == "PATCH"]
    assert patches[-1] == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_kserve_update_converges_to_the_spec_of_a_fresh_create(
    fake_kserve, model_on_s3, tiny_qwen3, tmp_path, mode
):
    """Redeploying with another node selector, no gpu_type, no service account and no tolerations leaves
    exactly the spec a fresh create of that config makes (a merge patch kept the old GPU label and
    service account); what other tools put in the metadata (finalizers, labels) stays."""
    fake_kserve.knative_features.update(
        {"kubernetes.podspec-nodeselector": "enabled", "kubernetes.podspec-tolerations": "enabled"}
    )
    common = {"served_model_name": tiny_qwen3, "smoke_test": False}
    old = {
        "deployment_mode": mode,
        "namespace": "llm",
        "node_selector": {"pool": "a100"},
        "gpu_type": "NVIDIA-A100-SXM4-80GB",
        "service_account_name": "old-models-sa",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    new = {"deployment_mode": mode, "namespace": "llm", "node_selector": {"pool": "h100"}}
    run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d1"), kserve=old, **common))
    stored = fake_kserve.objects[("llm", "qwen3-student")]
    stored["metadata"]["finalizers"] = ["inferenceservice.finalizers"]  # what KServe's controller adds
    stored["metadata"]["labels"]["team"] = "nlp"  # what someone else adds
    updated = run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d2"), kserve=new, **common))
    assert updated.rollout.startswith("updated InferenceService llm/qwen3-student")
    fresh = _cluster_config("kserve", model_on_s3, str(tmp_path / "d3"), kserve=new, **common)
    run(fresh.model_copy(update={"service_name": "qwen3-fresh"}))

    after = fake_kserve.objects[("llm", "qwen3-student")]
    assert after["spec"] == fake_kserve.objects[("llm", "qwen3-fresh")]["spec"]
    predictor = after["spec"]["predictor"]
    assert predictor["nodeSelector"] == {"pool": "h100"}  # no nvidia.com/gpu.product of the old GPU
    assert "serviceAccountName" not in predictor and "tolerations" not in predictor
    assert "canaryTrafficPercent" not in predictor  # promoted (Serverless) or never set (RawDeployment)
    assert after["metadata"]["finalizers"] == ["inferenceservice.finalizers"]
    assert after["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "distilflow", "team": "nlp"}
    assert fake_kserve.warnings == []


def test_kserve_serverless_with_a_node_selector_needs_knative_flags(fake_kserve, model_on_s3, tmp_path):
    """Knative's default config-features refuses nodeSelector/tolerations in the revision: the step fails
    at once naming the flags, before anything is applied (else it would wait out startup_timeout_s)."""
    kserve = {
        "deployment_mode": "Serverless",
        "gpu_type": "NVIDIA-A100-SXM4-80GB",
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    cfg = _cluster_config("kserve", model_on_s3, str(tmp_path / "d1"), kserve=kserve, startup_timeout_s=20)
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        run(cfg)
    assert time.monotonic() - started < 10  # at once, not after startup_timeout_s
    message = str(err.value)
    assert "kubernetes.podspec-nodeselector, kubernetes.podspec-tolerations is not enabled" in message
    assert "knative-serving/config-features" in message and "RawDeployment" in message
    assert {"POST", "PUT", "PATCH"}.isdisjoint(fake_kserve.methods())
    # "allowed" lets the fields through as well; then the service is created
    fake_kserve.knative_features.update(
        {"kubernetes.podspec-nodeselector": "allowed", "kubernetes.podspec-tolerations": "Enabled"}
    )
    fake_kserve.knative_features["kubernetes.podspec-volumes-emptydir"] = "disabled"  # the /dev/shm volume
    with pytest.raises(BackendError, match="kubernetes.podspec-volumes-emptydir is not enabled"):
        run(cfg.model_copy(update={"output_uri": str(tmp_path / "d2")}))
    fake_kserve.knative_features = None  # no Knative Serving at all
    with pytest.raises(
        BackendError,
        match="needs Knative Serving, but ConfigMap knative-serving/config-features does not exist",
    ):
        run(cfg.model_copy(update={"output_uri": str(tmp_path / "d3")}))


def test_kserve_deployment_mode_of_an_existing_service_is_not_changed(
    fake_kserve, model_on_s3, tiny_qwen3, tmp_path
):
    common = {"served_model_name": tiny_qwen3, "smoke_test": False}
    run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d1"), **common))
    fake_kserve.requests.clear()
    serverless = {"deployment_mode": "Serverless", "shm_size": None}
    with pytest.raises(
        BackendError, match=r"runs in deployment mode Standard and KServe cannot change the mode"
    ):
        run(_cluster_config("kserve", model_on_s3, str(tmp_path / "d2"), kserve=serverless, **common))
    assert {"PUT", "PATCH"}.isdisjoint(fake_kserve.methods())


@pytest.mark.parametrize(
    ("instance_type", "gpus", "tp", "error"),
    [
        ("ecs.gn7i-c16g1.4xlarge", 2, None, "gpus=2 but eas.instance_type=ecs.gn7i-c16g1.4xlarge has 1 GPU"),
        (
            "ecs.gn7i-c32g1.32xlarge",
            1,
            None,
            "gpus=1 but eas.instance_type=ecs.gn7i-c32g1.32xlarge has 4 GPU",
        ),
        (
            "ecs.gn6v-c8g1.16xlarge",
            8,
            16,
            "tensor_parallel_size=16 exceeds the 8 GPU(s) of ecs.gn6v-c8g1.16xlarge",
        ),
        ("ml.gu7i-c64m376.2-gu30", 2, 2, None),
        ("ecs.gn7e-c16g1.32xlarge", 8, 4, None),
    ],
)
def test_eas_gpus_must_match_the_instance_type(instance_type, gpus, tp, error):
    """gpus is the GPUs of one replica (vLLM's tensor parallel size follows it): on the public resource
    group it must be the instance type's GPU count where distilflow knows it."""
    fields = {
        "output_uri": "o",
        "model": EAS_MODEL,
        "target": "pai-eas",
        "service_name": "qwen3_student",
        "gpus": gpus,
        "tensor_parallel_size": tp,
        "eas": {"instance_type": instance_type},
    }
    if error is None:
        assert DeployConfig.from_dict(fields).gpus == gpus
        return
    with pytest.raises(ConfigError) as err:
        DeployConfig.from_dict(fields)
    assert error in str(err.value)
    # a dedicated resource group asks for metadata.gpu itself: no instance type to compare with
    DeployConfig.from_dict(
        {
            **fields,
            "tensor_parallel_size": None,
            "eas": {"instance_type": instance_type, "resource": "eas-r-1"},
        }
    )


def test_eas_says_what_it_assumes_about_an_unknown_instance_type(eas_env, tmp_path, capsys):
    cfg = _cluster_config(
        "pai-eas",
        EAS_MODEL,
        str(tmp_path / "d1"),
        dry_run=True,
        gpus=2,
        eas={"instance_type": "ecs.gn8is.4xlarge"},
    )
    run(cfg)
    out = capsys.readouterr().out
    assert "instance type ecs.gn8is.4xlarge is not in distilflow's GPU table: gpus=2 is assumed" in out
    run(
        _cluster_config("pai-eas", EAS_MODEL, str(tmp_path / "d2"), dry_run=True, eas={"resource": "eas-r-1"})
    )
    assert "dedicated resource group eas-r-1: each replica asks for metadata.gpu=1" in capsys.readouterr().out
    run(_cluster_config("pai-eas", EAS_MODEL, str(tmp_path / "d3"), dry_run=True))  # a known type: no note
    assert "note:" not in capsys.readouterr().out
