"""KServe's InferenceService admission (defaulting + validating webhooks), for the strict KServe fake.

Read from kserve/kserve v0.15.0 and v0.20.0, ``pkg/apis/serving/v1beta1``:

- ``inference_service_defaults.go`` (mutating): from v0.16 the deprecated deploymentMode values are
  rewritten (``RawDeployment`` -> ``Standard``, ``Serverless`` -> ``Knative``); a custom predictor's
  single container is named ``kserve-container`` (``predictor_custom.go`` ``Default``).
- ``inference_service_validation.go`` (validating, ``inferenceservice.kserve-webhook-server.validator``):
  the name format; on update the deploymentMode may not differ from the one in the status;
  ``PYTHONPATH`` is a blocked env var (v0.20, ``pkg/validation/env_policy.go``); exactly one predictor
  implementation; min/max replicas (``component.go`` ``validateReplicas``).

Denials are plain errors, which controller-runtime answers with 403 Forbidden.
"""

from __future__ import annotations

import re
from typing import Any

from tests.fakes.k8s_schema import webhook_denied

WEBHOOK = "inferenceservice.kserve-webhook-server.validator"
MODE = "serving.kserve.io/deploymentMode"
ISVC_NAME = "[a-z]([-a-z0-9]*[a-z0-9])?"
LEGACY = {"RawDeployment": "Standard", "Serverless": "Knative"}
PREDICTOR_IMPLEMENTATIONS = [
    ("sklearn", "SKLearn"),
    ("xgboost", "XGBoost"),
    ("tensorflow", "Tensorflow"),
    ("pytorch", "PyTorch"),
    ("triton", "Triton"),
    ("onnx", "ONNX"),
    ("huggingface", "HuggingFace"),
    ("pmml", "PMML"),
    ("lightgbm", "LightGBM"),
    ("paddle", "Paddle"),
    ("model", "Model"),
]


def renames_legacy_modes(version: str) -> bool:
    """KServe >= 0.16 calls the modes Standard and Knative and rewrites the old names."""
    major, minor = (int(x) for x in version.lstrip("v").split(".")[:2])
    return (major, minor) >= (0, 16)


def default(isvc: dict[str, Any], version: str) -> None:
    """The mutating webhook's part the fake plays, in place."""
    annotations = isvc["metadata"].get("annotations") or {}
    if renames_legacy_modes(version) and annotations.get(MODE) in LEGACY:
        annotations[MODE] = LEGACY[annotations[MODE]]
    containers = isvc["spec"].get("predictor", {}).get("containers") or []
    if len(containers) == 1 and not containers[0].get("name"):
        containers[0]["name"] = "kserve-container"


def mode_of(status_mode: str, version: str) -> str:
    """``constants.ParseDeploymentMode`` of a stored status value (v0.19+ normalises legacy names)."""
    return LEGACY.get(status_mode, status_mode) if renames_legacy_modes(version) else status_mode


def validate(isvc: dict[str, Any], old: dict[str, Any] | None, version: str) -> None:
    """Raises ApiError (403) with KServe's message for the first rule the object breaks."""
    name = isvc["metadata"]["name"]
    annotations = isvc["metadata"].get("annotations") or {}
    if old is not None:
        stored = (old.get("status") or {}).get("deploymentMode")
        wanted = annotations.get(MODE)
        if stored and wanted is not None and wanted != mode_of(stored, version):
            message = f"update rejected: deploymentMode cannot be changed from '{mode_of(stored, version)}' to '{wanted}'"
            raise webhook_denied(WEBHOOK, message)
    if not re.fullmatch(ISVC_NAME, name):
        message = (
            f'the InferenceService "{name}" is invalid: a InferenceService name must consist of lower case '
            "alphanumeric characters or '-', and must start with alphabetical character. (e.g. \"my-name\" or "
            f"\"abc-123\", regex used for validation is '{ISVC_NAME}')"
        )
        raise webhook_denied(WEBHOOK, message)
    predictor = isvc["spec"]["predictor"]
    for container in predictor.get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "PYTHONPATH":
                message = (
                    f'the InferenceService "{name}" is invalid: setting PYTHONPATH in container '
                    f'"{container.get("name")}" is not allowed for security reasons'
                )
                raise webhook_denied(WEBHOOK, message)
    implementations = [key for key, _ in PREDICTOR_IMPLEMENTATIONS if predictor.get(key)]
    if predictor.get("containers"):
        implementations.append("containers")
    if len(implementations) != 1:
        names = ", ".join(n for _, n in PREDICTOR_IMPLEMENTATIONS)
        raise webhook_denied(WEBHOOK, f"exactly one of [{names}, PodSpec] must be specified in PredictorSpec")
    low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
    if low < 0:
        raise webhook_denied(WEBHOOK, "'MinReplicas' cannot be less than 0")
    if high < 0:
        raise webhook_denied(WEBHOOK, "'MaxReplicas' cannot be less than 0")
    if low > high and high != 0:
        raise webhook_denied(WEBHOOK, "'MinReplicas' cannot be greater than MaxReplicas")
