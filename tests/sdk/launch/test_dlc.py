"""sft with launcher=dlc: the stage creates a PAI-DLC job through Alibaba Cloud's DLC SDK
(alibabacloud-pai-dlc20201203) against a loopback API server (tests/fakes/dlc_api_server.py), prints node
0's log, waits, and returns the result the job wrote (or fails with DLC's reason). The "job" is the
test's stand-in for the nodes: it reads the config URI from the submitted command and writes the
finished sft output with that config, as `distilflow stage sft` would on the nodes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from distilflow.components.sft.config import SftConfig, SftResult
from distilflow.errors import ConfigError, DistilflowError
from distilflow.outputs import StageOutput
from tests.fakes.dlc_api_server import FakeDlc

ACCESS_SECRET = "ak-secret-never-sent-in-clear"
OSS_SECRET = "oss-secret-value-9c1e"
LOG = ["[sft] 40 examples, 0 dropped", "[sft] step 10/20 loss 2.31 eta 0:01:10", "[sft] complete"]


def the_config_uri(body: dict) -> str:
    command = shlex.split(body["UserCommand"])
    return command[command.index("--config") + 1]


def finished_job(body: dict) -> None:
    config = SftConfig.load(the_config_uri(body))
    out = StageOutput(config.output_uri, "sft")
    out.begin(config)
    result = SftResult(
        model_uri=os.path.join(config.output_uri, "model"),
        first_loss=2.5,
        final_loss=1.25,
        steps=20,
        rows_used=40,
        rows_dropped=0,
        seed=config.seed,
    )
    out.finish(result=result.model_dump())


@pytest.fixture
def dlc(monkeypatch):
    servers = []

    def start(on_finish, finish_at=4):
        fake = FakeDlc(on_finish, LOG, finish_at=finish_at)
        servers.append(fake)
        return fake, fake.start()

    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-test")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ACCESS_SECRET)
    monkeypatch.setenv("OSS_ENDPOINT", "oss-cn-hangzhou-internal.aliyuncs.com")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", OSS_SECRET)
    yield start
    for fake in servers:
        fake.stop()


def make_config(tmp_path, endpoint: str, **extra) -> SftConfig:
    dlc = {
        "endpoint": endpoint,
        "protocol": "http",
        "region": "cn-hangzhou",
        "workspace_id": "ws-1234",
        "resource_id": "quota-5678",
        "cpu": 96,
        "memory_gb": 800,
        "shared_memory_gb": 64,
        "secret_env_names": ["OSS_ACCESS_KEY_SECRET"],
    }
    dlc.update(extra.pop("dlc", {}))
    fields = dict(
        output_uri=str(tmp_path / "run" / "sft"),
        data_uri=str(tmp_path / "curate"),
        model=str(tmp_path / "student"),
        launcher="dlc",
        nodes=4,
        gpus_per_node=8,
        env=["OSS_ENDPOINT"],
        dlc=dlc,
    )
    fields.update(extra)
    return SftConfig(**fields)


def test_dlc_submits_streams_and_returns_result(dlc, tmp_path, capsys):
    from distilflow.images import image
    from distilflow.launch import dlc as launcher

    fake, endpoint = dlc(finished_job)
    config = make_config(tmp_path, endpoint)
    result = SftResult.model_validate(launcher.launch("sft", config, poll_interval=0.01))

    [body] = fake.created()
    assert body["JobType"] == "PyTorchJob"
    assert body["WorkspaceId"] == "ws-1234" and body["ResourceId"] == "quota-5678"
    assert (
        body["DisplayName"]
        == f"distilflow-sft-{config.model_copy(update={'launcher': 'local'}).fingerprint()[:8]}"
    )
    [spec] = body["JobSpecs"]
    assert spec["Type"] == "Worker" and spec["PodCount"] == 4 and spec["Image"] == image("train")
    assert spec["ResourceConfig"] == {"GPU": "8", "CPU": "96", "Memory": "800Gi", "SharedMemory": "64Gi"}
    assert "EcsSpec" not in spec
    command = body["UserCommand"]
    assert command.startswith("torchrun --nnodes=${WORLD_SIZE:-1} --node_rank=${RANK:-0} ")
    assert (
        "--master_addr=${MASTER_ADDR:-127.0.0.1}" in command and "--nproc_per_node=8 --no-python" in command
    )
    assert " distilflow stage sft --config " in command
    # plain env and the named secret travel as Envs; the secret is never printed
    assert body["Envs"] == {
        "OSS_ENDPOINT": "oss-cn-hangzhou-internal.aliyuncs.com",
        "OSS_ACCESS_KEY_SECRET": OSS_SECRET,
    }
    # the API was called with the AccessKey id as a signature, never with the secret itself
    for r in fake.requests:
        assert ACCESS_SECRET not in r["raw"] and ACCESS_SECRET not in str(r["headers"])
        assert "LTAI-test" in r["headers"]["authorization"]
    paths = {(r["method"], r["path"].split("/pods/")[0].rsplit("/", 1)[0]) for r in fake.requests}
    assert paths == {("POST", "/api/v1"), ("GET", "/api/v1/jobs")}
    assert any(r["path"].endswith("/pods/dlc0000000001-worker-0/logs") for r in fake.requests)

    # the job ran with launcher=local and the same output_uri
    job_config = SftConfig.load(the_config_uri(body))
    assert job_config.launcher == "local" and job_config.output_uri == config.output_uri
    assert job_config.nodes == 4 and job_config.dlc.workspace_id == "ws-1234"

    printed = capsys.readouterr().out
    for line in LOG:
        assert printed.count(f"[sft][node-0] {line}") == 1
    assert "PAI-DLC job dlc0000000001: Running" in printed and "succeeded" in printed
    assert OSS_SECRET not in printed and ACCESS_SECRET not in printed
    assert result.steps == 20 and result.final_loss == 1.25
    assert result.model_uri == os.path.join(config.output_uri, "model")

    # a rerun of the same config reuses the finished output without submitting again
    again = launcher.launch("sft", config, poll_interval=0.01)
    assert again == result.model_dump() and len(fake.created()) == 1


def test_dlc_failure_fails_the_step_with_the_reason(dlc, tmp_path, monkeypatch):
    """The sft stage dispatches launcher=dlc to distilflow.launch.dlc.launch; DLC's reason ends up in the error."""
    import distilflow.launch.dlc
    from distilflow.components.sft.run import run

    fake, endpoint = dlc(lambda body: ("JobFailed", "worker-1 exited with code 1: CUDA out of memory"))
    config = make_config(
        tmp_path,
        endpoint,
        nodes=2,
        gpus_per_node=0,
        env=[],
        dlc={"resource_id": None, "ecs_spec": "ecs.gn7i-c32g1.8xlarge", "secret_env_names": []},
    )
    original = distilflow.launch.dlc.launch
    monkeypatch.setattr(
        distilflow.launch.dlc, "launch", lambda stage, cfg: original(stage, cfg, poll_interval=0.01)
    )
    with pytest.raises(
        DistilflowError,
        match=r"PAI-DLC job .* failed: JobFailed: worker-1 exited with code 1: CUDA out of memory",
    ):
        run(config)
    [body] = fake.created()
    [spec] = body["JobSpecs"]
    assert spec["EcsSpec"] == "ecs.gn7i-c32g1.8xlarge" and "ResourceConfig" not in spec
    assert "ResourceId" not in body and "Envs" not in body
    assert "--nproc_per_node=1" in body["UserCommand"]
    assert not os.path.exists(os.path.join(config.output_uri, "_COMPLETE"))


