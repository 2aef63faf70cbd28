"""Configuration of the ``deploy`` stage."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distilflow.config import BaseConfig
from distilflow.launch.aliyun import AliyunApiFields
from distilflow.secrets import EnvName
from distilflow.uri import Uri

WIRED = ("output_uri", "model")

TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


class KServeConfig(BaseConfig):
    """Where and how the KServe ``InferenceService`` runs (``target: kserve``)."""

    namespace: str = Field("default", description="Kubernetes namespace of the InferenceService")
    context: str | None = Field(
        None,
        description="kubeconfig context to use outside a cluster; inside a pod the in-cluster service account "
        "is used",
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of a GPU on the nodes")
    gpu_type: str | None = Field(
        None,
        description="GPU model, set as nodeSelector nvidia.com/gpu.product (the NVIDIA GPU feature discovery "
        "label), e.g. NVIDIA-A100-SXM4-80GB",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Extra nodeSelector labels")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Pod tolerations, e.g. [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
    )
    cpu: str | None = Field(None, description="CPU request and limit of the server, e.g. '8'")
    memory: str | None = Field(None, description="Memory request and limit of the server, e.g. 64Gi")
    shm_size: str | None = Field(
        "8Gi",
        description="Size of the /dev/shm emptyDir (vLLM's tensor-parallel workers need it); None = none",
    )
    min_replicas: int = Field(1, ge=0, description="predictor.minReplicas (0 lets Knative scale to zero)")
    max_replicas: int = Field(1, ge=1, description="predictor.maxReplicas")
    service_account_name: str | None = Field(
        None,
        description="ServiceAccount of the predictor; KServe's storage initializer reads the storage "
        "credentials from the Secrets attached to it",
    )
    api_key_secret: str | None = Field(
        None,
        description="Name of a Secret holding the key vLLM requires of clients (env VLLM_API_KEY, by "
        "secretKeyRef); the manifest names the Secret, never the key",
    )
    api_key_secret_key: str = Field("api-key", description="Key inside api_key_secret that holds the API key")
    deployment_mode: Literal["RawDeployment", "Serverless"] = Field(
        "RawDeployment",
        description="serving.kserve.io/deploymentMode. RawDeployment (KServe >= 0.16 names it Standard): a "
        "Deployment; nodeSelector and tolerations work without cluster settings. Serverless (Knative): "
        "canary rollouts; a node selector or tolerations need Knative's kubernetes.podspec-nodeselector / "
        "kubernetes.podspec-tolerations flags (checked before applying). Fixed once the service exists",
    )
    canary_traffic_percent: int = Field(
        10,
        ge=0,
        le=100,
        description="On an update of an existing service: the share of traffic the new revision gets until "
        "it is Ready and passed the smoke test, then it is promoted to 100; on failure traffic goes back to "
        "the previous revision (0). 100 = no canary step",
    )
    smoke_via: Literal["address", "url"] = Field(
        "address",
        description="Which status URL the smoke test calls: address = cluster-local (the step runs in the "
        "cluster), url = the external URL",
    )

    @field_validator("tolerations")
    @classmethod
    def _known_toleration_keys(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, tol in enumerate(value):
            unknown = set(tol) - TOLERATION_KEYS
            if unknown:
                raise ValueError(
                    f"tolerations[{i}] has unknown key(s) {sorted(unknown)}; a Toleration has "
                    f"{sorted(TOLERATION_KEYS)}"
                )
        return value


class EasConfig(AliyunApiFields):
    """Where and how the PAI-EAS service runs (``target: pai-eas``); region (also the EAS cluster id),
    endpoint and credential variables as ``distilflow.launch.aliyun.AliyunApiFields``."""

    workspace_id: str | None = Field(None, description="PAI workspace id (metadata.workspace_id)")
    resource: str | None = Field(
        None, description="Dedicated resource group id (metadata.resource); None = the public resource group"
    )
    instance_type: str = Field(
        "ecs.gn7i-c16g1.4xlarge",
        description="ECS instance type on the public resource group (cloud.computing.instances[0].type); "
        "deploy.gpus must equal its GPU count where distilflow knows it (eas_instances.GPUS), else it is "
        "assumed to",
    )
    instances: int = Field(1, ge=1, description="Number of service instances (metadata.instance)")
    cpu: int | None = Field(None, ge=1, description="metadata.cpu on a dedicated resource group")
    memory_mb: int | None = Field(
        None, ge=1, description="metadata.memory (MB) on a dedicated resource group"
    )
    shm_size_gb: int | None = Field(None, ge=1, description="metadata.shm_size (GB)")
    model_mount: str = Field(
        "/model_dir", description="Where the OSS model folder is mounted in the container"
    )
    port: int = Field(8000, ge=1, le=65535, description="Port vLLM listens on inside the container")
    max_surge: int = Field(
        1, ge=1, description="metadata.rolling_strategy.max_surge: extra instances in an update"
    )
    max_unavailable: int = Field(
        0,
        ge=0,
        description="metadata.rolling_strategy.max_unavailable; 0 keeps every old instance serving until its "
        "replacement is ready",
    )
    endpoint_kind: Literal["internet", "intranet"] = Field(
        "internet", description="Which service endpoint the smoke test calls and the result records"
    )


class DeployConfig(BaseConfig):
    """Serve a model behind an OpenAI-compatible API (locally, on KServe or on PAI-EAS) and smoke-test it."""

    output_uri: Uri = Field(
        description="Where endpoint.json, the manifest and server.log are written (<run>/deploy)"
    )
    model: Uri = Field(description="Model folder or URI to serve, e.g. <run>/sft/model")
    target: Literal["local", "kserve", "pai-eas"] = Field(
        "local",
        description="local = a subprocess on this machine; kserve = a KServe InferenceService running vLLM; "
        "pai-eas = an Alibaba Cloud PAI-EAS service running vLLM",
    )
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="target local: vllm = vLLM's OpenAI server; transformers = distilflow's OpenAI-compatible "
        "server over transformers' generate (streams token by token); auto: vllm when importable. Cluster "
        "targets always run vLLM",
    )
    host: str = Field("127.0.0.1", description="target local: address the server listens on")
    port: int = Field(0, ge=0, le=65535, description="target local: port (0 = pick a free one)")
    startup_timeout_s: float = Field(
        300,
        gt=0,
        description="Seconds to wait for the server to be ready (local: /health; cluster targets: Ready/Running)",
    )
    poll_interval_s: float = Field(10, gt=0, description="Cluster targets: seconds between status polls")
    keep_running: bool = Field(
        False,
        description="target local: leave the server running after the smoke test (its pid goes to server.pid; "
        "distilflow stop OUTPUT stops it); cluster services always keep running",
    )
    service_name: str | None = Field(
        None, description="Cluster targets: name of the InferenceService / EAS service (required there)"
    )
    served_model_name: str | None = Field(
        None,
        description="The model id clients name (--served-model-name of every server deploy starts); None = "
        "service_name, else the model folder's name (<run>/sft/model serves as sft-model)",
    )
    image: str | None = Field(
        None, description="Cluster targets: the vLLM server image; None = distilflow's vllm image"
    )
    gpus: int = Field(1, ge=0, description="Cluster targets: GPUs per replica")
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="vLLM --tensor-parallel-size; None = gpus (1 without GPUs)"
    )
    max_model_len: int | None = Field(None, ge=16, description="vLLM --max-model-len; None = the model's own")
    reasoning_parser: str = Field(
        "auto",
        description="vLLM --reasoning-parser: auto = qwen3 when the model's chat template honours "
        "enable_thinking, none = no parser, or a parser name (qwen3, deepseek_r1, ...)",
    )
    vllm_args: list[str] = Field(default_factory=list, description="Extra vLLM server arguments")
    dry_run: bool = Field(
        False, description="Cluster targets: write the manifest / service description only, apply nothing"
    )
    smoke_test: bool = Field(
        True, description="Call the endpoint after deploying (always on for target local)"
    )
    smoke_prompt: str = Field(
        "What is 2 + 3? Answer with one number.",
        min_length=1,
        description="User message of the smoke-test chats",
    )
    max_tokens: int = Field(16, ge=1, description="max_tokens of each smoke-test chat completion")
    smoke_thinking: bool | None = Field(
        None,
        description="Also chat with thinking on and off (chat_template_kwargs.enable_thinking); None = when "
        "the model's chat template honours enable_thinking",
    )
    api_key_env: EnvName | None = Field(
        None,
        description="Name of an environment variable holding the key clients send (local vLLM --api-key; "
        "the smoke test's key on KServe; the service token on PAI-EAS, else the one EAS reports); the key "
        "itself is never written anywhere",
    )
    kserve: KServeConfig = Field(default_factory=KServeConfig, description="Settings of target kserve")
    eas: EasConfig = Field(default_factory=EasConfig, description="Settings of target pai-eas")

    @model_validator(mode="after")
    def _cluster_targets(self) -> DeployConfig:
        if self.target == "local":
            return self
        problems = []
        if not self.service_name:
            problems.append(f"target {self.target!r} needs service_name (the name of the service to create)")
        elif self.target == "kserve" and not re.fullmatch(
            r"[a-z]([-a-z0-9]{0,43}[a-z0-9])?", self.service_name
        ):
            problems.append(
                f"service_name={self.service_name!r} is not a valid InferenceService name: lowercase letters, "
                "digits and '-', starting with a letter, at most 45 characters"
            )
        elif self.target == "pai-eas" and not re.fullmatch(r"[a-z][a-z0-9_]{2,62}", self.service_name):
            problems.append(
                f"service_name={self.service_name!r} is not a valid EAS service name: 3-63 lowercase letters, "
                "digits and '_', starting with a letter"
            )
        scheme = self.model.split("://", 1)[0] if "://" in self.model else "file"
        wanted = {"kserve": ("s3", "gs"), "pai-eas": ("oss",)}[self.target]
        if scheme not in wanted:
            problems.append(
                f"model={self.model!r}: target {self.target!r} serves a model from "
                f"{' or '.join(s + '://' for s in wanted)}, not a {scheme} path the cluster cannot read; "
                "set sft.output_uri to object storage or upload the folder"
            )
        if self.target == "pai-eas" and not self.eas.resource:
            from distilflow.components.deploy.eas_instances import mismatch

            problem = mismatch(self.eas.instance_type, self.gpus, self.tensor_parallel_size)
            if problem:
                problems.append(problem)
        if self.tensor_parallel_size and self.gpus and self.tensor_parallel_size > self.gpus:
            problems.append(
                f"tensor_parallel_size={self.tensor_parallel_size} exceeds gpus={self.gpus}; raise gpus"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self
