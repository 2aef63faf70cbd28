"""Run a training stage on Alibaba Cloud PAI-DLC instead of a Kubeflow TrainJob.

Same inputs as ``distilflow.trainjob`` (image, nodes, GPUs per node, env, command); the job is
created with Alibaba Cloud's DLC SDK (``alibabacloud-pai-dlc20201203``). Credentials come from the
environment (ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET), never from a config.
"""

from __future__ import annotations

from pydantic import Field

from distilflow.config import BaseConfig


class DlcSettings(BaseConfig):
    """Where and how a PAI-DLC job runs (used with ``launcher: dlc``)."""

    region: str = Field("cn-hangzhou", description="Alibaba Cloud region of the PAI workspace")
    endpoint: str | None = Field(
        None, description="DLC API endpoint; None uses pai-dlc.<region>.aliyuncs.com"
    )
    workspace_id: str | None = Field(None, description="PAI workspace the job belongs to (required for dlc)")
    resource_id: str | None = Field(
        None, description="Dedicated resource group (quota) id; None runs on public pay-as-you-go resources"
    )
    ecs_spec: str | None = Field(
        None, description="ECS instance type of every node (e.g. ecs.gn7i-c32g1.8xlarge) on public resources"
    )
    job_type: str = Field("PyTorchJob", description="DLC job type; PyTorchJob sets the torchrun rendezvous")
