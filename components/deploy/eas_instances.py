"""GPUs per instance of the PAI-EAS public-resource instance types distilflow knows.

``deploy.gpus`` is the GPUs of one replica and vLLM's ``--tensor-parallel-size`` defaults to it. On
EAS's public resource group a replica is one instance of ``eas.instance_type``, so the two must agree:
more GPUs than the instance has and vLLM fails at start; fewer and the rest sit idle. Counts from
Alibaba Cloud's instance family pages (Elastic GPU Service, "GPU-accelerated compute-optimized
instance families": gn6i = NVIDIA T4, gn6v = V100 16 GB, gn6e = V100 32 GB, gn7i = A10, gn7e = A100
80 GB) and PAI-EAS's public resource specifications (ml.gu7i = GU30). An instance type not listed
here is not checked: ``gpus`` is then taken to be its GPU count, and the deploy step says so.
"""

from __future__ import annotations

GPUS: dict[str, int] = {
    "ecs.gn6i-c4g1.xlarge": 1,
    "ecs.gn6i-c8g1.2xlarge": 1,
    "ecs.gn6i-c16g1.4xlarge": 1,
    "ecs.gn6i-c24g1.6xlarge": 1,
    "ecs.gn6i-c40g1.10xlarge": 1,
    "ecs.gn6i-c24g1.12xlarge": 2,
    "ecs.gn6i-c24g1.24xlarge": 4,
    "ecs.gn6v-c8g1.2xlarge": 1,
    "ecs.gn6v-c8g1.8xlarge": 4,
    "ecs.gn6v-c8g1.16xlarge": 8,
    "ecs.gn6v-c10g1.20xlarge": 8,
    "ecs.gn6e-c12g1.3xlarge": 1,
    "ecs.gn6e-c12g1.12xlarge": 4,
    "ecs.gn6e-c12g1.24xlarge": 8,
    "ecs.gn7i-c8g1.2xlarge": 1,
    "ecs.gn7i-c16g1.4xlarge": 1,
    "ecs.gn7i-c32g1.8xlarge": 1,
    "ecs.gn7i-c48g1.12xlarge": 1,
    "ecs.gn7i-c56g1.14xlarge": 1,
    "ecs.gn7i-c32g1.16xlarge": 2,
    "ecs.gn7i-c32g1.32xlarge": 4,
    "ecs.gn7e-c16g1.4xlarge": 1,
    "ecs.gn7e-c16g1.16xlarge": 4,
    "ecs.gn7e-c16g1.32xlarge": 8,
    "ml.gu7i-c16m60.1-gu30": 1,
    "ml.gu7i-c32m188.1-gu30": 1,
    "ml.gu7i-c64m376.2-gu30": 2,
    "ml.gu7i-c128m752.4-gu30": 4,
}


def gpus_of(instance_type: str) -> int | None:
    """The GPU count of ``instance_type``, or None when distilflow does not know it."""
    return GPUS.get(instance_type)


def mismatch(instance_type: str, gpus: int, tensor_parallel_size: int | None) -> str | None:
    """Why ``gpus`` / ``tensor_parallel_size`` do not fit one instance of ``instance_type`` (None: they fit
    or the type is unknown)."""
    have = gpus_of(instance_type)
    if have is None:
        return None
    if gpus != have:
        return (
            f"gpus={gpus} but eas.instance_type={instance_type} has {have} GPU(s) per instance; set gpus: {have} "
            "(vLLM's tensor parallel size follows it) or pick an instance type with that many GPUs"
        )
    if tensor_parallel_size and tensor_parallel_size > have:
        return f"tensor_parallel_size={tensor_parallel_size} exceeds the {have} GPU(s) of {instance_type}"
    return None


def assumption(instance_type: str | None, resource: str | None, gpus: int) -> str | None:
    """What the deploy takes on trust about the GPUs of a replica, for the log (None: nothing)."""
    if resource:
        return (
            f"dedicated resource group {resource}: each replica asks for metadata.gpu={gpus}; EAS schedules it "
            "only on a node with that many free GPUs"
        )
    if instance_type and gpus_of(instance_type) is None:
        return (
            f"instance type {instance_type} is not in distilflow's GPU table: gpus={gpus} is assumed to be its "
            "GPU count per instance (vLLM fails at start if the instance has fewer)"
        )
    return None
