"""What a Kubernetes API server does with a custom resource before storing it, for the strict fakes.

A CRD's vendored ``openAPIV3Schema`` (``tests/data/``, refreshed by ``scripts/refresh_schemas.py``)
is applied the way kube-apiserver's apiextensions handler does (Kubernetes docs, "Versions in
CustomResourceDefinitions" / "Structural schemas", and ``k8s.io/apiextensions-apiserver``):

1. **pruning**: fields the schema does not declare are unknown, unless a node sets
   ``x-kubernetes-preserve-unknown-fields``. With ``fieldValidation=Strict`` the request fails
   (400 BadRequest, ``strict decoding error: unknown field "spec.x"``); otherwise (``Warn``, the
   default since 1.23) they are dropped and reported in a ``Warning`` header. ``null`` in a field
   that is not ``nullable`` is dropped too.
2. **defaulting** of absent fields that declare ``default``.
3. **validation**: ``type`` (``x-kubernetes-int-or-string`` allows both), ``required``, ``enum``,
   ``minimum``/``maximum``, ``minLength``/``maxLength``, ``pattern``, ``minItems``/``maxItems``,
   ``minProperties``, list-map/set uniqueness, the ObjectMeta rules (name, labels), and the CEL
   ``x-kubernetes-validations`` whose rules use only ``self``/``oldSelf``, ``matches``, ``size``,
   ``has``, ``in``, comparisons and ``&&``/``||`` (every rule of the vendored schemas). Failures
   answer 422 Invalid with the apiserver's ``Status`` body and ``field: Type: detail`` messages.

Admission webhooks (the Trainer's, KServe's) run after this in the real server; their rules live
with each fake (``tests/trainer_webhook.py``, ``tests/kserve_webhook.py``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Any

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")

OBJECT_META_FIELDS = {
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
}
"""ObjectMeta's fields (k8s.io/apimachinery/pkg/apis/meta/v1, ObjectMeta)."""

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass
class FieldError:
    """One ``field.Error`` (k8s.io/apimachinery/pkg/util/validation/field)."""

    field: str
    type: str  # "Invalid value", "Required value", "Unsupported value", "Duplicate value", "Too long", ...
    value: Any = None
    detail: str = ""

    REASONS = {
        "Invalid value": "FieldValueInvalid",
        "Required value": "FieldValueRequired",
        "Unsupported value": "FieldValueNotSupported",
        "Duplicate value": "FieldValueDuplicate",
        "Too long": "FieldValueTooLong",
        "Too many": "FieldValueTooMany",
        "Forbidden": "FieldValueForbidden",
    }

    def body(self) -> str:
        """``ErrorBody()``: the type, the value where it says something, the detail."""
        if self.type in ("Required value", "Forbidden", "Too long"):
            text = self.type
        else:
            text = f"{self.type}: {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field or '<nil>'}: {self.body()}"

    def cause(self) -> dict[str, str]:
        reason = self.REASONS.get(self.type, "FieldValueInvalid")
        return {"reason": reason, "message": self.body(), "field": self.field or "<nil>"}


def go_value(value: Any) -> str:
    """A bad value as apimachinery prints it: strings quoted, numbers bare, structures as JSON."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class ApiError(Exception):
    """A request the API server refuses: ``status`` is the HTTP code, ``body`` its ``Status`` object."""

    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``metav1.Status`` failure body as kube-apiserver writes it."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid (``apierrors.NewInvalid``): ``Kind.group "name" is invalid: <errors>``."""
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    message = f'{kind}.{group} "{name}" is invalid: {listed}'
    details = {"name": name, "group": group, "kind": kind, "causes": [e.cause() for e in errors]}
    return ApiError(422, status(422, "Invalid", message, details))


def webhook_denied(webhook: str, message: str, code: int = 403) -> ApiError:
    """A validating webhook's denial as the apiserver relays it (controller-runtime's ``Denied``: 403)."""
    reason = "Forbidden" if code == 403 else "Invalid" if code == 422 else "BadRequest"
    return ApiError(
        code, status(code, reason, f'admission webhook "{webhook}" denied the request: {message}')
    )


