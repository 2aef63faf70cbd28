"""Finding KFP pipelines, versions and experiments by name, and trusting only what matches.

The KFP v2beta1 API lists with a ``filter``: a JSON ``Filter`` message whose predicates name an API
field (``display_name`` for pipelines, versions and experiments in KFP 2.x; kubeflow/pipelines
``backend/api/v2beta1/filter.proto`` and each model's ``APIToModelFieldMap``) and an operation
(``EQUALS``). Listing pipelines and experiments is per ``namespace`` in multi-user mode, so the
namespace goes with the filter. A backend that does not apply the filter answers with other
objects; taking the first of them would upload a version to, or run, another pipeline. So every
answer is checked: an object of another name fails the call, naming what came back.
"""

from __future__ import annotations

import json
from typing import Any

from distilflow.errors import DistilflowError


def name_filter(name: str) -> str:
    """The ``filter`` query value that selects objects whose ``display_name`` equals ``name``."""
    return json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]})


def pick(kind: str, name: str, items: list[Any] | None, host: str) -> Any | None:
    """The one ``kind`` named ``name`` among a filtered list's ``items`` (None when there is none).

    Raises:
        DistilflowError: The server answered with objects of other names (it ignored the filter) or
            with several of this name.
    """
    items = list(items or [])
    exact = [i for i in items if i.display_name == name]
    others = sorted({str(i.display_name) for i in items if i.display_name != name})
    if others and not exact:
        raise DistilflowError(
            f"the KFP API at {host} answered a search for {kind} {name!r} with {kind}(s) named "
            f"{others[:5]}: it did not apply the display_name filter, so the {kind} cannot be identified; "
            "check that the host is a KFP 2.x API endpoint"
        )
    if len(exact) > 1:
        ids = [getattr(i, f"{kind.replace(' ', '_')}_id", None) for i in exact]
        raise DistilflowError(
            f"the KFP API at {host} has {len(exact)} {kind}s named {name!r} ({ids}); rename one"
        )
    return exact[0] if exact else None


def check_named(kind: str, wanted: str, got: Any, host: str) -> Any:
    """``got`` (what a create call returned) when it carries the name asked for, else an error."""
    if got is None or got.display_name != wanted:
        name = None if got is None else got.display_name
        raise DistilflowError(
            f"the KFP API at {host} was asked to create {kind} {wanted!r} and answered with {kind} {name!r}; "
            "nothing is run on it. Check the server (a proxy rewriting requests, an incompatible version)"
        )
    return got
