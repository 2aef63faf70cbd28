"""``target: pai-eas``: an Alibaba Cloud PAI-EAS service running vLLM's OpenAI server.

The service description mounts the OSS model folder read-only and starts vLLM on it. It is created,
or updated in place, through the EAS SDK (``alibabacloud_eas20210701``, extra ``pai``); AccessKey
credentials come from environment variables named in the config. An update is a rolling one
(``rolling_strategy.max_unavailable: 0`` keeps old instances serving until new ones are ready); when
the new version fails, the service is set back to the version that ran before (UpdateServiceVersion).
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

from distilflow.components.deploy.config import DeployConfig
from distilflow.components.deploy.vllm_server import VLLM_MODULE, server_image, vllm_args
from distilflow.errors import BackendError
from distilflow.launch.aliyun import openapi_config

RUNNING, FAILED = "Running", ("Failed", "UpdateFailed")


def render(config: DeployConfig, thinking: bool) -> dict[str, Any]:
    """The EAS service description (JSON deployment) of a vLLM service on the OSS model folder."""
    e = config.eas
    command = [*VLLM_MODULE, *vllm_args(config, e.model_mount, e.port, thinking)]
    metadata: dict[str, Any] = {
        "name": config.service_name,
        "instance": e.instances,
        "rolling_strategy": {"max_surge": e.max_surge, "max_unavailable": e.max_unavailable},
    }
    if e.workspace_id:
        metadata["workspace_id"] = e.workspace_id
    if e.shm_size_gb:
        metadata["shm_size"] = e.shm_size_gb
    description: dict[str, Any] = {"metadata": metadata}
    if e.resource:
        metadata["resource"] = e.resource
        metadata["gpu"] = config.gpus
        if e.cpu:
            metadata["cpu"] = e.cpu
        if e.memory_mb:
            metadata["memory"] = e.memory_mb
    else:
        description["cloud"] = {"computing": {"instances": [{"type": e.instance_type}]}}
    description["containers"] = [
        {"image": server_image(config), "script": shlex.join(command), "port": e.port}
    ]
    model = config.model if config.model.endswith("/") else config.model + "/"
    description["storage"] = [{"mount_path": e.model_mount, "oss": {"path": model, "readOnly": True}}]
    return description


def eas_client(config: DeployConfig) -> Any:
    from alibabacloud_eas20210701.client import Client

    return Client(openapi_config(config.eas, "pai-eas", "eas"))


class EasDeployment:
    """One create-or-update of an EAS service, with its wait and rollback."""

    def __init__(self, config: DeployConfig, client: Any):
        self.config = config
        self.client = client
        self.name = config.service_name or ""
        self.cluster = config.eas.region
        self.previous_version: int | None = None

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        from Tea.exceptions import TeaException

        try:
            return fn(*args)
        except TeaException as exc:
            raise BackendError(f"EAS service {self.name}: {what} failed: {exc.code}: {exc.message}") from None

    def describe(self) -> Any | None:
        from Tea.exceptions import TeaException

        try:
            return self.client.describe_service(self.cluster, self.name).body
        except TeaException as exc:
            if getattr(exc, "status_code", None) == 404 or "NotFound" in str(exc.code):
                return None
            raise BackendError(
                f"EAS service {self.name}: describe failed: {exc.code}: {exc.message}"
            ) from None

    def apply(self, description: dict[str, Any]) -> None:
        from alibabacloud_eas20210701 import models

        body = json.dumps(description)
        existing = self.describe()
        if existing is None:
            print(f"[deploy] creating EAS service {self.name} in {self.cluster}", flush=True)
            request = models.CreateServiceRequest(body=body, workspace_id=self.config.eas.workspace_id)
            self._call("create", self.client.create_service, request)
            return
        self.previous_version = existing.current_version
        print(
            f"[deploy] updating EAS service {self.name} (running version {self.previous_version})", flush=True
        )
        self._call(
            "update",
            self.client.update_service,
            self.cluster,
            self.name,
            models.UpdateServiceRequest(body=body),
        )

    def wait_running(self) -> Any:
        """Poll until Running on its latest version with every instance up; fail on Failed."""
        started = time.monotonic()
        timeout, last = self.config.startup_timeout_s, "no status yet"
        while time.monotonic() - started < timeout:
            svc = self.describe()
            if svc is None:
                last = "not found"
            elif svc.status in FAILED:
                raise BackendError(
                    f"EAS service {self.name} is {svc.status}: {svc.reason or ''} {svc.message or ''}".strip()
                )
            else:
                up_to_date = svc.latest_version is None or svc.current_version == svc.latest_version
                instances_up = (svc.running_instance or 0) >= (svc.total_instance or 1)
                if svc.status == RUNNING and up_to_date and instances_up:
                    print(
                        f"[deploy] EAS service {self.name} is Running after {time.monotonic() - started:.0f}s",
                        flush=True,
                    )
                    return svc
                last = f"{svc.status} ({svc.running_instance}/{svc.total_instance} instances) {svc.message or ''}".strip()
            time.sleep(self.config.poll_interval_s)
        raise BackendError(
            f"EAS service {self.name} was not Running within startup_timeout_s={timeout:g} ({last})"
        )

    def roll_back(self) -> str:
        from alibabacloud_eas20210701 import models

        if self.previous_version is None:
            return f"there was no previous version to fall back to; EAS service {self.name} is left for inspection"
        request = models.UpdateServiceVersionRequest(version=self.previous_version)
        self._call("roll back", self.client.update_service_version, self.cluster, self.name, request)
        return f"rolled back: EAS service {self.name} is set back to version {self.previous_version}"


def endpoint(svc: Any, kind: str) -> str:
    url = svc.internet_endpoint if kind == "internet" else svc.intranet_endpoint
    if not url:
        raise BackendError(f"EAS service {svc.service_name} is Running but reports no {kind} endpoint")
    return url.rstrip("/") + "/v1"
