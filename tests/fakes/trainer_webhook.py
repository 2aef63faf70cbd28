"""Kubeflow Trainer's TrainJob admission rules, for the strict Trainer fake (tests/trainjob_api_server.py).

Read from kubeflow/trainer v2.2.0 and v2.3.0 (same rules in both):

- ``pkg/webhooks/trainjob_webhook.go``: ``validator.trainjob.trainer.kubeflow.org`` looks the runtime up
  and runs the runtime's ``ValidateObjects``; errors go back as ``ErrorList.ToAggregate()``, which
  controller-runtime answers as ``Denied`` (HTTP 403, reason Forbidden).
- ``pkg/runtime/core/clustertrainingruntime.go`` / ``trainingruntime.go``: the referenced runtime
  must exist.
- ``pkg/runtime/framework/plugins/jobset/jobset.go`` ``Validate``: each ``runtimePatches`` entry
  needs a domain-prefixed ``manager``; a patched replicated job, container or initContainer must
  exist in the runtime's template; and a patch **must not set env on the dataset-initializer,
  model-initializer or node containers**.
- ``pkg/runtime/framework/plugins/torch/torch.go`` ``Validate``: ``spec.trainer.env`` must not set
  torchrun's reserved variables (``constants.TorchRunReservedEnvNames``).
"""

from __future__ import annotations

import re
from typing import Any

from tests.fakes.k8s_schema import DNS1123_SUBDOMAIN, ApiError, FieldError, aggregate, webhook_denied

WEBHOOK = "validator.trainjob.trainer.kubeflow.org"
NODE, DATASET_INITIALIZER, MODEL_INITIALIZER = "node", "dataset-initializer", "model-initializer"
TORCH_RESERVED_ENVS = (
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
)


def _containers(runtime: dict[str, Any]) -> dict[str, set[str]]:
    """Replicated job name -> its container and initContainer names, from the runtime's JobSet template."""
    names: dict[str, set[str]] = {}
    for rjob in runtime["spec"]["template"]["spec"].get("replicatedJobs") or []:
        pod = rjob["template"]["spec"]["template"]["spec"]
        names[rjob["name"]] = {
            c["name"] for c in (pod.get("containers") or []) + (pod.get("initContainers") or [])
        }
    return names


def _domain_prefixed(path: str, value: str) -> list[FieldError]:
    """``validation.IsDomainPrefixedPath``."""
    if not value:
        return [FieldError(path, "Required value")]
    prefix, sep, rest = value.partition("/")
    if (
        not sep
        or not rest
        or not DNS1123_SUBDOMAIN.match(prefix)
        or not re.fullmatch(r"[A-Za-z0-9/\-._~%!$&'()*+,;=:]+", rest)
    ):
        return [
            FieldError(path, "Invalid value", value, 'must be a domain-prefixed path (such as "acme.io/foo")')
        ]
    return []


def runtime_patch_errors(job: dict[str, Any], runtime: dict[str, Any]) -> list[FieldError]:
    """The jobset plugin's ``Validate`` over ``spec.runtimePatches``."""
    errors: list[FieldError] = []
    patches = job["spec"].get("runtimePatches") or []
    path = "spec.runtimePatches"
    known = _containers(runtime)
    for patch in patches:
        errors += _domain_prefixed(f"{path}.manager", patch.get("manager", ""))
        spec = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rjob in spec.get("replicatedJobs") or []:
            if rjob.get("name") not in known:
                detail = "must not have replicated job that doesn't exist in the runtime job template"
                errors.append(FieldError(path, "Invalid value", patches, detail))
                continue
            pod = ((((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}
            for c in pod.get("initContainers") or []:
                if c.get("name") not in known[rjob["name"]]:
                    detail = (
                        f"must not have initContainer that doesn't exist in the runtime job {rjob['name']}"
                    )
                    errors.append(FieldError(path, "Invalid value", patches, detail))
            for c in pod.get("containers") or []:
                if c.get("name") not in known[rjob["name"]]:
                    detail = f"must not have container that doesn't exist in the runtime job {rjob['name']}"
                    errors.append(FieldError(path, "Invalid value", patches, detail))
                elif c.get("env") and c["name"] in (DATASET_INITIALIZER, MODEL_INITIALIZER, NODE):
                    detail = f"must not have envs for the {DATASET_INITIALIZER}, {MODEL_INITIALIZER}, {NODE} containers"
                    errors.append(FieldError(path, "Invalid value", patches, detail))
    return errors


def torch_errors(job: dict[str, Any], runtime: dict[str, Any]) -> list[FieldError]:
    """The torch plugin's ``Validate``: no torchrun-reserved variable in ``spec.trainer.env``."""
    if "torch" not in (runtime["spec"].get("mlPolicy") or {}):
        return []
    env = (job["spec"].get("trainer") or {}).get("env") or []
    reserved = sorted({e["name"] for e in env if e.get("name") in TORCH_RESERVED_ENVS})
    if not reserved:
        return []
    detail = f"must not have reserved envs, invalid envs configured: [{' '.join(reserved)}]"
    return [FieldError("spec.trainer.env", "Invalid value", env, detail)]


def admit_trainjob(job: dict[str, Any], runtimes: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Run the webhook on a schema-valid TrainJob; ``runtimes`` maps (kind, name) to runtime objects.

    Raises:
        ApiError: 403, ``admission webhook "validator.trainjob..." denied the request: ...``.
    """
    ref = job["spec"]["runtimeRef"]
    group, kind, name = ref.get("apiGroup", "trainer.kubeflow.org"), ref.get("kind"), ref["name"]
    if group != "trainer.kubeflow.org" or kind not in ("ClusterTrainingRuntime", "TrainingRuntime"):
        raise webhook_denied(WEBHOOK, f"unsupported runtime: {kind}.{group}")
    runtime = runtimes.get((kind, name))
    if runtime is None:
        plural = "clustertrainingruntimes" if kind == "ClusterTrainingRuntime" else "trainingruntimes"
        which = "clusterTrainingRuntime" if kind == "ClusterTrainingRuntime" else "trainingRuntime"
        field = "spec.RuntimeRef" if kind == "ClusterTrainingRuntime" else "spec.runtimeRef"
        detail = (
            f'{plural}.trainer.kubeflow.org "{name}" not found: specified {which} must be created before the '
            "TrainJob is created"
        )
        raise webhook_denied(WEBHOOK, str(FieldError(field, "Invalid value", ref, detail)))
    errors = runtime_patch_errors(job, runtime) + torch_errors(job, runtime)
    if errors:
        raise webhook_denied(WEBHOOK, aggregate(errors))


__all__ = ["ApiError", "admit_trainjob", "runtime_patch_errors", "torch_errors", "WEBHOOK"]
