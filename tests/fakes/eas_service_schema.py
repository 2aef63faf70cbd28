"""The PAI-EAS service description (the JSON body of CreateService / UpdateService), for the EAS fake.

EAS publishes no machine-readable schema; the rules are those of Alibaba Cloud's "Deploy services with
JSON configuration files" parameter tables (PAI documentation, parameters-of-model-services, 2025-2026):
``metadata`` is required and names the service (3-63 lowercase letters, digits and ``_``, starting
with a letter); a service runs either on a dedicated resource group (``metadata.resource`` with
``cpu``/``memory``/``gpu``) or on public resources (``cloud.computing``), not both; a container needs
an ``image``; a storage entry needs an absolute ``mount_path`` and one source, an ``oss`` source an
``oss://`` path. Keys the tables do not list are refused: EAS documents nothing about unknown keys,
so the fake is stricter than it may be, and a misspelt field fails in tests instead of vanishing.
Errors come back as EAS answers them: HTTP 400, ``{"Code": "InvalidParameter", "Message": ...}``.
"""

from __future__ import annotations

import re
from typing import Any

TOP = {
    "metadata", "cloud", "containers", "dockerAuth", "networking", "storage", "token", "aimaster",
    "model_path", "oss_endpoint", "model_entry", "model_config", "processor", "processor_path",
    "processor_entry", "processor_mainclass", "processor_type", "warm_up_data_path", "runtime",
    "autoscaler", "labels", "unit", "sinker", "confidential", "features", "data_image",
}  # fmt: skip
METADATA = {
    "name", "instance", "workspace_id", "cpu", "memory", "gpu", "gpu_memory", "gpu_core_percentage",
    "qos", "resource", "resource_burstable", "shm_size", "rolling_strategy", "type", "group",
    "enable_grpc", "enable_webservice", "rpc", "disk", "rdma", "cuda", "eas", "enable_cache",
}  # fmt: skip
ROLLING = {"max_surge", "max_unavailable"}
COMPUTING = {"instances", "instance_type", "disable_spot_protection_period"}
INSTANCE = {"type", "spot_price_limit", "capacity"}
CONTAINER = {"image", "script", "command", "port", "env", "args", "prepare"}
STORAGE = {"mount_path", "oss", "nfs", "git", "image", "empty_dir", "dataset", "model", "properties"}
OSS = {"path", "readOnly", "endpoint"}
INTEGERS = {"instance", "cpu", "memory", "gpu", "gpu_memory", "shm_size", "rdma"}


def _unknown(where: str, value: dict[str, Any], known: set[str]) -> list[str]:
    return [
        f"{where}.{k}: unknown parameter" if where else f"{k}: unknown parameter"
        for k in sorted(set(value) - known)
    ]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def problems(description: Any) -> list[str]:
    """Every way ``description`` breaks the documented rules (empty when it is a valid service)."""
    if not isinstance(description, dict):
        return ["the body is not a JSON object"]
    found = _unknown("", description, TOP)
    meta = description.get("metadata")
    if not isinstance(meta, dict):
        return [*found, "metadata: required"]
    found += _unknown("metadata", meta, METADATA)
    name = meta.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{2,62}", name):
        found.append(
            f"metadata.name: {name!r} is not 3-63 lowercase letters, digits or '_' starting with a letter"
        )
    for key in sorted(INTEGERS & set(meta)):
        if not _is_int(meta[key]) or meta[key] < (1 if key == "instance" else 0):
            found.append(f"metadata.{key}: {meta[key]!r} is not a non-negative integer")
    rolling = meta.get("rolling_strategy") or {}
    found += _unknown("metadata.rolling_strategy", rolling, ROLLING)
    found += [
        f"metadata.rolling_strategy.{k}: not an integer >= 0"
        for k, v in rolling.items()
        if not _is_int(v) or v < 0
    ]
    found += _compute(description, meta)
    for i, container in enumerate(description.get("containers") or []):
        found += _unknown(f"containers[{i}]", container, CONTAINER)
        if not isinstance(container.get("image"), str) or not container["image"]:
            found.append(f"containers[{i}].image: required")
        port = container.get("port")
        if port is not None and (not _is_int(port) or not 0 < port < 65536):
            found.append(f"containers[{i}].port: {port!r} is not a port number")
    for i, mount in enumerate(description.get("storage") or []):
        found += _storage(f"storage[{i}]", mount)
    return found


def _compute(description: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    computing = (description.get("cloud") or {}).get("computing")
    if meta.get("resource") and computing:
        return [
            "metadata.resource and cloud.computing: a service runs on a dedicated resource group or on public resources, not both"
        ]
    if not meta.get("resource") and not computing:
        return [
            "cloud.computing: required without metadata.resource (the public resource group needs an instance type)"
        ]
    if not computing:
        return []
    found = _unknown("cloud.computing", computing, COMPUTING)
    for i, instance in enumerate(computing.get("instances") or []):
        found += _unknown(f"cloud.computing.instances[{i}]", instance, INSTANCE)
        if not instance.get("type"):
            found.append(f"cloud.computing.instances[{i}].type: required")
    return found


def _storage(where: str, mount: dict[str, Any]) -> list[str]:
    found = _unknown(where, mount, STORAGE)
    if not str(mount.get("mount_path", "")).startswith("/"):
        found.append(f"{where}.mount_path: required, an absolute path")
    sources = [k for k in ("oss", "nfs", "git", "image", "empty_dir", "dataset", "model") if k in mount]
    if len(sources) != 1:
        found.append(
            f"{where}: exactly one source (oss, nfs, git, image, empty_dir, dataset, model), got {sources}"
        )
    oss = mount.get("oss")
    if isinstance(oss, dict):
        found += _unknown(f"{where}.oss", oss, OSS)
        if not str(oss.get("path", "")).startswith("oss://"):
            found.append(f"{where}.oss.path: {oss.get('path')!r} is not an oss:// path")
        if "readOnly" in oss and not isinstance(oss["readOnly"], bool):
            found.append(f"{where}.oss.readOnly: not a boolean")
    return found


def error(found: list[str]) -> dict[str, str]:
    """EAS's error body for an invalid description."""
    return {"Code": "InvalidParameter", "Message": "invalid service config: " + "; ".join(found)}
