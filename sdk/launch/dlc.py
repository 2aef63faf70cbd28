"""Run a training stage on Alibaba Cloud PAI-DLC instead of a Kubeflow TrainJob.

Same contract as ``distilflow.launch.trainjob.launch``: the launcher does not train. It writes the stage's
config with ``launcher: local`` next to the output (``<output_uri>/dlc-config.yaml``), creates a DLC
job with Alibaba Cloud's DLC SDK (``alibabacloud-pai-dlc20201203``, extra ``pai``) that runs the
train image on ``nodes`` nodes with ``gpus_per_node`` GPUs each, polls ``GetJob``, prints node 0's
new log lines (``GetPodLogs``) as they come, and reads the result back from the finished output's
manifest; a failed job fails the stage with DLC's reason code and message.

Each node runs ``torchrun`` with the rendezvous DLC sets for a ``PyTorchJob`` (``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE`` = nodes, ``RANK`` = this node's index) and one process per GPU.

Credentials of the DLC API come from the environment (``ALIBABA_CLOUD_ACCESS_KEY_ID`` /
``ALIBABA_CLOUD_ACCESS_KEY_SECRET``, optionally ``ALIBABA_CLOUD_SECURITY_TOKEN``), never from a config.

Secrets on the nodes: DLC has no Kubernetes Secrets, so ``secret_env`` (``NAME: secret-name/key``
references) is refused with ``launcher: dlc``. List the variables in ``dlc.secret_env_names``
instead: their values are read from this process's environment (in a KFP task: the Kubernetes
Secrets mounted as env on the launcher's pod) and sent in the job's ``Envs``. They are never
printed or written to the output, but anyone who can read the job in the PAI workspace can see
them; prefer a RAM role on the workspace (DLC's credential injection) for OSS access where you can.
"""

from __future__ import annotations

import os
import shlex
import time
from typing import Any

from pydantic import Field

from distilflow.errors import ConfigError, DistilflowError
from distilflow.launch.aliyun import AliyunApiFields, openapi_config
from distilflow.secrets import EnvName

CONFIG_FILE = "dlc-config.yaml"
"""The config the job's nodes run with, written to ``<output_uri>/dlc-config.yaml``."""

DONE = {"Succeeded"}
FAILED = {"Failed", "Stopped", "Stopping"}
"""DLC job states that end the wait (Stopping: someone stopped the job; it will not succeed)."""


class DlcSettings(AliyunApiFields):
    """Where and how a PAI-DLC job runs (used with ``launcher: dlc``); region, endpoint and credential
    variables as ``distilflow.launch.aliyun.AliyunApiFields``."""

    workspace_id: str | None = Field(None, description="PAI workspace the job belongs to (required for dlc)")
    resource_id: str | None = Field(
        None, description="Dedicated resource group (quota) id; None runs on public pay-as-you-go resources"
    )
    ecs_spec: str | None = Field(
        None, description="ECS instance type of every node (e.g. ecs.gn7i-c32g1.8xlarge) on public resources"
    )
    job_type: str = Field("PyTorchJob", description="DLC job type; PyTorchJob sets the torchrun rendezvous")
    cpu: int | None = Field(
        None, ge=1, description="vCPUs per node on a dedicated resource group (ResourceConfig.CPU)"
    )
    memory_gb: int | None = Field(
        None, ge=1, description="Memory per node in GiB on a dedicated resource group (ResourceConfig.Memory)"
    )
    shared_memory_gb: int | None = Field(
        None, ge=1, description="/dev/shm per node in GiB on a dedicated resource group"
    )
    max_running_minutes: int | None = Field(
        None, ge=1, description="DLC stops the job after this many minutes (JobMaxRunningTimeMinutes)"
    )
    secret_env_names: list[EnvName] = Field(
        default_factory=list,
        description="Names of secret variables copied from this process's environment into the job's Envs "
        "(DLC has no Kubernetes Secrets); never printed, but visible to readers of the job in the workspace",
    )


