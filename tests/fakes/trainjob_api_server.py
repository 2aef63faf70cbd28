"""A loopback Kubernetes API server for Kubeflow Trainer TrainJobs, for tests.

It answers the paths the ``kubeflow`` SDK (0.5.0, Kubernetes backend) calls: the trainer's public
ConfigMap, namespaced TrainingRuntimes (none: 404) and ClusterTrainingRuntimes, TrainJob create and
get, the job's pod list (by the JobSet label selector) and a node pod's log.

A TrainJob create is admitted as the real server admits it: the vendored TrainJob CRD schema of the
Trainer version it plays (``tests/k8s_schema.py``: unknown fields refused under
``fieldValidation=Strict``, dropped with a ``Warning`` header otherwise, then defaults and the
schema's rules: 400/422), then Trainer's validating webhook (``tests/trainer_webhook.py``: 403).
``trainer_version`` picks the schema and the version the public ConfigMap reports; Trainer releases
before v2.2.0 have no such ConfigMap (404).

It plays the Trainer
controller: the pods of a new job are Pending at the first status read and Running after it; at the
``finish_at``-th read the job's work runs (``job_body(trainjob)``, the test's stand-in for the
nodes: it returns None for success or ``(reason, message)`` for failure) and the job gets a Complete
or Failed condition. Every request is recorded (method, path, body) for asserts.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.k8s_schema import ApiError, admit, load_crd, status, warning_header
from tests.fakes.loopback import LoopbackHandler, LoopbackServer
from tests.fakes.trainer_webhook import admit_trainjob

API = "/apis/trainer.kubeflow.org/v1alpha1"
STAMP = "2026-11-26T12:00:00Z"

SCHEMAS = {
    "2.2": "trainjobs.trainer.kubeflow.org.v2.2.0.json",
    "2.3": "trainjobs.trainer.kubeflow.org.v2.3.0.json",
    "dev": "trainjobs.trainer.kubeflow.org.v2.3.0.json",
}
"""The vendored TrainJob CRD schema of each Trainer version the fake can play (``dev`` = master builds)."""


def minor(version: str) -> str:
    """``v2.3.0`` -> ``2.3``; ``dev`` stays ``dev``."""
    parts = version.lstrip("v").split(".")
    return "dev" if version == "dev" else ".".join(parts[:2])


ROUTES = [
    ("configmap", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/configmaps/(?P<name>[^/]+)$")),
    ("runtime", re.compile(rf"^{API}/namespaces/(?P<ns>[^/]+)/trainingruntimes/(?P<name>[^/]+)$")),
    ("cluster_runtime", re.compile(rf"^{API}/clustertrainingruntimes/(?P<name>[^/]+)$")),
    ("trainjobs", re.compile(rf"^{API}/namespaces/(?P<ns>[^/]+)/trainjobs$")),
    ("trainjob", re.compile(rf"^{API}/namespaces/(?P<ns>[^/]+)/trainjobs/(?P<name>[^/]+)$")),
    ("pods", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")),
    ("log", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")),
]


def cluster_runtime(name: str = "torch-distributed") -> dict[str, Any]:
    """A ClusterTrainingRuntime like the one Kubeflow Trainer installs."""
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": "auto"}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "metadata": {
                                    "labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
                                },
                                "spec": {
                                    "template": {
                                        "spec": {
                                            "containers": [
                                                {
                                                    "name": "node",
                                                    "image": "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime",
                                                }
                                            ]
                                        }
                                    }
                                },
                            },
                        }
                    ]
                }
            },
        },
    }


class FakeTrainer(LoopbackServer):
    """The API server plus a simulated Trainer controller."""

    def __init__(
        self,
        job_body: Callable[[dict[str, Any]], tuple[str, str] | None],
        log_lines: list[str],
        finish_at: int = 3,
        trainer_version: str = "v2.3.0",
    ):
        self.trainer_version = trainer_version
        self.job_body = job_body
        self.log_lines = log_lines
        self.finish_at = finish_at
        self.runtimes = {"torch-distributed": cluster_runtime()}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.polls: dict[tuple[str, str], int] = {}
        self.requests: list[dict[str, Any]] = []
        self.warnings: list[str] = []  # unknown fields dropped from requests without fieldValidation=Strict
        self._lock = threading.Lock()

    def create(
        self, ns: str, body: dict[str, Any], field_validation: str | None
    ) -> tuple[dict[str, Any], list[str]]:
        """Admit a TrainJob as the apiserver and Trainer's webhook do; store it. Raises ApiError."""
        if minor(self.trainer_version) not in SCHEMAS:
            raise RuntimeError(
                f"FakeTrainer has no vendored TrainJob schema for Trainer {self.trainer_version}"
            )
        crd = load_crd(SCHEMAS[minor(self.trainer_version)])
        obj, warnings = admit(crd, body, field_validation=field_validation)
        runtimes = {("ClusterTrainingRuntime", n): r for n, r in self.runtimes.items()}
        admit_trainjob(obj, runtimes)
        key = (ns, obj["metadata"]["name"])
        if key in self.jobs:
            message = f'trainjobs.trainer.kubeflow.org "{key[1]}" already exists'
            raise ApiError(409, status(409, "AlreadyExists", message))
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=STAMP, generation=1)
        self.jobs[key] = obj
        self.warnings += warnings
        return obj, warnings

    def _advance(self, key: tuple[str, str]) -> None:
        """One status read of a job: the controller moves it on."""
        self.polls[key] = self.polls.get(key, 0) + 1
        job = self.jobs[key]
        if self.polls[key] == self.finish_at and not job.get("status"):
            failure = self.job_body(copy.deepcopy(job))
            if failure is None:
                cond = {"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "done"}
            else:
                cond = {"type": "Failed", "status": "True", "reason": failure[0], "message": failure[1]}
            cond["lastTransitionTime"] = STAMP
            job["status"] = {"conditions": [cond]}

    def _pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        match = re.match(r"jobset\.sigs\.k8s\.io/jobset-name=([^,]+),", selector)
        key = (ns, match[1]) if match else None
        if key not in self.jobs:
            return []
        job = self.jobs[key]
        nodes = (job["spec"].get("trainer") or {}).get("numNodes") or 1
        done = (job.get("status") or {}).get("conditions")
        phase = "Pending" if self.polls.get(key, 0) < 2 else "Running"
        if done:
            phase = "Succeeded" if done[0]["type"] == "Complete" else "Failed"
        pods = []
        for i in range(nodes):
            pods.append(
                {
                    "metadata": {
                        "name": f"{key[1]}-node-0-{i}-abcde",
                        "namespace": ns,
                        "creationTimestamp": STAMP,
                        "labels": {
                            "jobset.sigs.k8s.io/jobset-name": key[1],
                            "jobset.sigs.k8s.io/replicatedjob-name": "node",
                            "batch.kubernetes.io/job-completion-index": str(i),
                        },
                    },
                    "spec": {
                        "containers": [{"name": "node", "image": job["spec"]["trainer"].get("image", "")}]
                    },
                    "status": {"phase": phase},
                }
            )
        return pods

    def handler(self) -> type[LoopbackHandler]:
        fake = self

        class Handler(LoopbackHandler):
            protocol_version = "HTTP/1.1"

            def _missing(self, what: str) -> None:
                self._send(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "NotFound",
                        "message": f"{what} not found",
                        "code": 404,
                    },
                )

            def _handle(self) -> None:
                raw = self._read_body().decode()
                body = json.loads(raw) if raw else None
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with fake._lock:
                    fake.requests.append(
                        {"method": self.command, "path": url.path, "query": query, "raw": raw, "body": body}
                    )
                    found = [(name, m) for name, pattern in ROUTES if (m := pattern.match(url.path))]
                    if not found:
                        return self._missing(url.path)
                    route, m = found[0]
                    if route == "configmap":
                        public = (m["ns"], m["name"]) == ("kubeflow-system", "kubeflow-trainer-public")
                        if (
                            not public or minor(fake.trainer_version) not in SCHEMAS
                        ):  # no ConfigMap before v2.2
                            return self._missing(f'configmaps "{m["name"]}"')
                        return self._send(
                            200,
                            {
                                "apiVersion": "v1",
                                "kind": "ConfigMap",
                                "metadata": {"name": m["name"], "namespace": m["ns"]},
                                "data": {"kubeflow_trainer_version": fake.trainer_version},
                            },
                        )
                    if route == "runtime":
                        return self._missing(f'trainingruntimes "{m["name"]}"')
                    if route == "cluster_runtime":
                        if m["name"] not in fake.runtimes:
                            return self._missing(f'clustertrainingruntimes "{m["name"]}"')
                        return self._send(200, fake.runtimes[m["name"]])
                    if route == "trainjobs" and self.command == "POST":
                        try:
                            obj, warnings = fake.create(m["ns"], body, query.get("fieldValidation"))
                        except ApiError as exc:
                            return self._send(exc.status, exc.body)
                        return self._send(201, obj, headers=warning_header(warnings))
                    if route == "trainjob" and self.command == "GET":
                        key = (m["ns"], m["name"])
                        if key not in fake.jobs:
                            return self._missing(f'trainjobs "{m["name"]}"')
                        fake._advance(key)
                        return self._send(200, fake.jobs[key])
                    if route == "pods":
                        items = fake._pods(m["ns"], query.get("labelSelector", ""))
                        return self._send(200, {"apiVersion": "v1", "kind": "PodList", "items": items})
                    if route == "log":
                        text = "".join(line + "\n" for line in fake.log_lines)
                        return self._send(200, text, content_type="text/plain")
                    return self._send(405, {"kind": "Status", "status": "Failure", "code": 405})

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        return Handler

    def posted(self) -> list[dict[str, Any]]:
        """The bodies POSTed to the trainjobs collection (admitted or not)."""
        return [
            r["body"] for r in self.requests if r["method"] == "POST" and r["path"].endswith("/trainjobs")
        ]
