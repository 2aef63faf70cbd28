"""A loopback Kubernetes API server for KServe InferenceServices, for tests.

It answers the paths the ``kubernetes`` client's CustomObjectsApi calls for
``serving.kserve.io/v1beta1`` InferenceServices (GET, POST, PATCH with a JSON merge patch, DELETE),
keeps each object's ``metadata.generation``, and plays the KServe controller: a new revision becomes
Ready after ``ready_after`` status polls, a revision listed in ``failing_revisions`` never does (its
model fails to load), and traffic follows ``canaryTrafficPercent`` with a ``latest`` tag URL. Every
request is recorded (method, path, headers, body) for asserts.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from typing import Any

from tests.fakes.loopback import LoopbackHandler, LoopbackServer

PATH = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices(?:/(?P<name>[^/?]+))?(?:\?.*)?$"
)


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

    def __init__(self, predictor_url: str, ready_after: int = 2):
        self.predictor_url = predictor_url  # where the (real) OpenAI server of every revision answers
        self.ready_after = ready_after
        self.failing_revisions: set[int] = set()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.state: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

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
        if latest in self.failing_revisions:
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
                with fake._lock:
                    fake.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    match = PATH.match(self.path)
                    if not match:
                        return self._status(404, "NotFound", f"no route {self.path}")
                    key = (match["ns"], match["name"] or "")
                    if self.command == "POST" and not match["name"]:
                        key = (match["ns"], body["metadata"]["name"])
                        if key in fake.objects:
                            return self._status(409, "AlreadyExists", f"{key[1]} already exists")
                        obj = copy.deepcopy(body)
                        obj["metadata"].update(namespace=key[0], uid=str(uuid.uuid4()))
                        fake.objects[key] = obj
                        fake._changed(key, None)
                        return self._send(201, obj)
                    if key not in fake.objects:
                        return self._status(
                            404, "NotFound", f'inferenceservices.serving.kserve.io "{key[1]}" not found'
                        )
                    if self.command == "GET":
                        fake._status(key)
                        return self._send(200, fake.objects[key])
                    if self.command == "PATCH":
                        if self.headers.get("Content-Type") != "application/merge-patch+json":
                            return self._status(
                                415, "UnsupportedMediaType", self.headers.get("Content-Type", "")
                            )
                        before = copy.deepcopy(fake.objects[key])
                        fake.objects[key] = merge_patch(fake.objects[key], body)
                        fake._changed(key, before)
                        return self._send(200, fake.objects[key])
                    if self.command == "DELETE":
                        del fake.objects[key]
                        return self._send(200, {"kind": "Status", "status": "Success"})
                    return self._status(405, "MethodNotAllowed", self.command)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        return Handler

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
