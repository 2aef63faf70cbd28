"""Every object distilflow sends to a cluster, through the published schemas and the servers' rules.

- deploy target kserve, every option (both modes, node selector/GPU type/tolerations, resources, shm,
  service account, API key secret, replicas, GPUs, vLLM arguments), as created and as the update that
  replaces it (with a canary) plus the promotion and rollback patches: the vendored InferenceService
  CRD of KServe v0.15.0 and v0.20.0 (fieldValidation=Strict) and KServe's webhooks;
- deploy target pai-eas, public and dedicated resources: EAS's documented service JSON;
- every launcher of every training stage (sft, dpo, reward, rl): the TrainJob through the strict
  Trainer fake (CRD of v2.2.0 and v2.3.0 + the Trainer webhook), the PAI-DLC CreateJob (dedicated
  and public resources) through the strict DLC fake (the DLC SDK's model + CreateJob rules);
- every recipe's compiled PipelineSpec and PlatformSpec (the golden specs, which
  tests/test_pipelines.py keeps equal to the compiled ones): strict proto parses as KFP's API
  server and driver do. (Run bodies go through the strict KFP fake in tests/test_cli.py.)
"""

from __future__ import annotations

import copy
import importlib
import os

import pytest

from distilflow.errors import DistilflowError
from tests.fakes import dlc_request_schema, eas_service_schema, kserve_webhook
from tests.fakes.k8s_api_server import SCHEMAS as KSERVE_SCHEMAS
from tests.fakes.k8s_schema import admit, load_crd

MODEL_S3 = "s3://models/runs/r1/sft/model"
MODEL_OSS = "oss://models/runs/r1/sft/model"
STAGES = ("sft", "dpo", "reward", "rl")

KSERVE_OPTIONS = [
    {},
    {"kserve": {"deployment_mode": "Serverless"}},
    {
        "gpus": 4,
        "max_model_len": 32768,
        "image": "registry.example/vllm:0.31",
        "vllm_args": ["--enable-prefix-caching"],
        "reasoning_parser": "deepseek_r1",
        "kserve": {
            "namespace": "llm",
            "gpu_type": "NVIDIA-H100-80GB-HBM3",
            "node_selector": {"pool": "gpu"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {
                    "key": "spot",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                },
            ],
            "cpu": "16",
            "memory": "128Gi",
            "shm_size": "32Gi",
            "min_replicas": 2,
            "max_replicas": 4,
            "service_account_name": "models-s3",
            "api_key_secret": "student-key",
            "api_key_secret_key": "token",
        },
    },
    {"gpus": 0, "kserve": {"shm_size": None, "min_replicas": 0, "deployment_mode": "Serverless"}},
    {"gpus": 2, "tensor_parallel_size": 1, "kserve": {"gpu_resource": "amd.com/gpu", "gpu_type": "MI300X"}},
]


def deploy_config(target: str, model: str, tmp_path, **overrides):
    from distilflow.components.deploy.config import DeployConfig

    base = {
        "output_uri": str(tmp_path / "deploy"),
        "model": model,
        "target": target,
        "service_name": "qwen3-student" if target == "kserve" else "qwen3_student",
    }
    return DeployConfig.from_dict({**base, **overrides})


def kserve_admit(obj: dict, version: str, old: dict | None = None) -> dict:
    stored, warnings = admit(load_crd(KSERVE_SCHEMAS[version]), obj, old=old, field_validation="Strict")
    kserve_webhook.default(stored, version)
    kserve_webhook.validate(stored, old, version)
    assert warnings == []
    return stored