def aggregate(errors: list[FieldError]) -> str:
    """``field.ErrorList.ToAggregate().Error()``: one error as it is, several in brackets."""
    return str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"


# --- the vendored schemas ------------------------------------------------------------------------


@dataclass
class Crd:
    group: str
    kind: str
    plural: str
    version: str
    schema: dict[str, Any]
    source: dict[str, Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


@functools.cache
def load_crd(file_name: str) -> Crd:
    """A vendored CRD schema from ``tests/data/`` (see its ``source`` header)."""
    with open(os.path.join(DATA, file_name), encoding="utf-8") as f:
        doc = json.load(f)
    return Crd(
        doc["group"], doc["kind"], doc["plural"], doc["version"], doc["openAPIV3Schema"], doc["source"]
    )


# --- 1. pruning ----------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune(value: Any, schema: dict[str, Any], path: str = "", root: bool = True) -> list[str]:
    """Drop the fields ``schema`` does not declare (and non-nullable nulls) from ``value`` in place;
    return the dropped paths (nulls excluded: the apiserver drops those silently)."""
    unknown: list[str] = []
    if isinstance(value, dict):
        if root:
            meta = value.get("metadata")
            if isinstance(meta, dict):
                unknown += [_join("metadata", k) for k in sorted(set(meta) - OBJECT_META_FIELDS)]
                for key in set(meta) - OBJECT_META_FIELDS:
                    del meta[key]
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") is True
        for key in sorted(value):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            sub = (props or {}).get(key)
            where = _join(path, key)
            if sub is None and isinstance(extra, dict):
                sub, where = extra, f"{path}[{key}]"
            if sub is None:
                if not keep_unknown and extra is not True:
                    unknown.append(_join(path, key))
                    del value[key]
                continue
            if value[key] is None and not sub.get("nullable"):
                del value[key]
                continue
            unknown += prune(value[key], sub, where, root=False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            unknown += prune(item, schema["items"], f"{path}[{i}]", root=False)
    return unknown


# --- 2. defaulting -------------------------------------------------------------------------------


def apply_defaults(value: Any, schema: dict[str, Any]) -> None:
    """Set the ``default`` of every absent declared field of every present object, in place."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                apply_defaults(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not schema.get("properties"):
            for item in value.values():
                apply_defaults(item, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])


# --- 3. validation -------------------------------------------------------------------------------

JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    # JSON carries no int/float distinction: kube-openapi takes an integral number as an integer (8.0 is 8)
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def type_name(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if JSON_TYPES[name](value):
            return name
    return "null"


def validate(value: Any, schema: dict[str, Any], path: str = "", old: Any = None) -> list[FieldError]:
    """The schema's errors for ``value`` (``old``: the stored object, for CEL transition rules)."""
    errors: list[FieldError] = []
    expected = schema.get("type")
    int_or_string = schema.get("x-kubernetes-int-or-string")
    if int_or_string:
        if not (JSON_TYPES["integer"](value) or JSON_TYPES["string"](value)):
            detail = f"{path} in body must be of type integer,string: {json.dumps(type_name(value))}"
            return [FieldError(path, "Invalid value", type_name(value), detail)]
    elif expected and value is not None and not JSON_TYPES[expected](value):
        detail = f"{path} in body must be of type {expected}: {json.dumps(type_name(value))}"
        return [FieldError(path, "Invalid value", type_name(value), detail)]
    errors += _scalar_rules(value, schema, path)
    if isinstance(value, dict):
        errors += _object_rules(value, schema, path, old)
    elif isinstance(value, list):
        errors += _array_rules(value, schema, path, old)
    errors += cel_errors(value, schema, path, old)
    return errors


def _scalar_rules(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(json.dumps(v) for v in schema["enum"])
        errors.append(FieldError(path, "Unsupported value", value, f"supported values: {allowed}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            detail = f"{path} in body should be greater than or equal to {schema['minimum']}"
            errors.append(FieldError(path, "Invalid value", value, detail))
        if "maximum" in schema and value > schema["maximum"]:
            detail = f"{path} in body should be less than or equal to {schema['maximum']}"
            errors.append(FieldError(path, "Invalid value", value, detail))
        if schema.get("format") == "int32" and not -(2**31) <= value < 2**31:
            errors.append(FieldError(path, "Invalid value", value, f"{path} in body must be of type int32"))
    if isinstance(value, str):
        if "maxLength" in schema and len(value.encode()) > schema["maxLength"]:
            errors.append(
                FieldError(path, "Too long", value, f"may not be more than {schema['maxLength']} bytes")
            )
        if "minLength" in schema and len(value) < schema["minLength"]:
            detail = f"{path} in body should be at least {schema['minLength']} chars long"
            errors.append(FieldError(path, "Invalid value", value, detail))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            detail = f"{path} in body should match '{schema['pattern']}'"
            errors.append(FieldError(path, "Invalid value", value, detail))
    return errors


def _object_rules(value: dict[str, Any], schema: dict[str, Any], path: str, old: Any) -> list[FieldError]:
    errors = [
        FieldError(_join(path, key), "Required value")
        for key in schema.get("required", [])
        if key not in value
    ]
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        detail = f"{path} in body should have at least {schema['minProperties']} properties"
        errors.append(FieldError(path, "Invalid value", len(value), detail))
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    old = old if isinstance(old, dict) else {}
    for key, item in value.items():
        if key in props:
            errors += validate(item, props[key], _join(path, key), old.get(key))
        elif isinstance(extra, dict):
            errors += validate(item, extra, f"{path}[{key}]", old.get(key))
    return errors


def _array_rules(value: list[Any], schema: dict[str, Any], path: str, old: Any) -> list[FieldError]:
    errors = []
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(
            FieldError(path, "Too many", len(value), f"must have at most {schema['maxItems']} items")
        )
    if "minItems" in schema and len(value) < schema["minItems"]:
        detail = f"{path} in body should have at least {schema['minItems']} items"
        errors.append(FieldError(path, "Invalid value", len(value), detail))
    keys = schema.get("x-kubernetes-list-map-keys")
    kind = schema.get("x-kubernetes-list-type")
    seen: list[Any] = []
    for i, item in enumerate(value):
        ident = {k: item.get(k) for k in keys} if keys and isinstance(item, dict) else item
        if kind in ("map", "set") and ident in seen:
            errors.append(FieldError(f"{path}[{i}]", "Duplicate value", ident))
        seen.append(ident)
        if isinstance(schema.get("items"), dict):
            errors += validate(item, schema["items"], f"{path}[{i}]", None)
    return errors


def object_meta_errors(meta: dict[str, Any], generated: bool = False) -> list[FieldError]:
    """ObjectMeta validation (``ValidateObjectMeta``): name, labels, annotations."""
    errors = []
    name = meta.get("name")
    if not name and not generated:
        errors.append(
            FieldError("metadata.name", "Required value", detail="name or generateName is required")
        )
    elif name and (len(name) > 253 or not DNS1123_SUBDOMAIN.match(name)):
        detail = (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
            "must start and end with an alphanumeric character"
        )
        errors.append(FieldError("metadata.name", "Invalid value", name, detail))
    for key, val in (meta.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        bad_key = (
            not LABEL_NAME.match(label) or len(label) > 63 or (prefix and not DNS1123_SUBDOMAIN.match(prefix))
        )
        if bad_key:
            errors.append(
                FieldError("metadata.labels", "Invalid value", key, "name part must be a valid label key")
            )
        if not isinstance(val, str) or len(val) > 63 or not LABEL_VALUE.match(val):
            detail = (
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
            )
            errors.append(FieldError("metadata.labels", "Invalid value", val, detail))
    for key, val in (meta.get("annotations") or {}).items():
        if not isinstance(val, str):
            errors.append(
                FieldError(f"metadata.annotations[{key}]", "Invalid value", val, "must be a string")
            )
    return errors


# --- CEL rules (the subset the vendored schemas use) ---------------------------------------------


class _Obj(dict):
    """A dict whose keys read as attributes, so ``self.metadata.name`` evaluates as CEL reads it."""

    def __getattr__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return _wrap(self[key])


def _wrap(value: Any) -> Any:
    return _Obj(value) if isinstance(value, dict) else value


CEL_FUNCS = {
    "_matches": lambda s, pattern: re.search(pattern, s) is not None,
    "size": len,
    "_has": lambda obj, key: isinstance(obj, dict) and key in obj,
}


@functools.cache
def cel_to_python(rule: str) -> str | None:
    """The rule as a Python expression over ``self``/``oldSelf``, or None when it uses more CEL."""
    expr = re.sub(r"\.matches\(", " ._m(", rule)
    expr = re.sub(r"has\(self\.([A-Za-z_]\w*)\)", r"_has(self, '\1')", expr)
    expr = expr.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    # x.matches(p) -> _matches(x, p): rewrite "A ._m(" with A the dotted name before it
    expr = re.sub(r"([A-Za-z_][\w.]*) \._m\(", r"_matches(\1, ", expr)
    if "._m(" in expr or re.search(r"\b(exists|all|map|filter|int|string|double|type)\(", expr):
        return None
    return expr


def cel_errors(value: Any, schema: dict[str, Any], path: str, old: Any) -> list[FieldError]:
    errors = []
    for rule in schema.get("x-kubernetes-validations") or []:
        uses_old = "oldSelf" in rule["rule"]
        if uses_old and old is None:
            continue  # a transition rule applies to updates only
        expr = cel_to_python(rule["rule"])
        if expr is None:
            continue
        env = {"self": _wrap(value), "oldSelf": _wrap(old), **CEL_FUNCS}
        try:
            ok = eval(expr, {"__builtins__": {}}, env)  # noqa: S307 - our own translation of the CRD's rule
        except (KeyError, TypeError, AttributeError):
            continue  # a field the rule reads is absent: CEL would not run it either
        if not ok:
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            errors.append(FieldError(path, "Invalid value", type_name(value), message))
    return errors


# --- the whole admission of one create/update ------------------------------------------------------


def admit(
    crd: Crd, body: dict[str, Any], old: dict[str, Any] | None = None, field_validation: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """What the apiserver stores for ``body`` (pruned, defaulted, validated) and its warnings.

    Raises:
        ApiError: 400 for unknown fields under ``fieldValidation=Strict`` (and for a wrong
            apiVersion/kind), 422 for schema errors.
    """
    obj = copy.deepcopy(body)
    if obj.get("apiVersion") != crd.api_version or obj.get("kind") != crd.kind:
        message = (
            f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API version "
            f"({crd.api_version})"
        )
        raise ApiError(400, status(400, "BadRequest", message))
    unknown = prune(obj, crd.schema)
    if unknown and field_validation == "Strict":
        listed = ", ".join(f'unknown field "{p}"' for p in unknown)
        message = f'{crd.kind} in version "{crd.version}" cannot be handled as a {crd.kind}: strict decoding error: {listed}'
        raise ApiError(400, status(400, "BadRequest", message))
    apply_defaults(obj, crd.schema)
    meta = obj.get("metadata") or {}
    errors = object_meta_errors(meta, generated=bool(meta.get("generateName")))
    errors += validate(obj, crd.schema, "", old)
    if errors:
        raise invalid(crd.kind, crd.group, meta.get("name") or meta.get("generateName") or "", errors)
    warnings = [f'unknown field "{p}"' for p in unknown] if field_validation != "Ignore" else []
    return obj, warnings


def warning_header(warnings: list[str]) -> dict[str, str]:
    """The ``Warning`` response header (RFC 7234 format, code 299) the apiserver sends."""
    if not warnings:
        return {}
    return {"Warning": ", ".join('299 - "' + w.replace('"', '\\"') + '"' for w in warnings)}
