"""A loopback Kubernetes API server for KServe InferenceServices, for tests.

It answers the paths the ``kubernetes`` client's CustomObjectsApi calls for
``serving.kserve.io/v1beta1`` InferenceServices (GET, POST, PUT with ``resourceVersion``, PATCH with a
JSON merge patch, DELETE) and Knative's ``knative-serving/config-features`` ConfigMap, keeps each
object's ``metadata.generation``/``resourceVersion``, and plays the KServe controller: a new revision
becomes Ready after ``ready_after`` status polls, a revision listed in ``failing_revisions`` never does
(its model fails to load), and traffic follows ``canaryTrafficPercent`` with a ``latest`` tag URL.

Every write is admitted as the real server admits it: the vendored InferenceService CRD schema of
``kserve_version`` (``tests/k8s_schema.py``: unknown fields refused under ``fieldValidation=Strict``,
dropped with a ``Warning`` otherwise; 400/422), then KServe's webhooks (``tests/kserve_webhook.py``:
defaulting, then validation, 403). In Serverless (Knative) mode a predictor that sets
``nodeSelector``/``tolerations`` (or an emptyDir volume) while ``knative_features`` leaves the flag
disabled never becomes Ready, with the message Knative's webhook gives: the InferenceService itself
is accepted, as on a real cluster. Every request is recorded (method, path, query, headers, body).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes import kserve_webhook
from tests.fakes.k8s_schema import ApiError, admit, load_crd, status, warning_header
from tests.fakes.loopback import LoopbackHandler, LoopbackServer

PATH = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices(?:/(?P<name>[^/?]+))?$"
)
FEATURES = "/api/v1/namespaces/knative-serving/configmaps/config-features"
SCHEMAS = {
    "v0.15.0": "inferenceservices.serving.kserve.io.v0.15.0.json",
    "v0.20.0": "inferenceservices.serving.kserve.io.v0.20.0.json",
}
"""The vendored InferenceService CRD schema of each KServe version the fake can play."""

KNATIVE_GATES = {
    # predictor field -> (Knative feature flag, its default) (knative/serving pkg/apis/config/features.go)
    "nodeSelector": ("kubernetes.podspec-nodeselector", "disabled"),
    "tolerations": ("kubernetes.podspec-tolerations", "disabled"),
    "volumes": ("kubernetes.podspec-volumes-emptydir", "enabled"),
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeKServe(LoopbackServer):
    """The API server plus a simulated KServe controller."""

    def __init__(
        self,
        predictor_url: str,
        ready_after: int = 2,
        kserve_version: str = "v0.20.0",
        knative_features: dict[str, str] | None = None,
    ):
        self.predictor_url = predictor_url  # where the (real) OpenAI server of every revision answers
        self.ready_after = ready_after
        self.kserve_version = kserve_version
        self.crd = load_crd(SCHEMAS[kserve_version])
        # config-features' data; {} = Knative installed with its defaults, None = no Knative at all
        self.knative_features: dict[str, str] | None = {} if knative_features is None else knative_features
        self.failing_revisions: set[int] = set()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.state: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.warnings: list[str] = []  # unknown fields dropped from writes without fieldValidation=Strict
        self._lock = threading.Lock()

    # --- admission (apiserver + KServe webhooks) -----------------------------------------------
    def admit(
        self, body: dict[str, Any], old: dict[str, Any] | None, field_validation: str | None
    ) -> tuple[dict[str, Any], list[str]]:
        obj, warnings = admit(self.crd, body, old=old, field_validation=field_validation)
        kserve_webhook.default(obj, self.kserve_version)
        kserve_webhook.validate(obj, old, self.kserve_version)
        self.warnings += warnings
        return obj, warnings

    def replace(
        self, key: tuple[str, str], body: dict[str, Any], field_validation: str | None
    ) -> tuple[dict[str, Any], list[str]]:
        """PUT: the whole object, with the resourceVersion it was read at; status is kept (a subresource)."""
        old = self.objects[key]
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if not sent:
            detail = "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
            raise ApiError(
                422,
                status(422, "Invalid", f'{self.crd.kind}.{self.crd.group} "{key[1]}" is invalid: {detail}'),
            )
        if sent != old["metadata"]["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{key[1]}": the object has '
                "been modified; please apply your changes to the latest version and try again"
            )
            raise ApiError(409, status(409, "Conflict", message))
        obj, warnings = self.admit(body, old, field_validation)
        for field in ("uid", "creationTimestamp", "generation", "resourceVersion", "namespace"):
            if field in old["metadata"]:
                obj["metadata"][field] = old["metadata"][field]
        obj.pop("status", None)
        if "status" in old:
            obj["status"] = old["status"]
        return obj, warnings

    def knative_denial(self, obj: dict[str, Any]) -> str | None:
        """What Knative's webhook says of the revision a Serverless predictor makes, or None when allowed."""
        mode = (obj["metadata"].get("annotations") or {}).get(kserve_webhook.MODE, "")
        if mode not in ("Serverless", "Knative"):
            return None
        predictor, flags = obj["spec"]["predictor"], self.knative_features or {}
        refused = []
        for field, (flag, default) in KNATIVE_GATES.items():
            value = flags.get(flag, default).lower()
            used = (
                predictor.get(field)
                if field != "volumes"
                else any("emptyDir" in v for v in predictor.get("volumes") or [])
            )
            if used and (value == "disabled" or (field == "volumes" and value != "enabled")):
                refused.append(f"spec.template.spec.{field}")
        if not refused:
            return None
        return (
            'admission webhook "validation.webhook.serving.knative.dev" denied the request: validation failed: '
            f"must not set the field(s): {', '.join(refused)}"
        )

    # --- the simulated controller -------------------------------------------------------------
    @staticmethod
    def _template(obj: dict[str, Any]) -> str:
        predictor = dict(obj["spec"].get("predictor") or {})
        predictor.pop("canaryTrafficPercent", None)  # traffic is routing, not a new revision
        return json.dumps(predictor, sort_keys=True)

    def _changed(self, key: tuple[str, str], before: dict[str, Any] | None) -> None:
        obj = self.objects[key]
        st = self.state.setdefault(
            key, {"revision": 0, "ready_revision": None, "rolled_out": None, "polls": 0}
        )
        if before is None or before.get("spec") != obj.get("spec"):
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 0) + 1
            st["polls"] = 0
        if before is None or self._template(before) != self._template(obj):
            st["revision"] += 1
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"].get("resourceVersion", "0")) + 1)

    def revision_name(self, name: str, n: int | None) -> str | None:
        return f"{name}-predictor-{n:05d}" if n else None

    def _status(self, key: tuple[str, str]) -> None:
        obj, st = self.objects[key], self.state[key]
        name, gen = key[1], obj["metadata"]["generation"]
        st["polls"] += 1
        latest = st["revision"]
        conditions: list[dict[str, Any]] = []
        status: dict[str, Any] = {"observedGeneration": gen - 1 if st["polls"] < self.ready_after else gen}
        mode = (obj["metadata"].get("annotations") or {}).get(kserve_webhook.MODE, "Serverless")
        status["deploymentMode"] = kserve_webhook.mode_of(mode, self.kserve_version)
        denial = self.knative_denial(obj)
        if denial:
            status["observedGeneration"] = gen
            conditions.append(
                {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed", "message": denial}
            )
            conditions.append(
                {"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": denial}
            )
        elif latest in self.failing_revisions:
            status["observedGeneration"] = gen
            status["modelStatus"] = {
                "transitionStatus": "BlockedByFailedLoad",
                "lastFailureInfo": {
                    "reason": "ModelLoadFailed",
                    "message": "vLLM exited: CUDA out of memory",
                },
            }
            conditions.append({"type": "Ready", "status": "False", "reason": "RevisionFailed"})
        elif st["polls"] >= self.ready_after:
            if st["ready_revision"] != latest:
                st["previous"] = st["ready_revision"]
                st["ready_revision"] = latest
            conditions.append({"type": "Ready", "status": "True"})
            status["modelStatus"] = {"transitionStatus": "UpToDate"}
        else:
            conditions.append({"type": "Ready", "status": "False", "reason": "RevisionMissing"})
        predictor = obj["spec"]["predictor"]
        canary = predictor.get("canaryTrafficPercent")
        ready = st["ready_revision"]
        if ready == latest and canary is None:
            st["rolled_out"] = latest  # promoted (or first rollout): the latest revision takes everything
        traffic = [{"latestRevision": True, "percent": 100, "revisionName": self.revision_name(name, ready)}]
        if canary is not None and st["rolled_out"] and st["rolled_out"] != latest:
            traffic = [
                {
                    "tag": "prev",
                    "revisionName": self.revision_name(name, st["rolled_out"]),
                    "percent": 100 - canary,
                    "url": "http://127.0.0.1:9",  # the old revision: nothing listens there
                },
                {
                    "tag": "latest",
                    "latestRevision": True,
                    "revisionName": self.revision_name(name, latest),
                    "percent": canary,
                    "url": self.predictor_url,
                },
            ]
        status["conditions"] = conditions
        status["url"] = self.predictor_url if not traffic[0].get("tag") else "http://127.0.0.1:9"
        status["address"] = {"url": status["url"]}
        status["components"] = {
            "predictor": {
                "latestCreatedRevision": self.revision_name(name, latest),
                "latestReadyRevision": self.revision_name(name, ready),
                "latestRolledoutRevision": self.revision_name(name, st["rolled_out"]),
                "traffic": traffic,
            }
        }
        obj["status"] = status

    # --- HTTP -----------------------------------------------------------------------------------
    def handler(self) -> type[LoopbackHandler]:
        fake = self

        class Handler(LoopbackHandler):
            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": reason,
                        "message": message,
                        "code": code,
                    },
                )

            def _handle(self) -> None:
                body = self._read_json()
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with fake._lock:
                    fake.requests.append(
                        {
                            "method": self.command,
                            "path": url.path,
                            "query": query,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    try:
                        code, payload, headers = fake.route(self.command, url.path, query, body, self.headers)
                    except ApiError as exc:
                        code, payload, headers = exc.status, exc.body, {}
                    return self._send(code, payload, headers=headers)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        return Handler

    def route(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """``(status, body, headers)`` of one request; refusals raise ApiError."""
        validation = query.get("fieldValidation")
        if path == FEATURES and method == "GET":
            if self.knative_features is None:
                raise ApiError(404, status(404, "NotFound", 'configmaps "config-features" not found'))
            meta = {"name": "config-features", "namespace": "knative-serving"}
            return (
                200,
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": self.knative_features},
                {},
            )
        match = PATH.match(path)
        if not match:
            raise ApiError(404, status(404, "NotFound", f"no route {path}"))
        if method == "POST" and not match["name"]:
            key = (match["ns"], (body.get("metadata") or {}).get("name", ""))
            if key in self.objects:
                raise ApiError(
                    409,
                    status(
                        409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{key[1]}" already exists'
                    ),
                )
            obj, warnings = self.admit(body, None, validation)
            obj["metadata"].update(
                namespace=key[0], uid=str(uuid.uuid4()), creationTimestamp="2026-11-26T12:00:00Z"
            )
            self.objects[key] = obj
            self._changed(key, None)
            return 201, obj, warning_header(warnings)
        key = (match["ns"], match["name"] or "")
        if key not in self.objects:
            raise ApiError(
                404, status(404, "NotFound", f'inferenceservices.serving.kserve.io "{key[1]}" not found')
            )
        before = copy.deepcopy(self.objects[key])
        if method == "GET":
            self._status(key)
            return 200, self.objects[key], {}
        if method == "PUT":
            self.objects[key], warnings = self.replace(key, body, validation)
        elif method == "PATCH":
            if headers.get("Content-Type") != "application/merge-patch+json":
                raise ApiError(415, status(415, "UnsupportedMediaType", headers.get("Content-Type", "")))
            merged = merge_patch({k: v for k, v in before.items() if k != "status"}, body)
            obj, warnings = self.admit(merged, before, validation)
            obj["status"] = before.get("status")
            self.objects[key] = {k: v for k, v in obj.items() if v is not None}
        elif method == "DELETE":
            del self.objects[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, {}
        else:
            raise ApiError(405, status(405, "MethodNotAllowed", method))
        self._changed(key, before)
        return 200, self.objects[key], warning_header(warnings)

    def methods(self) -> list[str]:
        return [r["method"] for r in self.requests]


def write_kubeconfig(path: str, server: str, token: str, namespace: str = "default") -> str:
    """A kubeconfig whose current context talks to ``server`` with a bearer token."""
    import yaml

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "loopback", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [
            {"name": "loopback", "context": {"cluster": "loopback", "user": "tester", "namespace": namespace}}
        ],
        "current-context": "loopback",
    }
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path
