"""Knative Serving's feature flags a Serverless InferenceService depends on, checked before applying it.

In Serverless (Knative) mode KServe turns the predictor into a Knative Service, whose webhook refuses
pod fields that Knative's ``config-features`` ConfigMap (namespace ``knative-serving``) leaves
disabled. The InferenceService itself is accepted, then never becomes Ready: the deploy step would
fail only after ``startup_timeout_s``. So the flags the manifest needs are read first and a disabled
one fails the step at once, naming it. Flags and defaults from knative/serving
``pkg/apis/config/features.go`` (v1.10-v1.23 alike): ``kubernetes.podspec-nodeselector`` and
``kubernetes.podspec-tolerations`` default to disabled ("allowed" also lets the field through),
``kubernetes.podspec-volumes-emptydir`` to enabled (it must be "enabled").

RawDeployment mode (the default) makes a plain Deployment and needs none of this.
"""

from __future__ import annotations

from typing import Any

from distilflow.errors import BackendError

NAMESPACE, CONFIG_MAP = "knative-serving", "config-features"

GATES = {
    # predictor field -> (flag, its default, the values that let the field through)
    "nodeSelector": ("kubernetes.podspec-nodeselector", "disabled", ("enabled", "allowed")),
    "tolerations": ("kubernetes.podspec-tolerations", "disabled", ("enabled", "allowed")),
    "volumes": ("kubernetes.podspec-volumes-emptydir", "enabled", ("enabled",)),
}


def needed_flags(predictor: dict[str, Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Flag -> (its default, accepted values) for each gated field the predictor sets."""
    needed = {}
    for field, (flag, default, accepted) in GATES.items():
        value = predictor.get(field)
        if field == "volumes":
            value = [v for v in value or [] if "emptyDir" in v]
        if value:
            needed[flag] = (default, accepted)
    return needed


def check(core_api: Any, predictor: dict[str, Any]) -> None:
    """Fail when a flag the predictor needs is off in ``knative-serving/config-features``.

    Raises:
        BackendError: A needed flag is disabled, or Knative Serving is not installed (no ConfigMap).
    """
    from kubernetes.client.exceptions import ApiException

    needed = needed_flags(predictor)
    if not needed:
        return
    where = f"ConfigMap {NAMESPACE}/{CONFIG_MAP}"
    try:
        data = core_api.read_namespaced_config_map(CONFIG_MAP, NAMESPACE).data or {}
    except ApiException as exc:
        if exc.status == 404:
            raise BackendError(
                f"kserve.deployment_mode Serverless needs Knative Serving, but {where} does not exist; "
                "use deployment_mode: RawDeployment or install Knative Serving"
            ) from None
        print(
            f"[deploy] cannot read {where} (HTTP {exc.status}) to check Knative's feature flags; this service "
            f"needs {', '.join(sorted(needed))} on (not 'disabled'), or its revision is refused",
            flush=True,
        )
        return
    off = sorted(flag for flag, (default, ok) in needed.items() if data.get(flag, default).lower() not in ok)
    if off:
        raise BackendError(
            f"Knative Serving refuses this predictor in Serverless mode: {', '.join(off)} is not enabled in "
            f"{where}; enable it (kubectl patch configmap {CONFIG_MAP} -n {NAMESPACE} --type merge -p "
            f'\'{{"data":{{"{off[0]}":"enabled"}}}}\'), drop the node selector/tolerations, or use '
            "kserve.deployment_mode: RawDeployment"
        )