@pytest.mark.parametrize("version", sorted(KSERVE_SCHEMAS))
@pytest.mark.parametrize("options", KSERVE_OPTIONS, ids=range(len(KSERVE_OPTIONS)))
def test_every_inferenceservice_distilflow_writes_is_admitted(options, version, tmp_path):
    from distilflow.components.deploy import kserve
    from tests.fakes.k8s_api_server import merge_patch

    config = deploy_config("kserve", MODEL_S3, tmp_path, **options)
    manifest = kserve.render(config, thinking=True)
    created = kserve_admit(manifest, version)
    assert created["spec"]["predictor"]["containers"][0]["name"] == "kserve-container"

    # the update: the replacement of the stored object, with a canary step, then promotion or rollback
    created["metadata"].update(resourceVersion="7", uid="u-1", finalizers=["inferenceservice.finalizers"])
    created["status"] = {"deploymentMode": kserve_webhook.mode_of(config.kserve.deployment_mode, version)}
    body = kserve.replacement(created, manifest)
    body["spec"]["predictor"]["canaryTrafficPercent"] = config.kserve.canary_traffic_percent
    replaced = kserve_admit(body, version, old=created)
    for patch in (
        {"spec": {"predictor": {"canaryTrafficPercent": None}}},
        {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
    ):
        merged = merge_patch({k: v for k, v in replaced.items() if k != "status"}, patch)
        kserve_admit(merged, version, old=replaced)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "gpus": 4,
            "eas": {
                "instance_type": "ecs.gn7i-c32g1.32xlarge",
                "instances": 3,
                "shm_size_gb": 64,
                "workspace_id": "1234",
            },
        },
        {
            "gpus": 2,
            "eas": {
                "resource": "eas-r-abc",
                "cpu": 32,
                "memory_mb": 256000,
                "max_surge": 2,
                "max_unavailable": 1,
            },
        },
        {
            "gpus": 1,
            "max_model_len": 8192,
            "eas": {"model_mount": "/mnt/model", "port": 9000, "endpoint_kind": "intranet"},
        },
    ],
    ids=range(4),
)
def test_every_eas_service_description_is_valid(options, tmp_path):
    from distilflow.components.deploy import eas

    description = eas.render(deploy_config("pai-eas", MODEL_OSS, tmp_path, **options), thinking=False)
    assert eas_service_schema.problems(description) == []


def stage_config(stage: str, tmp_path, **fields):
    module = importlib.import_module(f"distilflow.components.{stage}.config")
    cls = getattr(module, f"{stage.capitalize()}Config")
    inputs = (
        {"problems_uri": str(tmp_path / "problems.jsonl")}
        if stage == "rl"
        else {"data_uri": str(tmp_path / "data")}
    )
    return cls(output_uri=str(tmp_path / "run" / stage), model=str(tmp_path / "student"), **inputs, **fields)


@pytest.mark.parametrize("trainer_version", ["v2.2.0", "v2.3.0"])
@pytest.mark.parametrize("stage", STAGES)
def test_every_trainjob_is_admitted(stage, trainer_version, tmp_path, monkeypatch):
    """Each stage's TrainJob (with env, secrets and GPUs) passes the strict Trainer fake; the job itself
    then fails on purpose, which the launcher reports."""
    from distilflow.launch import trainjob
    from tests.fakes.k8s_api_server import write_kubeconfig
    from tests.fakes.trainjob_api_server import FakeTrainer

    monkeypatch.setenv("DISTILFLOW_S3_ENDPOINT_URL", "http://minio:9000")
    fake = FakeTrainer(
        lambda job: ("JobSetFailed", "stop here"), [], finish_at=1, trainer_version=trainer_version
    )
    url = fake.start()
    try:
        monkeypatch.setenv("KUBECONFIG", write_kubeconfig(str(tmp_path / "kubeconfig"), url, "tok", "team-a"))
        config = stage_config(
            stage,
            tmp_path,
            launcher="trainjob",
            nodes=2,
            gpus_per_node=8 if stage != "reward" else 0,
            env=["DISTILFLOW_S3_ENDPOINT_URL"],
            secret_env={"AWS_SECRET_ACCESS_KEY": "s3-creds/secret-key", "HF_TOKEN": "hf/token"},
        )
        with pytest.raises(DistilflowError, match="failed: JobSetFailed: stop here"):
            trainjob.launch(stage, config, poll_interval=0.01)
    finally:
        fake.stop()
    [job] = fake.jobs.values()
    assert f"distilflow stage {stage} --config" in " ".join(job["spec"]["trainer"]["command"])
    assert fake.warnings == []