def job_command(stage: str, config_uri: str, gpus_per_node: int) -> str:
    """The shell command of every node: torchrun over DLC's rendezvous variables, one process per GPU."""
    torchrun = (
        "torchrun --nnodes=${WORLD_SIZE:-1} --node_rank=${RANK:-0} "
        "--master_addr=${MASTER_ADDR:-127.0.0.1} --master_port=${MASTER_PORT:-29500} "
        f"--nproc_per_node={max(gpus_per_node, 1)} --no-python"
    )
    return f"{torchrun} distilflow stage {shlex.quote(stage)} --config {shlex.quote(config_uri)}"


def dlc_client(settings: DlcSettings) -> Any:
    """A DLC API client for ``settings`` (credentials from the environment)."""
    from alibabacloud_pai_dlc20201203.client import Client

    return Client(openapi_config(settings, "pai-dlc", "dlc"))


def job_request(
    stage: str,
    settings: DlcSettings,
    command: str,
    image: str,
    nodes: int,
    gpus: int,
    envs: dict[str, str],
    name: str,
) -> Any:
    """The ``CreateJob`` request: one Worker spec of ``nodes`` pods of ``image``."""
    from alibabacloud_pai_dlc20201203 import models

    spec = models.JobSpec(type="Worker", image=image, pod_count=nodes)
    if settings.resource_id:
        spec.resource_config = models.ResourceConfig(
            gpu=str(gpus),
            cpu=str(settings.cpu) if settings.cpu else None,
            memory=f"{settings.memory_gb}Gi" if settings.memory_gb else None,
            shared_memory=f"{settings.shared_memory_gb}Gi" if settings.shared_memory_gb else None,
        )
    else:
        spec.ecs_spec = settings.ecs_spec
    return models.CreateJobRequest(
        display_name=name,
        job_type=settings.job_type,
        workspace_id=settings.workspace_id,
        resource_id=settings.resource_id,
        job_specs=[spec],
        user_command=command,
        envs=envs or None,
        job_max_running_time_minutes=settings.max_running_minutes,
    )


def check_settings(settings: DlcSettings, secret_env: dict[str, str]) -> None:
    """Refuse what a DLC job cannot honour, all problems at once."""
    problems = []
    if not settings.workspace_id:
        problems.append("dlc.workspace_id is not set; give the PAI workspace id the job belongs to")
    if not settings.resource_id and not settings.ecs_spec:
        problems.append(
            "neither dlc.resource_id (a dedicated resource group) nor dlc.ecs_spec (an instance type on "
            "public resources) is set; give one"
        )
    if settings.resource_id and settings.ecs_spec:
        problems.append("dlc.resource_id and dlc.ecs_spec are both set; a job runs on one of them")
    if secret_env:
        problems.append(
            f"secret_env {sorted(secret_env)} names Kubernetes Secrets, which PAI-DLC cannot read; export the "
            "values in this process's environment and list the names in dlc.secret_env_names instead"
        )
    if problems:
        raise ConfigError("launcher=dlc: " + "; ".join(problems))


def _call(what: str, fn: Any, *args: Any) -> Any:
    from Tea.exceptions import TeaException

    try:
        return fn(*args)
    except TeaException as exc:
        raise DistilflowError(f"PAI-DLC {what} failed: {exc.code}: {exc.message}") from None


def _node0(job: Any) -> Any | None:
    pods = [p for p in (job.pods or []) if p.pod_id]
    return sorted(pods, key=lambda p: (p.type != "Master", p.pod_id))[0] if pods else None


