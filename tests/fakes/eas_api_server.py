"""A loopback PAI-EAS API server for tests: the paths ``alibabacloud_eas20210701`` calls.

``POST /api/v2/services`` (CreateService), ``GET|PUT /api/v2/services/{cluster}/{name}``
(DescribeService, UpdateService) and ``PUT .../version`` (UpdateServiceVersion). A new version turns
Running after ``ready_after`` DescribeService polls; a version in ``failing_versions`` turns Failed.
The service description of a create or update is checked against EAS's documented JSON parameters
(``tests/eas_service_schema.py``) and refused with EAS's 400 ``InvalidParameter`` when it breaks them.
Every request is recorded (method, path, headers, body) for asserts.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes import eas_service_schema
from tests.fakes.loopback import LoopbackHandler, LoopbackServer

SERVICE = re.compile(r"^/api/v2/services/(?P<cluster>[^/]+)/(?P<name>[^/]+)(?P<version>/version)?$")


class FakeEas(LoopbackServer):
    def __init__(self, endpoint_url: str, access_token: str, ready_after: int = 2):
        self.endpoint_url = endpoint_url  # the service endpoint EAS reports (a real OpenAI server here)
        self.access_token = access_token
        self.ready_after = ready_after
        self.failing_versions: set[int] = set()
        self.services: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _new_version(self, svc: dict[str, Any], config: dict[str, Any]) -> None:
        svc["LatestVersion"] = svc.get("LatestVersion", 0) + 1
        svc["ServiceConfig"] = json.dumps(config)
        svc["Status"] = "Creating" if svc["LatestVersion"] == 1 else "Updating"
        svc["polls"] = 0

    def _describe(self, svc: dict[str, Any]) -> dict[str, Any]:
        svc["polls"] += 1
        latest = svc["LatestVersion"]
        if svc["Status"] in ("Creating", "Updating"):
            if latest in self.failing_versions:
                svc.update(Status="Failed", Reason="ContainerExit", Message="vLLM exited: CUDA out of memory")
            elif svc["polls"] >= self.ready_after:
                svc.update(Status="Running", CurrentVersion=latest, RunningInstance=svc["TotalInstance"])
        return {k: v for k, v in svc.items() if k != "polls"}

    def start(self) -> str:
        super().start()
        return self.address

    def handler(self) -> type[LoopbackHandler]:
        fake = self

        class Handler(LoopbackHandler):
            def _send(self, code: int, payload: dict[str, Any]) -> None:
                super()._send(code, {"RequestId": "test-request", **payload})

            def _handle(self) -> None:
                body = self._read_json()
                url = urlsplit(self.path)
                with fake._lock:
                    fake.requests.append(
                        {
                            "method": self.command,
                            "path": url.path,
                            "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    writes = self.command == "POST" and url.path == "/api/v2/services"
                    writes = writes or (self.command == "PUT" and not url.path.endswith("/version"))
                    found = eas_service_schema.problems(body) if writes else []
                    if found:
                        return self._send(400, eas_service_schema.error(found))
                    if self.command == "POST" and url.path == "/api/v2/services":
                        name = body["metadata"]["name"]
                        if name in fake.services:
                            return self._send(
                                400, {"Code": "InvalidService.Exists", "Message": f"{name} exists"}
                            )
                        svc = {
                            "ServiceName": name,
                            "ServiceId": f"eas-m-{name}",
                            "Region": "cn-hangzhou",
                            "CurrentVersion": 0,
                            "TotalInstance": body["metadata"].get("instance", 1),
                            "RunningInstance": 0,
                            "InternetEndpoint": fake.endpoint_url,
                            "IntranetEndpoint": fake.endpoint_url,
                            "AccessToken": fake.access_token,
                        }
                        fake._new_version(svc, body)
                        fake.services[name] = svc
                        return self._send(
                            200, {k: svc[k] for k in ("ServiceName", "ServiceId", "Status", "Region")}
                        )
                    match = SERVICE.match(url.path)
                    if not match or match["name"] not in fake.services:
                        return self._send(
                            404, {"Code": "InvalidService.NotFound", "Message": "service not found"}
                        )
                    svc = fake.services[match["name"]]
                    if self.command == "GET" and not match["version"]:
                        return self._send(200, fake._describe(svc))
                    if self.command == "PUT" and match["version"]:
                        svc.update(Status="Running", CurrentVersion=body["Version"], Reason="", Message="")
                        svc["RunningInstance"] = svc["TotalInstance"]
                        return self._send(200, {"Message": f"version set to {body['Version']}"})
                    if self.command == "PUT":
                        fake._new_version(svc, body)
                        return self._send(200, {"Message": "updating"})
                    return self._send(405, {"Code": "MethodNotAllowed", "Message": self.command})

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        return Handler
