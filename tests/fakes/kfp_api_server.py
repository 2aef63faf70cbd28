"""A loopback HTTP server answering the KFP v2beta1 REST paths that ``kfp.Client`` calls.

Paths: ``GET /apis/v2beta1/healthz``; ``GET|POST /apis/v2beta1/experiments`` (list with a
``display_name`` filter, create) and ``GET .../experiments/{id}``; ``POST /apis/v2beta1/pipelines/upload``
and ``.../pipelines/upload_version`` (multipart field ``uploadfile``, name and pipeline id in the
query); ``GET /apis/v2beta1/pipelines`` (display_name filter), ``GET .../pipelines/{id}``,
``GET .../pipelines/{id}/versions`` (display_name filter) and ``GET .../versions/{vid}``;
``POST /apis/v2beta1/runs`` and ``GET /apis/v2beta1/runs/{id}``.

Requests are checked as KFP 2.17's API server checks them (``tests/kfp_api_rules.py``): uploaded
packages parse strictly into the PipelineSpec/PlatformSpec protos, run and experiment bodies declare
only the API's fields, list filters are real ``Filter`` messages on the keys each resource supports,
and lists follow the ``namespace`` asked for. ``ignore_filters`` plays a server that answers a list
with everything (an older or misconfigured backend), so a client must check the names it gets back.

Every request is recorded (method, path, query, headers, body) so tests can assert on what was
sent; ``requests`` keeps the older ``(method, path, body)`` view. A run moves through
``run_states`` one ``GET`` at a time; with ``fail_with`` set, its last state is FAILED with that
message on the run and on a failed task. With ``token`` set, every request without
``Authorization: Bearer <token>`` is answered 401.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import threading
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.fakes import kfp_api_rules as rules
from tests.fakes.loopback import LoopbackHandler, LoopbackServer

API = "/apis/v2beta1"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename, content)."""
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    fields = {}
    for part in msg.iter_parts():
        fields[part.get_param("name", header="content-disposition")] = (
            part.get_filename(),
            part.get_payload(decode=True),
        )
    return fields


