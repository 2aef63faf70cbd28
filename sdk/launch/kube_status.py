"""The text a Kubernetes API server gives for a refused request (its ``Status`` body's ``message``)."""

from __future__ import annotations

import json
from typing import Any


def status_message(exc: Any) -> str:
    """The ``message`` of the ``Status`` body of a ``kubernetes`` client ``ApiException`` (else its body
    or reason as they came), e.g. ``admission webhook "..." denied the request: ...``."""
    try:
        return str(json.loads(exc.body).get("message") or exc.body)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or exc.reason)
