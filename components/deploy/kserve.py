"""``target: kserve``: a KServe v1beta1 InferenceService running vLLM's OpenAI server.

The predictor is one custom container named ``kserve-container``; its ``STORAGE_URI`` variable makes
KServe's storage initializer download the model to ``/mnt/models`` (storage credentials come from the
Secrets of ``kserve.service_account_name``). The API key, when asked for, reaches vLLM by
``secretKeyRef``: the manifest names the Secret, never the key.

Apply is create-or-replace, never delete + create. An update replaces the object (PUT with the
``resourceVersion`` it was read at), so its spec afterwards is exactly the spec a fresh create would
have: a field dropped from the config (a node selector, the service account) is gone, not merged
over. Labels, annotations and finalizers other tools set are kept; distilflow's own are rewritten.
Writes go with ``fieldValidation=Strict``: a field the server's CRD lacks fails the step instead of
being dropped.

Deployment modes (``kserve.deployment_mode``): RawDeployment (the default; KServe >= 0.16 calls it
Standard) runs a Deployment and honours nodeSelector/tolerations with no cluster setting. Serverless
(Knative) gives canary rollouts: on an update the new revision first gets ``canaryTrafficPercent``
of the traffic; once it is Ready and passed the smoke test the field is removed (the documented
promotion), and if it fails the field is set to 0, so the previous revision serves all traffic
again. Serverless with a node selector or tolerations needs Knative feature flags, checked before
applying (``knative.py``). The mode of an existing service cannot change (KServe refuses it).
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

from distilflow.components.deploy.config import DeployConfig
from distilflow.components.deploy.vllm_server import VLLM_MODULE, server_image, vllm_args
from distilflow.errors import BackendError
from distilflow.launch.kube_status import status_message

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER = "kserve-container"
PORT = 8080
MODEL_DIR = "/mnt/models"
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
MANAGED_ANNOTATIONS = (MODE_ANNOTATION, "serving.kserve.io/enable-tag-routing")
"""Annotations distilflow sets; on an update they are rewritten (dropped when the new manifest lacks them)."""
MODE_NAMES = {"RawDeployment": "Standard", "Serverless": "Knative"}
"""KServe >= 0.16 stores the deprecated mode names under their new names."""


def render(config: DeployConfig, thinking: bool) -> dict[str, Any]:
    """The InferenceService manifest (no canary field: that is set per update)."""
    k = config.kserve
    resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for name, value in (("cpu", k.cpu), ("memory", k.memory)):
        if value:
            resources["requests"][name] = resources["limits"][name] = value
    if config.gpus:
        resources["limits"][k.gpu_resource] = str(config.gpus)
    env: list[dict[str, Any]] = [{"name": "STORAGE_URI", "value": config.model}]
    if k.api_key_secret:
        ref = {"name": k.api_key_secret, "key": k.api_key_secret_key}
        env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": ref}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": server_image(config),
        "command": list(VLLM_MODULE),
        "args": vllm_args(config, MODEL_DIR, PORT, thinking),
        "env": env,
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "resources": {key: value for key, value in resources.items() if value},
    }
    predictor: dict[str, Any] = {
        "minReplicas": k.min_replicas,
        "maxReplicas": k.max_replicas,
        "containers": [container],
    }
    node_selector = dict(k.node_selector)
    if k.gpu_type:
        node_selector["nvidia.com/gpu.product"] = k.gpu_type
    if node_selector:
        predictor["nodeSelector"] = node_selector
    if k.tolerations:
        predictor["tolerations"] = [dict(t) for t in k.tolerations]
    if k.service_account_name:
        predictor["serviceAccountName"] = k.service_account_name
    if k.shm_size:
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
        predictor["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k.shm_size}}]
    annotations = {MODE_ANNOTATION: k.deployment_mode}
    if k.deployment_mode == "Serverless":
        # A "latest" tag URL reaches the new revision alone, so a canary is smoke-tested before promotion.
        annotations["serving.kserve.io/enable-tag-routing"] = "true"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": config.service_name,
            "namespace": k.namespace,
            "labels": {"app.kubernetes.io/managed-by": "distilflow"},
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }


def custom_objects_api(context: str | None) -> Any:
    """A CustomObjectsApi on the in-cluster service account, else on the kubeconfig (``$KUBECONFIG``)."""
    from kubernetes import client
    from kubernetes import config as kube_config

    conf = client.Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=conf)
    except kube_config.ConfigException:
        # $KUBECONFIG is read here, not when the kubernetes package was imported
        kube_config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), context=context, client_configuration=conf
        )
    return client.CustomObjectsApi(client.ApiClient(conf))


class KServeDeployment:
    """One create-or-update of an InferenceService, with its wait, promotion and rollback."""

    def __init__(self, config: DeployConfig, api: Any):
        self.config = config
        self.api = api
        self.name = config.service_name or ""
        self.namespace = config.kserve.namespace
        self.where = f"InferenceService {self.namespace}/{self.name}"
        self.previous_revision: str | None = None
        self.canary = False

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(GROUP, VERSION, self.namespace, PLURAL, *args, **kwargs)
        except ApiException as exc:
            hint = ""
            if exc.status == 404:
                hint = " (is KServe installed? kubectl get crd inferenceservices.serving.kserve.io)"
            elif exc.status == 409 and what == "replace":
                hint = "; it changed while this step was updating it: rerun the step"
            raise BackendError(
                f"{self.where}: {what} failed with HTTP {exc.status}: {status_message(exc)}{hint}"
            ) from None

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise BackendError(
                f"{self.where}: reading it failed with HTTP {exc.status}: {exc.body}"
            ) from None

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the service, or replace the existing one's spec (with a canary step in Serverless mode)."""
        from distilflow.components.deploy import knative

        k = self.config.kserve
        if k.deployment_mode == "Serverless":
            from kubernetes import client

            knative.check(client.CoreV1Api(self.api.api_client), manifest["spec"]["predictor"])
        existing = self.get()
        if existing is None:
            print(f"[deploy] creating {self.where}", flush=True)
            return self._call(
                "create", self.api.create_namespaced_custom_object, manifest, field_validation="Strict"
            )
        self._same_mode(existing)
        predictor = (existing.get("status", {}).get("components") or {}).get("predictor") or {}
        self.previous_revision = predictor.get("latestReadyRevision") or predictor.get(
            "latestRolledoutRevision"
        )
        self.canary = (
            bool(self.previous_revision)
            and k.deployment_mode == "Serverless"
            and k.canary_traffic_percent < 100
        )
        body = replacement(existing, manifest)
        if self.canary:
            body["spec"]["predictor"]["canaryTrafficPercent"] = k.canary_traffic_percent
        step = f" with {k.canary_traffic_percent}% canary traffic" if self.canary else ""
        print(
            f"[deploy] updating {self.where} (previous revision {self.previous_revision}){step}", flush=True
        )
        return self._call(
            "replace", self.api.replace_namespaced_custom_object, self.name, body, field_validation="Strict"
        )

    def _same_mode(self, existing: dict[str, Any]) -> None:
        """KServe refuses to change the deployment mode of an existing service: say so before trying."""
        wanted = self.config.kserve.deployment_mode
        stored = (existing.get("status") or {}).get("deploymentMode") or (
            (existing.get("metadata") or {}).get("annotations") or {}
        ).get(MODE_ANNOTATION)
        if stored and MODE_NAMES.get(stored, stored) != MODE_NAMES[wanted]:
            raise BackendError(
                f"{self.where} runs in deployment mode {stored} and KServe cannot change the mode of an existing "
                f"service to {wanted}; set kserve.deployment_mode to its mode, or deploy under another "
                "service_name (or delete the old service first)"
            )

    def wait_ready(self, generation: int | None) -> dict[str, Any]:
        """Poll until Ready for ``generation`` with its latest revision ready; fail on a failed load."""
        started = time.monotonic()
        timeout, last = self.config.startup_timeout_s, "no status yet"
        while time.monotonic() - started < timeout:
            obj = self.get() or {}
            status = obj.get("status") or {}
            model_status = status.get("modelStatus") or {}
            if model_status.get("transitionStatus") in FAILED_TRANSITIONS:
                info = model_status.get("lastFailureInfo") or {}
                raise BackendError(
                    f"{self.where}: the model failed to load ({model_status['transitionStatus']}): "
                    f"{info.get('reason', '')} {info.get('message', '')}".strip()
                )
            conditions = {c.get("type"): c for c in status.get("conditions") or []}
            ready = conditions.get("Ready", {})
            predictor = (status.get("components") or {}).get("predictor") or {}
            current = generation is None or (status.get("observedGeneration") or 0) >= generation
            revision_ready = predictor.get("latestCreatedRevision") in (
                None,
                predictor.get("latestReadyRevision"),
            )
            if current and ready.get("status") == "True" and revision_ready:
                print(f"[deploy] {self.where} is Ready after {time.monotonic() - started:.0f}s", flush=True)
                return obj
            last = f"Ready={ready.get('status', 'Unknown')} {ready.get('reason', '')} {ready.get('message', '')}".strip()
            time.sleep(self.config.poll_interval_s)
        raise BackendError(
            f"{self.where} was not Ready within startup_timeout_s={timeout:g} ({last}); see "
            f"kubectl describe inferenceservice {self.name} -n {self.namespace}"
        )

    def promote(self) -> dict[str, Any]:
        """Remove canaryTrafficPercent: the new revision takes all traffic (KServe's promotion)."""
        body = {"spec": {"predictor": {"canaryTrafficPercent": None}}}
        obj = self._call("promote", self.api.patch_namespaced_custom_object, self.name, body)
        return self.wait_ready(obj.get("metadata", {}).get("generation"))

    def roll_back(self) -> str:
        """Say what serves now; after a canary step, send all traffic back (canaryTrafficPercent 0)."""
        if not self.previous_revision:
            return f"there was no previous revision to fall back to; {self.where} is left as it is for inspection"
        if not self.canary:
            return (
                f"the previous revision {self.previous_revision} keeps serving: traffic only moves to a Ready "
                "revision (Knative) or Ready pods (a Deployment's rolling update); nothing was deleted"
            )
        body = {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
        self._call("roll back", self.api.patch_namespaced_custom_object, self.name, body)
        return (
            f"rolled back: the previous revision {self.previous_revision} serves all traffic "
            "(canaryTrafficPercent=0); the failed revision is kept for inspection"
        )


def replacement(existing: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """The object that replaces ``existing``: the manifest's spec as it stands (nothing merged from the old
    spec), the existing metadata (``resourceVersion``, finalizers, others' labels and annotations) with
    distilflow's labels and annotations rewritten."""
    old = existing.get("metadata") or {}
    meta = {k: copy.deepcopy(v) for k, v in old.items() if k != "managedFields"}
    annotations = {k: v for k, v in (old.get("annotations") or {}).items() if k not in MANAGED_ANNOTATIONS}
    meta["annotations"] = {**annotations, **manifest["metadata"].get("annotations", {})}
    meta["labels"] = {**(old.get("labels") or {}), **manifest["metadata"].get("labels", {})}
    return {
        "apiVersion": manifest["apiVersion"],
        "kind": manifest["kind"],
        "metadata": meta,
        "spec": copy.deepcopy(manifest["spec"]),
    }


def urls(obj: dict[str, Any], smoke_via: str, canary: bool) -> tuple[str, str]:
    """(the service's OpenAI base URL, the URL the smoke test calls)."""
    status = obj.get("status") or {}
    url = status.get("url")
    if not url:
        raise BackendError(
            f"InferenceService {obj.get('metadata', {}).get('name')} is Ready but reports no status.url"
        )
    smoke = ((status.get("address") or {}).get("url") if smoke_via == "address" else None) or url
    if canary:
        traffic = ((status.get("components") or {}).get("predictor") or {}).get("traffic") or []
        latest = [t.get("url") for t in traffic if t.get("tag") == "latest" and t.get("url")]
        smoke = latest[0] if latest else smoke
    return url.rstrip("/") + "/v1", smoke.rstrip("/") + "/v1"
