"""Alibaba Cloud OpenAPI access shared by the PAI services distilflow talks to (PAI-EAS for deploy,
PAI-DLC for training jobs): region, endpoint and the names of the environment variables that hold
the credentials. Configs name the variables; the values are read only when a client is built."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from distilflow.config import BaseConfig
from distilflow.errors import ConfigError
from distilflow.secrets import EnvName


class AliyunApiFields(BaseConfig):
    """Where an Alibaba Cloud API is and which environment variables hold its credentials."""

    region: str = Field("cn-hangzhou", description="Alibaba Cloud region id (for EAS also the cluster id)")
    endpoint: str | None = Field(
        None, description="API endpoint; None = <service>.<region>.aliyuncs.com (e.g. pai-eas, pai-dlc)"
    )
    protocol: Literal["https", "http"] = Field("https", description="Protocol of the API endpoint")
    access_key_id_env: EnvName = Field(
        "ALIBABA_CLOUD_ACCESS_KEY_ID", description="Name of the variable holding the AccessKey id"
    )
    access_key_secret_env: EnvName = Field(
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET", description="Name of the variable holding the AccessKey secret"
    )
    security_token_env: EnvName = Field(
        "ALIBABA_CLOUD_SECURITY_TOKEN",
        description="Name of the variable holding an STS token (used when set)",
    )


def _env(name: str, section: str, required: bool = True) -> str | None:
    value = os.environ.get(name)
    if required and not value:
        raise ConfigError(
            f"${name} is unset or empty; export the Alibaba Cloud credential in it (or fix {section}.*_env)"
        )
    return value or None


def openapi_config(fields: AliyunApiFields, service: str, section: str) -> Any:
    """The ``alibabacloud_tea_openapi`` client config for ``service`` (``pai-eas``, ``pai-dlc``), with the
    credentials read from the variables ``fields`` names; ``section`` names the config section in errors."""
    from alibabacloud_tea_openapi import models as open_api_models

    return open_api_models.Config(
        access_key_id=_env(fields.access_key_id_env, section),
        access_key_secret=_env(fields.access_key_secret_env, section),
        security_token=_env(fields.security_token_env, section, required=False),
        region_id=fields.region,
        endpoint=fields.endpoint or f"{service}.{fields.region}.aliyuncs.com",
        protocol=fields.protocol,
    )
