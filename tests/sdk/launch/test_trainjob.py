"""sft with launcher=trainjob: the stage submits a Kubeflow Trainer TrainJob through the `kubeflow` SDK
to a loopback Kubernetes API server (tests/fakes/trainjob_api_server.py, playing the Trainer controller),
streams node-0's log, waits, and returns the result the job wrote (or fails with the job's reason).
The "job" here is the test's stand-in for the nodes: it reads the config URI from the submitted
command and writes the finished sft output (manifest + marker) with that config, as the real
`distilflow stage sft` would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distilflow.components.sft.config import SftConfig, SftResult
from distilflow.errors import DistilflowError
from distilflow.outputs import StageOutput
from tests.fakes.k8s_api_server import write_kubeconfig
from tests.fakes.trainjob_api_server import FakeTrainer

SECRET_VALUE = "s3cr3t-value-never-sent"
LOG = ["[sft] 40 examples, 0 dropped", "[sft] step 10/20 loss 2.31 eta 0:01:10", "[sft] complete"]


def the_config_uri(trainjob: dict) -> str:
    command = trainjob["spec"]["trainer"]["command"]
    return command[command.index("--config") + 1]


def finished_job(trainjob: dict) -> None:
    """What the nodes do: run sft with the config the command names (here: write its finished output)."""
    config = SftConfig.load(the_config_uri(trainjob))
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
    return None


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    servers = []

    def start(job_body, finish_at=3, trainer_version="v2.3.0"):
        fake = FakeTrainer(job_body, LOG, finish_at=finish_at, trainer_version=trainer_version)
        url = fake.start()
        servers.append(fake)
        monkeypatch.setenv("KUBECONFIG", write_kubeconfig(str(tmp_path / "kubeconfig"), url, "tok", "team-a"))
        return fake

    monkeypatch.setenv("DISTILFLOW_S3_ENDPOINT_URL", "http://minio.storage:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE)
    yield start
    for fake in servers:
        fake.stop()


def make_config(tmp_path, **extra) -> SftConfig:
    fields = dict(
        output_uri=str(tmp_path / "run" / "sft"),
        data_uri=str(tmp_path / "curate"),
        model=str(tmp_path / "student"),
        launcher="trainjob",
        nodes=3,
        gpus_per_node=8,
        env=["DISTILFLOW_S3_ENDPOINT_URL"],
        secret_env={"AWS_SECRET_ACCESS_KEY": "s3-creds/secret-key"},
    )
    fields.update(extra)
    return SftConfig(**fields)


def test_trainjob_submits_streams_and_returns_result(cluster, tmp_path, capsys):
    from distilflow.images import image
    from distilflow.launch import trainjob

    fake = cluster(finished_job)
    config = make_config(tmp_path)
    result = SftResult.model_validate(trainjob.launch("sft", config, poll_interval=0.05))

    [job] = fake.posted()
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 3
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] in (8, "8")
    assert trainer["image"] == image("train")
    command = " ".join(trainer["command"])
    assert "distilflow stage sft --config" in command and command.startswith("torchrun")
    assert {"name": "DISTILFLOW_S3_ENDPOINT_URL", "value": "http://minio.storage:9000"} in trainer["env"]
    # the secret goes by reference only, in spec.trainer.env (Trainer >= 2.2 refuses env in runtimePatches)
    assert {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret-key"}},
    } in trainer["env"]
    assert "runtimePatches" not in job["spec"]
    [create] = [r for r in fake.requests if r["method"] == "POST"]
    assert create["query"] == {"fieldValidation": "Strict"}  # unknown fields fail instead of vanishing
    assert fake.jobs[("team-a", job["metadata"]["name"])]["spec"]["trainer"]["env"] == trainer["env"]
    assert all(SECRET_VALUE not in r["raw"] for r in fake.requests)
    assert all(
        r["path"].startswith(("/api/v1/namespaces/team-a/", "/api/v1/namespaces/kubeflow-system/", "/apis/"))
        for r in fake.requests
    )

    # the job ran with launcher=local and the same output_uri
    job_config = SftConfig.load(the_config_uri(job))
    assert job_config.launcher == "local" and job_config.output_uri == config.output_uri
    assert job_config.nodes == 3 and job_config.secret_env == config.secret_env

    # node-0's log was streamed (follow) into this step's log
    logs = [r for r in fake.requests if r["path"].endswith("/log")]
    assert (
        logs
        and logs[0]["query"].get("follow", "").lower() == "true"
        and logs[0]["query"].get("container") == "node"
    )
    assert "-node-0-0-" in logs[0]["path"]
    printed = capsys.readouterr().out
    for line in LOG:
        assert f"[sft][node-0] {line}" in printed

    assert result.steps == 20 and result.final_loss == 1.25
    assert result.model_uri == os.path.join(config.output_uri, "model")

    # a rerun of the same config reuses the finished output without submitting again
    again = trainjob.launch("sft", config, poll_interval=0.05)
    assert again == result.model_dump() and len(fake.posted()) == 1


def test_trainjob_failure_fails_the_step_with_the_reason(cluster, tmp_path, monkeypatch):
    import distilflow.launch.trainjob
    from distilflow.components.sft.run import run

    fake = cluster(lambda job: ("JobSetFailed", "node-1 exited with code 1: CUDA out of memory"))
    config = make_config(tmp_path, nodes=2, gpus_per_node=0, secret_env={}, env=[])
    original = distilflow.launch.trainjob.launch
    monkeypatch.setattr(
        distilflow.launch.trainjob, "launch", lambda stage, cfg: original(stage, cfg, poll_interval=0.05)
    )
    with pytest.raises(
        DistilflowError, match=r"failed: JobSetFailed: node-1 exited with code 1: CUDA out of memory"
    ):
        run(config)  # the sft stage dispatches to the launcher
    [job] = fake.posted()
    assert job["spec"]["trainer"]["numNodes"] == 2 and "resourcesPerNode" not in job["spec"]["trainer"]
    assert not os.path.exists(os.path.join(config.output_uri, "_COMPLETE"))


def test_trainjob_completed_without_output_is_an_error(cluster, tmp_path):
    from distilflow.launch import trainjob

    cluster(lambda job: None)  # "completes" but writes nothing
    with pytest.raises(DistilflowError, match="no completion marker"):
        trainjob.launch("sft", make_config(tmp_path), poll_interval=0.05)


@pytest.mark.unit
def test_secret_env_must_be_a_reference(tmp_path):
    with pytest.raises(Exception, match="secret-name/key"):
        make_config(tmp_path, secret_env={"AWS_SECRET_ACCESS_KEY": SECRET_VALUE})


def test_launcher_path_imports_no_torch():
    code = (
        "import sys, distilflow.launch.trainjob, distilflow.components.sft.run, kubeflow.trainer\n"
        "print([m for m in ('torch', 'transformers', 'trl') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_dpo_runs_as_a_trainjob(cluster, tmp_path, monkeypatch):
    """dpo shares the launcher fields (distilflow.training.fields.LauncherFields): launcher=trainjob submits a TrainJob
    running `distilflow stage dpo` on every node with launcher=local."""
    import distilflow.launch.trainjob
    from distilflow.components.dpo.config import DpoConfig, DpoResult
    from distilflow.components.dpo.run import run

    def finished_dpo(trainjob: dict) -> None:
        cfg = DpoConfig.load(the_config_uri(trainjob))
        out = StageOutput(cfg.output_uri, "dpo")
        out.begin(cfg)
        result = DpoResult(
            model_uri=os.path.join(cfg.output_uri, "model"),
            first_loss=0.69,
            final_loss=0.2,
            final_reward_accuracy=1.0,
            steps=12,
            rows_used=8,
            rows_dropped=0,
            per_sample_beta=True,
        )
        out.finish(result=result.model_dump())

    fake = cluster(finished_dpo)
    original = distilflow.launch.trainjob.launch
    monkeypatch.setattr(
        distilflow.launch.trainjob, "launch", lambda stage, cfg: original(stage, cfg, poll_interval=0.05)
    )
    config = DpoConfig(
        output_uri=str(tmp_path / "run" / "dpo"),
        data_uri=str(tmp_path / "curate"),
        model=str(tmp_path / "sft-model"),
        launcher="trainjob",
        nodes=2,
        gpus_per_node=8,
        deepspeed="zero3",
    )
    result = run(config)
    assert result.steps == 12 and result.final_reward_accuracy == 1.0
    [job] = fake.posted()
    assert "distilflow stage dpo --config" in " ".join(job["spec"]["trainer"]["command"])
    assert job["spec"]["trainer"]["numNodes"] == 2
    job_config = DpoConfig.load(the_config_uri(job))
    assert job_config.launcher == "local" and job_config.deepspeed == "zero3"


@pytest.mark.unit
@pytest.mark.parametrize("stage", ["sft", "dpo", "reward", "rl"])
def test_launcher_dlc_dispatches_to_distilflow_dlc(stage, tmp_path, monkeypatch):
    """launcher=dlc hands the stage and its config to distilflow.launch.dlc.launch (imported only then), whose
    result (read back from the job's finished output) becomes the stage's result."""
    import importlib

    import distilflow.launch.dlc

    calls = []
    result = {
        "model_uri": str(tmp_path / "out" / "model"),
        "first_loss": 1.0,
        "final_loss": 0.5,
        "steps": 3,
        "rows_used": 4,
        "rows_dropped": 0,
    }
    inputs = {"data_uri": str(tmp_path / "curate")}
    if stage == "dpo":
        result.update(final_reward_accuracy=1.0, per_sample_beta=False)
    if stage == "reward":
        result.update(train_accuracy_before=0.5, train_accuracy=1.0, heldout_accuracy=0.9, rows_heldout=2)
    if stage == "rl":
        del result["rows_used"], result["rows_dropped"]
        result.update(first_reward=0.1, final_reward=0.7, problems_used=4, problems_skipped=0)
        inputs = {"problems_uri": str(tmp_path / "problems.jsonl")}

    def launch(name, cfg):
        calls.append((name, cfg))
        return result

    monkeypatch.setattr(distilflow.launch.dlc, "launch", launch, raising=False)
    config_module = importlib.import_module(f"distilflow.components.{stage}.config")
    run = importlib.import_module(f"distilflow.components.{stage}.run").run
    cls = getattr(config_module, f"{stage.capitalize()}Config")
    config = cls(
        output_uri=str(tmp_path / "out"),
        **inputs,
        model=str(tmp_path / "student"),
        launcher="dlc",
        nodes=4,
        gpus_per_node=8,
        dlc={"region": "cn-beijing", "workspace_id": "ws-1", "resource_id": "quota-1"},
    )
    got = run(config)
    assert calls == [(stage, config)] and calls[0][1].dlc.workspace_id == "ws-1"
    assert got.steps == 3 and got.model_uri == result["model_uri"]
    assert not os.path.exists(tmp_path / "out")  # nothing trained or written here


def test_a_job_that_ends_well_but_wrote_another_configs_output_fails_the_step(cluster, tmp_path):
    """What both launchers (TrainJob, PAI-DLC) check after the job: its output must be of this config."""
    from distilflow.launch import trainjob

    def other_config_job(body: dict) -> None:
        config = SftConfig.load(the_config_uri(body))
        finished_job({"spec": {"trainer": {"command": ["--config", _other(config, tmp_path)]}}})

    cluster(other_config_job)
    with pytest.raises(
        DistilflowError, match=r"TrainJob .* succeeded, but .* holds the output of another config"
    ):
        trainjob.launch("sft", make_config(tmp_path), poll_interval=0.05)


def _other(config: SftConfig, tmp_path) -> str:
    """A config file of the same output with another learning rate."""
    path = str(tmp_path / "other.yaml")
    with open(path, "w") as f:
        f.write(config.model_copy(update={"learning_rate": config.learning_rate * 2}).to_yaml())
    return path


@pytest.mark.parametrize("version", ["v2.2.0", "v2.3.0", "dev"])
def test_the_supported_trainer_versions_admit_the_trainjob(cluster, tmp_path, version, capsys):
    """The same body (secrets in spec.trainer.env) passes the TrainJob CRD schema and webhook of every
    supported Trainer version (v2.2.0 is the floor; dev = a master build)."""
    from distilflow.launch import trainjob

    fake = cluster(finished_job, finish_at=1, trainer_version=version)
    result = trainjob.launch("sft", make_config(tmp_path), poll_interval=0.01)
    assert result["steps"] == 20 and len(fake.jobs) == 1 and fake.warnings == []
    assert ("(not a release number); going on" in capsys.readouterr().out) == (version == "dev")


def test_a_trainer_below_the_floor_is_refused_before_submitting(cluster, tmp_path):
    """Trainer v2.1 publishes no version ConfigMap (and has no runtimePatches): refused, nothing posted."""
    from distilflow.launch import trainjob

    fake = cluster(finished_job, trainer_version="v2.1.0")
    with pytest.raises(DistilflowError, match=r"kubeflow-trainer-public does not exist.*Trainer >= v2\.2\.0"):
        trainjob.launch("sft", make_config(tmp_path), poll_interval=0.01)
    assert fake.posted() == [] and fake.jobs == {}


def test_trainer_versions_are_parsed_and_ordered():
    from distilflow.launch.trainer_version import FLOOR, parse

    assert parse("v2.3.0") == (2, 3, 0) and parse("2.2.1") == (2, 2, 1) and parse("v2.2.0-rc.1") == (2, 2, 0)
    assert parse("dev") is None and parse("v2.1.0") < FLOOR <= parse("v2.2.0")


def test_the_trainer_webhook_refuses_env_in_a_node_runtime_patch(cluster, tmp_path):
    """The body distilflow used to send (secrets as env of the node container in runtimePatches, built
    with the kubeflow SDK's options) is what Trainer >= 2.2's jobset plugin refuses: the strict fake
    answers as the real webhook does, so a test of that body fails."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import (
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
        TrainingRuntimeSpecPatch,
    )

    from distilflow.launch.trainjob import _client, secret_refs

    fake = cluster(finished_job)
    container = ContainerPatch(name="node", env=secret_refs({"AWS_SECRET_ACCESS_KEY": "s3-creds/secret-key"}))
    rjob = ReplicatedJobPatch(
        name="node",
        template=JobTemplatePatch(
            spec=JobSpecPatch(template=PodTemplatePatch(spec=PodSpecPatch(containers=[container])))
        ),
    )
    patch = RuntimePatch(
        training_runtime_spec=TrainingRuntimeSpecPatch(
            template=JobSetTemplatePatch(spec=JobSetSpecPatch(replicated_jobs=[rjob]))
        )
    )
    client = _client(None, None)
    with pytest.raises(RuntimeError) as err:
        client.train(
            runtime="torch-distributed", trainer=CustomTrainerContainer(image="img"), options=[patch]
        )
    cause = err.value.__cause__
    assert cause.status == 403
    message = json.loads(cause.body)["message"]
    assert message.startswith(
        'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
    )
    assert "spec.runtimePatches: Invalid value: " in message
    assert message.endswith(
        "must not have envs for the dataset-initializer, model-initializer, node containers"
    )
    assert fake.jobs == {}


def test_torchrun_reserved_variables_are_refused_in_the_config(tmp_path):
    with pytest.raises(Exception, match=r"\['PET_NNODES'\].*torchrun"):
        make_config(tmp_path, secret_env={"PET_NNODES": "s/k"})


def test_a_refused_trainjob_fails_the_step_with_the_servers_message(cluster, tmp_path, monkeypatch):
    """The apiserver's or webhook's own message reaches the step's error (the SDK's create call would
    say only "Failed to create TrainJob")."""
    from distilflow.launch import trainjob

    fake = cluster(finished_job)
    monkeypatch.setenv("PET_MASTER_PORT", "29500")
    with pytest.raises(DistilflowError) as err:  # env= bypasses the config's own check on purpose
        trainjob.launch("sft", make_config(tmp_path), env=["PET_MASTER_PORT"], poll_interval=0.01)
    message = str(err.value)
    assert message.startswith("sft: the cluster refused TrainJob team-a/sft-") and "(HTTP 403)" in message
    assert 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request' in message
    assert message.endswith("must not have reserved envs, invalid envs configured: [PET_MASTER_PORT]")
    assert fake.jobs == {}
