"""The PAI-DLC ``CreateJob`` body checked against the published API model, for the DLC fake.

The field set is Alibaba Cloud's own: ``alibabacloud_pai_dlc20201203.models.CreateJobRequest`` (generated
from the pai-dlc 2020-12-03 OpenAPI metadata). A body is read through the model (``from_map``) and
written back (``to_map``); a key that does not survive is not a field of the API. On top of that the
rules of the CreateJob reference: ``DisplayName``, ``JobType``, ``JobSpecs`` and ``UserCommand`` are
required, ``JobType`` is one of DLC's job types, every job spec names a ``Type`` and an ``Image`` and
runs ``PodCount`` >= 1 pods, and it needs a ``ResourceConfig`` on a dedicated resource group
(``ResourceId``) or an ``EcsSpec`` on public resources. Errors come back as DLC answers them:
HTTP 400, ``{"Code": "InvalidParameter", "Message": ...}``.
"""

from __future__ import annotations

import copy
from typing import Any

JOB_TYPES = (
    "TFJob",
    "PyTorchJob",
    "MPIJob",
    "XGBoostJob",
    "OneFlowJob",
    "ElasticBatchJob",
    "SlurmJob",
    "RayJob",
)
REQUIRED = ("DisplayName", "JobType", "JobSpecs", "UserCommand")


def lost_keys(sent: Any, kept: Any, path: str = "") -> list[str]:
    """Paths of the keys of ``sent`` that ``kept`` (its round trip through the model) lacks."""
    found: list[str] = []
    if isinstance(sent, dict):
        for key, value in sent.items():
            where = f"{path}.{key}" if path else key
            if not isinstance(kept, dict) or key not in kept:
                found.append(where)
            else:
                found += lost_keys(value, kept[key], where)
    elif isinstance(sent, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(sent, kept, strict=False)):
            found += lost_keys(a, b, f"{path}[{i}]")
    return found


def problems(body: Any) -> list[str]:
    """Every way ``body`` is not a CreateJob request DLC accepts (empty when it is one)."""
    from alibabacloud_pai_dlc20201203 import models

    if not isinstance(body, dict):
        return ["the body is not a JSON object"]
    kept = models.CreateJobRequest().from_map(copy.deepcopy(body)).to_map()
    found = [f"{p}: not a parameter of CreateJob" for p in lost_keys(body, kept)]
    found += [f"{k}: required" for k in REQUIRED if not body.get(k)]
    if body.get("JobType") and body["JobType"] not in JOB_TYPES:
        found.append(f"JobType: {body['JobType']!r} is not one of {', '.join(JOB_TYPES)}")
    for i, spec in enumerate(body.get("JobSpecs") or []):
        where = f"JobSpecs[{i}]"
        found += [f"{where}.{k}: required" for k in ("Type", "Image") if not spec.get(k)]
        count = spec.get("PodCount")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            found.append(f"{where}.PodCount: {count!r} is not an integer >= 1")
        if body.get("ResourceId") and not spec.get("ResourceConfig"):
            found.append(f"{where}.ResourceConfig: required on a dedicated resource group (ResourceId)")
        if not body.get("ResourceId") and not spec.get("EcsSpec"):
            found.append(f"{where}.EcsSpec: required on public resources (no ResourceId)")
    return found


def error(found: list[str]) -> dict[str, str]:
    return {"Code": "InvalidParameter", "Message": "; ".join(found)}