def launch(
    stage: str,
    config: Any,
    nodes: int | None = None,
    gpus_per_node: int | None = None,
    *,
    settings: DlcSettings | None = None,
    image: str | None = None,
    env: list[str] | None = None,
    client: Any = None,
    poll_interval: float = 30.0,
    timeout: float = 14 * 24 * 3600.0,
) -> dict[str, Any]:
    """Train ``stage`` with ``config`` as a PAI-DLC job and return the stage's result from its manifest.

    ``nodes``, ``gpus_per_node``, ``env`` and ``settings`` default to the config's ``nodes``,
    ``gpus_per_node``, ``env`` and ``dlc``; ``image`` to the stage's image (distilflow.images). A
    finished output of the same config is returned without submitting.

    Raises:
        ConfigError: The settings cannot make a job (no workspace, no resources, Kubernetes secret
            references), or an ``env``/``dlc.secret_env_names`` variable or a credential is not set here.
        DistilflowError: The job failed (DLC's reason), was stopped, timed out, or finished without
            a complete output.
    """
    from distilflow.images import stage_image
    from distilflow.launch.trainjob import job_result, node_env, stage_job

    settings = settings or getattr(config, "dlc", None) or DlcSettings()
    nodes = nodes if nodes is not None else getattr(config, "nodes", 1)
    gpus = gpus_per_node if gpus_per_node is not None else getattr(config, "gpus_per_node", 0)
    check_settings(settings, dict(getattr(config, "secret_env", {}) or {}))
    plain = node_env(env if env is not None else list(getattr(config, "env", []) or []))
    unset = [n for n in settings.secret_env_names if not os.environ.get(n)]
    if unset:
        raise ConfigError(
            f"dlc.secret_env_names lists {', '.join(unset)}, which this process's environment does not set; "
            "mount the secret as env on this step or remove the name"
        )
    secrets = {n: os.environ[n] for n in settings.secret_env_names}
    clash = sorted(set(plain) & set(secrets))
    if clash:
        raise ConfigError(f"{', '.join(clash)} is in both env and dlc.secret_env_names; list a secret once")

    local, config_uri, stored = stage_job(stage, config)
    if stored is not None:
        return stored

    client = client or dlc_client(settings)
    name = f"distilflow-{stage}-{local.fingerprint()[:8]}"
    request = job_request(
        stage,
        settings,
        job_command(stage, config_uri, gpus),
        image or stage_image(stage),
        nodes,
        gpus,
        {**plain, **secrets},
        name,
    )
    job_id = _call("CreateJob", client.create_job, request).body.job_id
    where = f"{job_id} in workspace {settings.workspace_id} ({settings.region})"
    print(
        f"[{stage}] submitted PAI-DLC job {where}: {nodes} node(s) x {gpus} GPU(s), config {config_uri}",
        flush=True,
    )
    status = _wait(stage, client, job_id, poll_interval, timeout)
    if status.status not in DONE:
        reason = ": ".join(x for x in (status.reason_code, status.reason_message) if x) or "no reason given"
        raise DistilflowError(
            f"{stage}: PAI-DLC job {where} {status.status.lower()}: {reason}. The nodes' logs are in the PAI "
            "console (job details); a rerun resumes from the newest complete checkpoint"
        )
    return job_result(stage, local, f"PAI-DLC job {job_id}")


def _wait(stage: str, client: Any, job_id: str, poll_interval: float, timeout: float) -> Any:
    """Poll GetJob until the job ends, printing state changes and node 0's new log lines."""
    from alibabacloud_pai_dlc20201203 import models

    deadline = time.monotonic() + timeout
    last_state = None
    printed = 0
    while True:
        job = _call("GetJob", client.get_job, job_id, models.GetJobRequest()).body
        if job.status != last_state:
            last_state = job.status
            print(f"[{stage}] PAI-DLC job {job_id}: {job.status}", flush=True)
        pod = _node0(job)
        if pod is not None and job.status not in ("Creating", "Queuing", "Dequeued"):
            try:
                logs = client.get_pod_logs(job_id, pod.pod_id, models.GetPodLogsRequest()).body.logs or []
            except Exception as exc:  # a log read never decides the job's outcome
                logs = []
                print(f"[{stage}] could not read {pod.pod_id}'s log ({exc}); waiting for the job", flush=True)
            for line in logs[printed:]:
                print(f"[{stage}][node-0] {line}", flush=True)
            printed = max(printed, len(logs))
        if job.status in DONE or job.status in FAILED:
            return job
        if time.monotonic() > deadline:
            raise DistilflowError(
                f"{stage}: PAI-DLC job {job_id} did not finish within {timeout:.0f} s (status {job.status})"
            )
        time.sleep(poll_interval)
