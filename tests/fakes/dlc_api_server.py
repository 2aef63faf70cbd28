"""A loopback PAI-DLC API server for tests: the paths ``alibabacloud_pai_dlc20201203`` calls.

``POST /api/v1/jobs`` (CreateJob), ``GET /api/v1/jobs/{id}`` (GetJob) and
``GET /api/v1/jobs/{id}/pods/{pod}/logs`` (GetPodLogs). A job goes Creating -> Queuing -> Running
and, at the ``finish_at``-th GetJob, calls ``on_finish(create_body)`` -- the test's stand-in for the
nodes -- which returns None (Succeeded) or ``(reason_code, reason_message)`` (Failed). Node 0's log
grows by one line per GetJob while Running. A CreateJob body is checked against the DLC API's
model and CreateJob rules (``tests/dlc_request_schema.py``) and refused with DLC's 400
``InvalidParameter`` when it breaks them. Every request is recorded (method, path, query,
headers, body) for asserts.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes import dlc_request_schema
from tests.fakes.loopback import LoopbackHandler, LoopbackServer

JOB = re.compile(r"^/api/v1/jobs/(?P<job>[^/]+)(?:/pods/(?P<pod>[^/]+)/logs)?$")


class FakeDlc(LoopbackServer):
    def __init__(
        self,
        on_finish: Callable[[dict[str, Any]], tuple[str, str] | None],
        log: list[str],
        finish_at: int = 4,
    ):
        self.on_finish = on_finish
        self.log = log
        self.finish_at = finish_at
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def created(self) -> list[dict[str, Any]]:
        """The CreateJob bodies, in order."""
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"] == "/api/v1/jobs"]

    def _get(self, job: dict[str, Any]) -> dict[str, Any]:
        job["polls"] += 1
        polls = job["polls"]
        if job["Status"] not in ("Succeeded", "Failed"):
            if polls >= self.finish_at:
                outcome = self.on_finish(job["body"])
                if outcome is None:
                    job["Status"] = "Succeeded"
                else:
                    job.update(Status="Failed", ReasonCode=outcome[0], ReasonMessage=outcome[1])
                job["lines"] = len(self.log)
            else:
                job["Status"] = ["Creating", "Queuing", "Running"][min(polls - 1, 2)]
                if job["Status"] == "Running":
                    job["lines"] = min(job["lines"] + 1, len(self.log))
        pods = [
            {"PodId": f"{job['JobId']}-worker-{i}", "Type": "Worker", "Status": job["Status"]}
            for i in range(job["body"]["JobSpecs"][0]["PodCount"])
        ]
        return {
            "JobId": job["JobId"],
            "Status": job["Status"],
            "ReasonCode": job.get("ReasonCode"),
            "ReasonMessage": job.get("ReasonMessage"),
            "Pods": pods[::-1],  # the launcher must find worker-0 itself
            "WorkspaceId": job["body"].get("WorkspaceId"),
        }

    def start(self) -> str:
        super().start()
        return self.address

    def handler(self) -> type[LoopbackHandler]:
        fake = self

        class Handler(LoopbackHandler):
            def _send(self, code: int, payload: dict[str, Any]) -> None:
                super()._send(code, {"RequestId": "test-request", **payload})

            def _handle(self) -> None:
                raw = self._read_body().decode()
                url = urlsplit(self.path)
                body = json.loads(raw) if raw else None
                with fake._lock:
                    fake.requests.append(
                        {
                            "method": self.command,
                            "path": url.path,
                            "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "raw": raw,
                        }
                    )
                    if self.command == "POST" and url.path == "/api/v1/jobs":
                        found = dlc_request_schema.problems(body)
                        if found:
                            return self._send(400, dlc_request_schema.error(found))
                        job_id = f"dlc{len(fake.jobs) + 1:010d}"
                        fake.jobs[job_id] = {
                            "JobId": job_id,
                            "Status": "Creating",
                            "polls": 0,
                            "lines": 0,
                            "body": body,
                        }
                        return self._send(200, {"JobId": job_id})
                    match = JOB.match(url.path)
                    job = fake.jobs.get(unquote(match["job"])) if match else None
                    if self.command != "GET" or job is None:
                        return self._send(404, {"Code": "JobNotFound", "Message": f"no job at {url.path}"})
                    if match["pod"] is None:
                        return self._send(200, fake._get(job))
                    if not unquote(match["pod"]).endswith("-worker-0"):
                        return self._send(200, {"Logs": []})
                    return self._send(
                        200, {"JobId": job["JobId"], "PodId": match["pod"], "Logs": fake.log[: job["lines"]]}
                    )

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        return Handler
