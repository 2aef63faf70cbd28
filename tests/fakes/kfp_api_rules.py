"""What the KFP v2beta1 API server (kubeflow/pipelines 2.17.0, ``backend/src/apiserver``) checks in a
request, for the strict KFP fake (tests/kfp_api_server.py).

- **Uploaded packages** (``template/v2_template.go`` ``NewV2SpecTemplate``): every YAML document is
  either the PipelineSpec, parsed with ``protojson.Unmarshal`` (unknown fields refused; here
  ``json_format.ParseDict`` on kfp-pipeline-spec's own proto), with ``schemaVersion`` 2.1.0, a
  lower-case ``pipelineInfo.name`` and a root, or a PlatformSpec with a ``kubernetes`` platform,
  parsed the same way. Each executor's Kubernetes config is also parsed into kfp-kubernetes'
  ``KubernetesExecutorConfig``, as the driver does when the task runs.
- **JSON bodies** (runs, experiments): the gateway's marshaller keeps ``DiscardUnknown: false``
  (``common/utils.go``), so a field the API does not declare fails the request. The declared fields
  are the vendored v2beta1 swagger definitions (tests/data/kfp.v2beta1.definitions.2.17.0.json).
- **List filters** (``server/list_request_util.go`` ``parseAPIFilter``, ``filter/filter.go``): a
  JSON ``Filter`` message (``stringValue``-style names are rewritten to ``string_value`` first), keys
  limited to each model's ``APIToModelFieldMap``.

Refusals carry the API's error shapes: grpc-gateway's ``{"code", "message", "details"}`` for JSON
calls, ``{"error_message", "error_details"}`` for the upload endpoints.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

import yaml

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")

FILTER_KEYS = {
    # model/*.go APIToModelFieldMap of 2.17.0
    "pipelines": {"id", "pipeline_id", "name", "display_name", "created_at", "description", "namespace"},
    "versions": {"id", "pipeline_version_id", "name", "display_name", "created_at", "status", "description", "pipeline_spec"},
    "experiments": {"id", "experiment_id", "name", "display_name", "created_at", "last_run_created_at", "description", "namespace", "storage_state"},
}  # fmt: skip
OPERATIONS = {
    "EQUALS": 1,
    "NOT_EQUALS": 2,
    "GREATER_THAN": 3,
    "GREATER_THAN_EQUALS": 5,
    "LESS_THAN": 6,
    "LESS_THAN_EQUALS": 7,
    "IN": 8,
    "IS_SUBSTRING": 9,
}
VALUE_FIELDS = (
    "int_value",
    "long_value",
    "string_value",
    "timestamp_value",
    "int_values",
    "long_values",
    "string_values",
)


class Refusal(Exception):
    """A request the API server refuses: HTTP ``status`` and its error body."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(json.dumps(body))
        self.status = status
        self.body = body


def invalid_argument(message: str) -> Refusal:
    """grpc-gateway's answer to an InvalidArgument error (HTTP 400, gRPC code 3)."""
    return Refusal(400, {"error": message, "code": 3, "message": message, "details": []})


def upload_error(message: str) -> Refusal:
    """The upload endpoints' error body (``writeErrorToResponse``)."""
    return Refusal(400, {"error_message": message, "error_details": message})


# --- uploaded packages ----------------------------------------------------------------------------


def check_package(content: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(pipeline spec, platform spec or None)`` of an uploaded package. Raises Refusal."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    prefix = "Failed to create a pipeline and a pipeline version: Invalid input error: "
    try:
        docs = [d for d in yaml.safe_load_all(content) if d]
    except yaml.YAMLError as exc:
        raise upload_error(f"{prefix}unable to decode yaml document: {exc}") from None
    spec = platform = None
    for doc in docs:
        if "pipelineInfo" in doc or "root" in doc:
            if spec is not None:
                raise upload_error(f"{prefix}multiple pipeline specs provided")
            try:
                parsed = json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())
            except json_format.ParseError as exc:
                raise upload_error(f"{prefix}invalid v2 pipeline spec: {exc}") from None
            if parsed.schema_version != "2.1.0":
                raise upload_error(
                    f"{prefix}KFP only supports schema version 2.1.0, but the pipeline spec has version {parsed.schema_version}"
                )
            if not re.fullmatch(
                r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", parsed.pipeline_info.name
            ):
                raise upload_error(
                    f"{prefix}invalid v2 pipeline spec: name should consist of lower case alphanumeric characters, '-' or '.'"
                )
            if not parsed.HasField("root"):
                raise upload_error(f"{prefix}invalid v2 pipeline spec: root component is empty")
            spec = doc
        elif "kubernetes" in (doc.get("platforms") or {}):
            if platform is not None:
                raise upload_error(f"{prefix}multiple platform specs provided")
            try:
                parsed_platform = json_format.ParseDict(doc, pipeline_spec_pb2.PlatformSpec())
                executors = parsed_platform.platforms["kubernetes"].deployment_spec.executors
                for name, config in executors.items():
                    as_dict = json_format.MessageToDict(config)
                    try:
                        json_format.ParseDict(as_dict, k8s_pb2.KubernetesExecutorConfig())
                    except json_format.ParseError as exc:
                        raise json_format.ParseError(f"executor {name}: {exc}") from None
            except json_format.ParseError as exc:
                raise upload_error(f"{prefix}cannot unmarshal platform specific configs: {exc}") from None
            platform = doc
    if spec is None:
        raise upload_error(f"{prefix}no pipeline spec is provided")
    return spec, platform