def test_dlc_succeeded_without_output_is_an_error(dlc, tmp_path):
    from distilflow.launch import dlc as launcher

    _, endpoint = dlc(lambda body: None)  # "succeeds" but writes nothing
    with pytest.raises(DistilflowError, match="no completion marker"):
        launcher.launch("sft", make_config(tmp_path, endpoint), poll_interval=0.01)


def test_dlc_refuses_what_it_cannot_honour(dlc, tmp_path, monkeypatch):
    from distilflow.launch import dlc as launcher

    fake, endpoint = dlc(finished_job)
    k8s_refs = make_config(tmp_path, endpoint, secret_env={"AWS_SECRET_ACCESS_KEY": "s3-creds/secret-key"})
    with pytest.raises(ConfigError, match="Kubernetes Secrets, which PAI-DLC cannot read"):
        launcher.launch("sft", k8s_refs)
    nowhere = make_config(tmp_path, endpoint, dlc={"workspace_id": None, "resource_id": None})
    with pytest.raises(ConfigError, match="dlc.workspace_id is not set.*neither dlc.resource_id"):
        launcher.launch("sft", nowhere)
    monkeypatch.delenv("OSS_ACCESS_KEY_SECRET")
    with pytest.raises(ConfigError, match="secret_env_names lists OSS_ACCESS_KEY_SECRET"):
        launcher.launch("sft", make_config(tmp_path, endpoint))
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", OSS_SECRET)
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    with pytest.raises(ConfigError, match="ALIBABA_CLOUD_ACCESS_KEY_SECRET is unset"):
        launcher.launch("sft", make_config(tmp_path, endpoint))
    assert fake.created() == []


def test_dlc_launcher_imports_no_torch():
    code = (
        "import sys, distilflow.launch.dlc, alibabacloud_pai_dlc20201203.client\n"
        "print([m for m in ('torch', 'transformers', 'trl') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
