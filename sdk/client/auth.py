"""Where the bearer token for the KFP API comes from (never printed, never stored in a config)."""

from __future__ import annotations

import os

from distilflow.errors import ConfigError

TOKEN_ENVS = ("DISTILFLOW_KFP_TOKEN", "KFP_BEARER_TOKEN")
"""Environment variables holding a bearer token for the KFP API, in the order they are tried."""


TOKEN_FILE_ENVS = ("DISTILFLOW_KFP_TOKEN_FILE", "KF_PIPELINES_SA_TOKEN_PATH")
"""Environment variables naming a token file (the second is kfp's own, for a projected token)."""


DEFAULT_TOKEN_FILE = "/var/run/secrets/kubeflow/pipelines/token"
"""Where Kubeflow's PodDefault projects a pipelines service-account token into notebook pods."""


def resolve_token(
    token: str | None = None, token_file: str | None = None, environ: dict[str, str] | None = None
) -> tuple[str | None, str | None, str]:
    """``(token, token_file, source)``: where the KFP bearer token comes from, and the token itself.

    Order: ``token``; ``token_file``; ``$DISTILFLOW_KFP_TOKEN``; ``$KFP_BEARER_TOKEN``; the file named by
    ``$DISTILFLOW_KFP_TOKEN_FILE`` or ``$KF_PIPELINES_SA_TOKEN_PATH``; the projected token at
    ``/var/run/secrets/kubeflow/pipelines/token`` when it exists; else no token. ``source`` names the
    place (never the value), for messages.
    """
    environ = os.environ if environ is None else environ
    if token:
        return token, None, "the token argument"
    if token_file:
        return read_token(token_file), token_file, f"token file {token_file}"
    for name in TOKEN_ENVS:
        if environ.get(name):
            return environ[name].strip(), None, f"${name}"
    for name in TOKEN_FILE_ENVS:
        if environ.get(name):
            return read_token(environ[name]), environ[name], f"token file {environ[name]} (${name})"
    if os.path.isfile(DEFAULT_TOKEN_FILE):
        return read_token(DEFAULT_TOKEN_FILE), DEFAULT_TOKEN_FILE, f"token file {DEFAULT_TOKEN_FILE}"
    return None, None, "no token"


def read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(
            f"token file {path}: cannot read it ({exc.strerror}); give a readable --token-file"
        ) from None
    if not token:
        raise ConfigError(f"token file {path} is empty; it should hold a bearer token for the KFP API")
    return token