class KfpApiServer(LoopbackServer):
    def __init__(
        self,
        token: str | None = None,
        run_states: tuple[str, ...] = ("PENDING", "RUNNING", "SUCCEEDED"),
        fail_with: str | None = None,
        ignore_filters: bool = False,
    ) -> None:
        self.token = token
        self.ignore_filters = ignore_filters
        self.run_states = list(run_states)
        self.fail_with = fail_with
        self.calls: list[dict[str, Any]] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.uploads: list[dict[str, Any]] = []
        self._polls: dict[str, int] = {}
        self._lock = threading.Lock()

    def handler(self) -> type[LoopbackHandler]:
        server = self

        class Handler(LoopbackHandler):
            def _handle(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self._read_body()
                ctype = self.headers.get("Content-Type", "")
                if ctype.startswith("multipart/form-data"):
                    body: Any = {
                        name: {"filename": fn, "content": content.decode()}
                        for name, (fn, content) in _multipart(ctype, raw).items()
                    }
                else:
                    body = json.loads(raw) if raw else {}
                with server._lock:
                    server.calls.append(
                        {
                            "method": self.command,
                            "path": url.path,
                            "query": query,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                        return self._send(401, {"code": 16, "message": "Unauthenticated"})
                    try:
                        code, payload = server._route(self.command, url.path, query, body)
                    except rules.Refusal as exc:
                        code, payload = exc.status, exc.body
                return self._send(code, payload)

            do_GET = do_POST = do_DELETE = _handle

        return Handler

    # --- the API ------------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, dict]:
        if not path.startswith(API):
            return 404, {"message": f"no route {path}"}
        path = path[len(API) :]
        if method == "GET" and path == "/healthz":
            return 200, {"multi_user": False}
        if path == "/experiments":
            if method == "POST":
                rules.check_body("v2beta1Experiment", body)
                exp = {"namespace": "", **body, "experiment_id": str(uuid.uuid4()), "created_at": _now()}
                self.experiments[exp["experiment_id"]] = exp
                return 200, exp
            found = self._list(self.experiments.values(), query, "experiments")
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        m = re.fullmatch(r"/experiments/([^/]+)", path)
        if m and method == "GET":
            exp = self.experiments.get(m[1])
            return (200, exp) if exp else (404, {"message": f"experiment {m[1]} not found"})
        if method == "POST" and path == "/pipelines/upload":
            return self._upload_pipeline(query, body)
        if method == "POST" and path == "/pipelines/upload_version":
            return self._upload_version(query, body)
        if method == "GET" and path == "/pipelines":
            found = self._list(self.pipelines.values(), query, "pipelines")
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        m = re.fullmatch(r"/pipelines/([^/]+)", path)
        if m and method == "GET":
            pipe = self.pipelines.get(m[1])
            return (200, pipe) if pipe else (404, {"message": f"pipeline {m[1]} not found"})
        m = re.fullmatch(r"/pipelines/([^/]+)/versions", path)
        if m and method == "GET":
            versions = [v for v in self.versions.values() if v["pipeline_id"] == m[1]]
            found = self._list(versions, query, "versions", namespaced=False)
            return 200, {"pipeline_versions": found, "total_size": len(found)} if found else {}
        m = re.fullmatch(r"/pipelines/([^/]+)/versions/([^/]+)", path)
        if m and method == "GET":
            ver = self.versions.get(m[2])
            if not ver or ver["pipeline_id"] != m[1]:
                return 404, {"message": f"pipeline version {m[2]} not found"}
            return 200, ver
        if method == "POST" and path == "/runs":
            return self._create_run(body)
        m = re.fullmatch(r"/runs/([^/:]+)", path)
        if m and method == "GET":
            return self._get_run(m[1])
        return 404, {"message": f"no route {method} {API}{path}"}

    def _list(
        self, records: Any, query: dict[str, str], resource: str, namespaced: bool = True
    ) -> list[dict]:
        """A list call: the records that pass its filter (in its namespace), sorted and paged as asked."""
        predicates = rules.parse_filter(query.get("filter"), resource)
        sort_key, _, order = query.get("sort_by", "").partition(" ")
        if sort_key and sort_key not in rules.FILTER_KEYS[resource]:
            raise rules.invalid_argument(
                f'Invalid input error: no support for sorting on unrecognized field "{sort_key}"'
            )
        found = list(records)
        if not self.ignore_filters:
            found = [r for r in found if rules.matches(r, predicates)]
            if namespaced:
                found = [r for r in found if r.get("namespace", "") == query.get("namespace", "")]
        if order == "desc":
            found.reverse()  # insertion order is creation order
        return found[: int(query.get("page_size") or len(found) or 1)]

    def _spec(self, body: dict) -> dict:
        """The uploaded package as the API returns it: the pipeline spec, or {pipeline_spec, platform_spec}."""
        spec, platform = rules.check_package(body["uploadfile"]["content"])
        return spec if platform is None else {"pipeline_spec": spec, "platform_spec": platform}

    def _add_version(self, pipeline_id: str, name: str, body: dict, description: str | None) -> dict:
        ver = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "name": name,
            "description": description or "",
            "created_at": _now(),
            "pipeline_spec": self._spec(body),
        }
        self.versions[ver["pipeline_version_id"]] = ver
        return ver

    def _upload_pipeline(self, query: dict[str, str], body: dict) -> tuple[int, dict]:
        name = query.get("name") or query.get("display_name") or body["uploadfile"]["filename"]
        display = query.get("display_name") or name
        namespace = query.get("namespace", "")
        self._spec(body)
        if any(p["name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
            return 409, {"error_message": "Failed to create a pipeline and a pipeline version"}
        pipe = {
            "pipeline_id": str(uuid.uuid4()),
            "display_name": display,
            "name": name,
            "description": query.get("description", ""),
            "created_at": _now(),
            "namespace": namespace,
        }
        self.pipelines[pipe["pipeline_id"]] = pipe
        self._add_version(pipe["pipeline_id"], name, body, query.get("description"))
        self.uploads.append({"kind": "pipeline", "query": query, **body["uploadfile"]})
        return 200, pipe

    def _upload_version(self, query: dict[str, str], body: dict) -> tuple[int, dict]:
        pipeline_id = query.get("pipelineid")
        name = query.get("display_name") or query.get("name")
        if pipeline_id not in self.pipelines:
            return 400, {"error_message": "Failed to create a pipeline version"}
        self._spec(body)
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            return 409, {"message": f"Failed to create a pipeline version: {name} already exists"}
        ver = self._add_version(pipeline_id, name, body, query.get("description"))
        self.uploads.append({"kind": "version", "query": query, **body["uploadfile"]})
        return 200, ver

    def _create_run(self, body: dict) -> tuple[int, dict]:
        rules.check_body("v2beta1Run", body)
        if body.get("pipeline_spec") is not None:  # an inline spec goes through the same template parse
            inline = body["pipeline_spec"]
            docs = (
                [inline["pipeline_spec"], inline["platform_spec"]] if "platform_spec" in inline else [inline]
            )
            try:
                rules.check_package(yaml.safe_dump_all(docs))
            except rules.Refusal as exc:
                raise rules.invalid_argument(exc.body["error_message"]) from None
        if body.get("experiment_id") not in self.experiments:
            return 404, {"message": f"experiment {body.get('experiment_id')} not found"}
        ref = body.get("pipeline_version_reference")
        if ref and ref.get("pipeline_version_id") not in self.versions:
            return 404, {"message": f"pipeline version {ref.get('pipeline_version_id')} not found"}
        run = {
            **body,
            "run_id": "run-" + uuid.uuid4().hex[:8],
            "state": self.run_states[0],
            "created_at": _now(),
        }
        self.runs[run["run_id"]] = run
        self._polls[run["run_id"]] = 0
        return 200, run

    def _get_run(self, run_id: str) -> tuple[int, dict]:
        run = self.runs.get(run_id)
        if run is None:
            return 404, {"code": 5, "message": f"run {run_id} not found"}
        self._polls[run_id] += 1
        step = min(self._polls[run_id], len(self.run_states) - 1)
        run["state"] = self.run_states[step]
        last = step == len(self.run_states) - 1
        if last and self.fail_with:
            run["state"] = "FAILED"
            run["error"] = {"code": 2, "message": self.fail_with}
            run["run_details"] = {
                "task_details": [
                    {"display_name": "validate", "state": "SUCCEEDED"},
                    {
                        "display_name": "sft",
                        "state": "FAILED",
                        "error": {"code": 2, "message": self.fail_with},
                    },
                ]
            }
        if last:
            run["finished_at"] = _now()
        return 200, run

    # --- for tests ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str, Any]]:
        return [(c["method"], c["path"], c["body"]) for c in self.calls]

    def __enter__(self) -> KfpApiServer:
        self.start()
        return self