# --- JSON bodies against the swagger definitions ----------------------------------------------------


@functools.cache
def definitions() -> dict[str, Any]:
    with open(os.path.join(DATA, "kfp.v2beta1.definitions.2.17.0.json"), encoding="utf-8") as f:
        return json.load(f)["definitions"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def body_problems(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of ``value`` the definition does not declare, and values of the wrong JSON type."""
    if "$ref" in schema:
        schema = definitions()[schema["$ref"].rsplit("/", 1)[1]]
    kind = schema.get("type")
    checks = {"string": str, "boolean": bool, "array": list, "object": dict}
    if value is None:
        return []
    if kind == "integer" and not (
        isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())
    ):
        return [f"{path}: not an integer"]
    if kind in checks and not isinstance(value, checks[kind]):
        return [f"{path}: not a JSON {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: invalid value for enum field: {value!r}"]
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        names = {**{p: p for p in schema["properties"]}, **{_camel(p): p for p in schema["properties"]}}
        for key, item in value.items():
            if key not in names:
                if "additionalProperties" not in schema:
                    found.append(f'unknown field "{key}"' + (f" in {path}" if path else ""))
                continue
            found += body_problems(item, schema["properties"][names[key]], f"{path}.{key}".lstrip("."))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += body_problems(item, schema["items"], f"{path}[{i}]")
    return found


def check_body(definition: str, body: Any) -> None:
    """Raises Refusal (400) the way protojson refuses a body with an unknown field or wrong type."""
    found = body_problems(body, {"$ref": f"#/definitions/{definition}"})
    if found:
        raise invalid_argument("proto: " + "; ".join(found))


# --- list filters --------------------------------------------------------------------------------


def parse_filter(raw: str | None, resource: str) -> list[tuple[str, int, Any]]:
    """``(key, operation, value)`` of each predicate of a list call's ``filter``. Raises Refusal."""
    if not raw:
        return []
    for camel, snake in (("stringValue", "string_value"), ("intValue", "int_value"), ("longValue", "long_value"),
                         ("timestampValue", "timestamp_value"), ("stringValues", "string_values")):  # fmt: skip
        raw = raw.replace(f'"{camel}":', f'"{snake}":')
    where = f"failed to parse valid filter from {raw!r}"
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise invalid_argument(f"Invalid input error: {where}: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - {"predicates"}:
        raise invalid_argument(f"Invalid input error: {where}: unknown field")
    out = []
    for pred in doc.get("predicates") or []:
        unknown = set(pred) - {"operation", "key", *VALUE_FIELDS}
        if unknown:
            raise invalid_argument(f'Invalid input error: {where}: unknown field "{sorted(unknown)[0]}"')
        op = pred.get("operation", 0)
        op = OPERATIONS.get(op, op) if isinstance(op, str) else op
        if op not in OPERATIONS.values():
            raise invalid_argument(
                f"Invalid input error: invalid predicate operation: {pred.get('operation')}"
            )
        key = pred.get("key", "")
        if not key:
            raise invalid_argument("Invalid input error: Predicate key cannot be empty")
        if key not in FILTER_KEYS[resource]:
            raise invalid_argument(
                f'Invalid input error: no support for filtering on unrecognized field "{key}"'
            )
        values = [v for v in VALUE_FIELDS if v in pred]
        if len(values) != 1:
            raise invalid_argument(f"Invalid input error: {where}: a predicate needs exactly one value")
        value = pred[values[0]]
        out.append((key, op, value["values"] if isinstance(value, dict) else value))
    return out


def matches(record: dict[str, Any], predicates: list[tuple[str, int, Any]]) -> bool:
    """Whether ``record`` passes every predicate (string keys; the fake stores no numbers to compare)."""
    for key, op, value in predicates:
        have = record.get("pipeline_id" if key == "id" and "pipeline_id" in record else key)
        if op == 1 and have != value:
            return False
        if op == 2 and have == value:
            return False
        if op == 8 and have not in value:
            return False
        if op == 9 and str(value) not in str(have):
            return False
    return True
