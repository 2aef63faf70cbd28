"""Where a pipeline step runs on Kubernetes: GPUs, node selector, tolerations, ``/dev/shm``, image pull
secrets and Secrets as environment variables, set on a KFP task with kfp and kfp-kubernetes.

What may be a pipeline parameter (a ``PipelineChannel``) and what is fixed at compile time follows
kfp / kfp-kubernetes 2.17.3:

=========================  ==========================================  ======================
setting                    call                                        pipeline parameter?
=========================  ==========================================  ======================
accelerator type           ``task.set_accelerator_type``               yes (a string)
accelerator count          ``task.set_accelerator_limit``              yes (an int or string)
node selector              ``kubernetes.add_node_selector_json``       yes (a dict)
tolerations                ``kubernetes.add_toleration_json``          yes (a list of dicts)
Secret as env              ``kubernetes.use_secret_as_env``            the Secret's name: yes
image pull secrets         ``kubernetes.set_image_pull_secrets``       yes (each name)
``/dev/shm``               ``kubernetes.empty_dir_mount``              no: fixed at compile time
=========================  ==========================================  ======================

``kfp.local`` ignores all of these (with a warning), so the same recipe runs on a laptop.
Secrets are named, never read: the compiled pipeline holds Secret names and keys only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
"""The taint GPU node pools carry (NVIDIA's device plugin convention; GKE, EKS, ACK)."""

SHM_VOLUME = "dshm"

PULL_SECRETS_ENV = "DISTILFLOW_IMAGE_PULL_SECRETS"
"""Comma-separated Secret names for pulling the stage images from a private registry, read when a
pipeline is built, i.e. when its module is imported (like ``DISTILFLOW_IMAGE_REGISTRY``)."""


@dataclass
class SecretEnv:
    """One Kubernetes Secret key exposed to a step as an environment variable."""

    secret: Any
    """The Secret's name (a string or a pipeline parameter)."""
    key: str
    """The key inside the Secret."""
    env: str
    """The environment variable the step reads (the ``api_key_env`` a config names)."""
    optional: bool = False
    """Start the step even when the Secret is missing (the variable is then unset)."""


@dataclass
class Placement:
    """Where one step runs. Fields may be plain values or pipeline parameters, see the module docstring."""

    gpus: Any = 0
    """Accelerators per pod; 0 (the literal) requests none. A pipeline parameter is always applied."""
    accelerator_type: Any = "nvidia.com/gpu"
    """The Kubernetes extended resource of one accelerator, e.g. ``nvidia.com/gpu``,
    ``nvidia.com/mig-3g.40gb`` or ``amd.com/gpu``."""
    node_selector: Any = None
    """Node labels a pod needs, e.g. ``{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}``."""
    tolerations: Any = None
    """Tolerations (Kubernetes ``Toleration`` dicts); GPU steps default to :data:`GPU_TOLERATION`."""
    shm_size: str | None = None
    """Size of a memory-backed ``/dev/shm`` (NCCL and dataloaders need more than Docker's 64 MiB)."""
    image_pull_secrets: list[Any] = field(default_factory=list)
    """Secrets for pulling the step's image."""
    secret_env: list[SecretEnv] = field(default_factory=list)
    """Secret keys exposed as environment variables."""


def pull_secrets_from_env() -> list[str]:
    """Image pull secrets named in ``DISTILFLOW_IMAGE_PULL_SECRETS`` (comma-separated)."""
    return [s.strip() for s in os.environ.get(PULL_SECRETS_ENV, "").split(",") if s.strip()]


def _is_channel(value: Any) -> bool:
    from kfp.dsl import pipeline_channel

    return isinstance(value, pipeline_channel.PipelineChannel)


def apply(task: Any, placement: Placement) -> Any:
    """Set ``placement`` on a KFP task; return the task."""
    from kfp import kubernetes

    wants_gpus = _is_channel(placement.gpus) or int(placement.gpus) > 0
    if wants_gpus:
        task.set_accelerator_type(placement.accelerator_type)
        task.set_accelerator_limit(placement.gpus)
        tolerations = placement.tolerations if placement.tolerations is not None else [GPU_TOLERATION]
    else:
        tolerations = placement.tolerations or []
    if placement.node_selector is not None and (
        _is_channel(placement.node_selector) or placement.node_selector
    ):
        kubernetes.add_node_selector_json(task, placement.node_selector)
    if _is_channel(tolerations):
        kubernetes.add_toleration_json(task, tolerations)
    else:
        for toleration in tolerations:
            kubernetes.add_toleration_json(task, toleration)
    if placement.shm_size:
        kubernetes.empty_dir_mount(
            task,
            volume_name=SHM_VOLUME,
            mount_path="/dev/shm",
            medium="Memory",
            size_limit=placement.shm_size,
        )
    pull = list(placement.image_pull_secrets) + pull_secrets_from_env()
    if pull:
        kubernetes.set_image_pull_secrets(task, pull)
    for item in placement.secret_env:
        kubernetes.use_secret_as_env(
            task, secret_name=item.secret, secret_key_to_env={item.key: item.env}, optional=item.optional
        )
    return task