@pytest.mark.parametrize("resources", ["dedicated", "public"])
@pytest.mark.parametrize("stage", STAGES)
def test_every_dlc_job_is_accepted(stage, resources, tmp_path, monkeypatch):
    from distilflow.launch import dlc
    from tests.fakes.dlc_api_server import FakeDlc

    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-test")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ak-secret")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "oss-secret")
    fake = FakeDlc(lambda body: ("JobFailed", "stop here"), [], finish_at=1)
    endpoint = fake.start()
    settings = {"endpoint": endpoint, "protocol": "http", "workspace_id": "ws-1", "max_running_minutes": 600}
    if resources == "dedicated":
        settings |= {"resource_id": "quota-1", "cpu": 96, "memory_gb": 800, "shared_memory_gb": 64}
        settings["secret_env_names"] = ["OSS_ACCESS_KEY_SECRET"]
    else:
        settings["ecs_spec"] = "ecs.gn7i-c32g1.32xlarge"
    try:
        config = stage_config(stage, tmp_path, launcher="dlc", nodes=2, gpus_per_node=4, dlc=settings)
        with pytest.raises(DistilflowError, match="failed: JobFailed: stop here"):
            dlc.launch(stage, config, poll_interval=0.01)
    finally:
        fake.stop()
    [body] = fake.created()
    assert dlc_request_schema.problems(body) == [] and len(fake.jobs) == 1


def recipes() -> list[str]:
    from distilflow.client.pipelines import list_pipelines

    return list(list_pipelines())


@pytest.mark.parametrize("name", recipes())
def test_every_recipe_spec_parses_as_kfp_parses_it(name):
    """The PipelineSpec and the PlatformSpec (secrets, node selectors, tolerations, /dev/shm of each
    executor) parse strictly into KFP's protos, as the API server and the driver parse them."""
    from distilflow.pipelines.compile_all import golden_path
    from tests.fakes import kfp_api_rules

    with open(golden_path(name), encoding="utf-8") as f:
        spec, platform = kfp_api_rules.check_package(f.read())
    assert spec["pipelineInfo"]["name"] == name.replace("_", "-")
    executors = ((platform or {}).get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})).get(
        "executors", {}
    )
    assert set(executors) <= set(spec["deploymentSpec"]["executors"])


def test_a_misspelt_field_in_an_emitted_object_fails_these_checks(tmp_path):
    """The checks above can fail: one invented field in each kind of object is refused."""
    from distilflow.components.deploy import eas, kserve
    from tests.fakes import kfp_api_rules
    from tests.fakes.k8s_schema import ApiError

    manifest = kserve.render(deploy_config("kserve", MODEL_S3, tmp_path), thinking=False)
    bad = copy.deepcopy(manifest)
    bad["spec"]["predictor"]["nodeSelectors"] = {"pool": "gpu"}
    with pytest.raises(ApiError, match='unknown field "spec.predictor.nodeSelectors"'):
        kserve_admit(bad, "v0.20.0")
    description = eas.render(deploy_config("pai-eas", MODEL_OSS, tmp_path), thinking=False)
    description["metadata"]["gpus"] = 1
    assert eas_service_schema.problems(description) == ["metadata.gpus: unknown parameter"]
    assert dlc_request_schema.problems(
        {
            "DisplayName": "d",
            "JobType": "PyTorchJob",
            "UserCommand": "x",
            "JobSpecs": [{"Type": "Worker", "Image": "i", "PodCount": 1, "EcsSpec": "e", "GPU": 8}],
        }
    ) == ["JobSpecs[0].GPU: not a parameter of CreateJob"]
    with open(
        os.path.join(os.path.dirname(__file__), "..", "pipelines", "golden", "quickstart.yaml"),
        encoding="utf-8",
    ) as f:
        text = f.read()
    with pytest.raises(kfp_api_rules.Refusal, match="invalid v2 pipeline spec"):
        kfp_api_rules.check_package(text.replace("pipelineInfo:", "pipelineInfos: {}\npipelineInfo:", 1))
