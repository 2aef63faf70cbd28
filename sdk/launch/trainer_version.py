"""Which Kubeflow Trainer versions the TrainJob launcher supports, and the check made before submitting.

A TrainJob from ``distilflow.launch.trainjob`` uses ``spec.runtimeRef``, ``spec.trainer`` (image, command,
numNodes, resourcesPerNode, env with ``valueFrom.secretKeyRef`` for secrets) and metadata labels:
fields of the ``trainer.kubeflow.org/v1alpha1`` TrainJob CRD of every Trainer 2.x. It sets no
``runtimePatches``: Trainer >= 2.2's jobset plugin refuses a patch that sets env on the ``node``
container, and Trainer 2.1 has no such field.

The floor is **v2.2.0**, the first release that publishes its version (ConfigMap
``kubeflow-trainer-public`` in the Trainer's namespace, readable by every authenticated user), so a
cluster below it is refused before anything is submitted; the bodies were checked against the CRDs
and webhook rules of v2.2.0 and v2.3.0 (tests/data, tests/trainer_webhook.py). A newer release is
used with a note.
"""

from __future__ import annotations

import os
import re
from typing import Any

from distilflow.errors import DistilflowError

FLOOR = (2, 2, 0)
CHECKED = ((2, 2), (2, 3))
"""Trainer minor versions whose TrainJob CRD and webhook the emitted bodies are tested against."""

CONFIG_MAP = "kubeflow-trainer-public"
NAMESPACE_ENV = "KUBEFLOW_SYSTEM_NAMESPACE"
"""The variable the kubeflow SDK reads for the Trainer's namespace (default kubeflow-system)."""


def parse(version: str) -> tuple[int, int, int] | None:
    """``v2.3.0`` / ``2.3.0-rc.1`` -> (2, 3, 0); None when it is not a release number (e.g. ``dev``)."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+].*)?", version.strip())
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def check(core_api: Any, namespace: str | None = None) -> str:
    """Read the Trainer's version from its public ConfigMap; refuse one below v2.2.0. Returns it.

    Raises:
        DistilflowError: The ConfigMap is missing (Trainer older than v2.2.0, or installed in another
            namespace), unreadable, or names a version below the floor.
    """
    from kubernetes.client.exceptions import ApiException

    namespace = namespace or os.environ.get(NAMESPACE_ENV) or "kubeflow-system"
    where = f"ConfigMap {namespace}/{CONFIG_MAP}"
    floor = "v" + ".".join(map(str, FLOOR))
    try:
        data = core_api.read_namespaced_config_map(CONFIG_MAP, namespace).data or {}
    except ApiException as exc:
        if exc.status == 404:
            raise DistilflowError(
                f"Kubeflow Trainer's version {where} does not exist: distilflow's TrainJob launcher needs "
                f"Trainer >= {floor}, which publishes it. Upgrade Trainer, or, if it is installed in another "
                f"namespace, set ${NAMESPACE_ENV} to that namespace"
            ) from None
        raise DistilflowError(
            f"cannot read Kubeflow Trainer's version from {where} (HTTP {exc.status}: {exc.reason}); "
            "Trainer's install grants every authenticated user read access to it"
        ) from None
    version = str(data.get("kubeflow_trainer_version") or "")
    number = parse(version)
    if number is not None and number < FLOOR:
        raise DistilflowError(
            f"Kubeflow Trainer {version} ({where}) is older than {floor}, the oldest version distilflow's "
            "TrainJob launcher supports; upgrade Trainer or run the stage with launcher: local"
        )
    if number is None:
        print(
            f"[trainjob] Kubeflow Trainer reports version {version!r} (not a release number); going on",
            flush=True,
        )
    elif number[:2] not in CHECKED:
        checked = ", ".join(f"v{a}.{b}" for a, b in CHECKED)
        print(
            f"[trainjob] Kubeflow Trainer {version} is newer than the versions checked ({checked}); going on",
            flush=True,
        )
    return version
