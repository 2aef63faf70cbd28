"""Configuration: one pydantic base class for every stage config, and one way to layer configs.

Every config is built from layers merged by ``merge_layers``, lowest precedence first:

- a stage config: field defaults < YAML/JSON file < ``--set a.b=c`` overrides (``BaseConfig.load``);
- a pipeline config from the SDK or CLI: the pipeline's defaults < config file < ``--set``
  (``distilflow.client.pipelines.pipeline_config``);
- a recipe's run config inside its ``configure`` step: recipe defaults < preset < the top-level
  parameters < ``config`` < ``overrides`` (``distilflow.pipelines.params.resolve_config``).

Unknown keys are rejected; every field carries a description (a test checks it).
Secrets never live here: configs name the environment variable that holds a key.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from distilflow.errors import ConfigError

T = TypeVar("T", bound="BaseConfig")

UNION_TAG = "~"
"""Prefix of a tagged union member's label (``Tag("~mapping")``): pydantic puts the label into an error's
location; messages and ``--set`` paths leave it out, so an error names the field as the user wrote it."""


class BaseConfig(BaseModel):
    """Base of all distilflow configs: strict keys, documented fields, YAML/JSON round trip."""

    # hide_input_in_errors: a raw ValidationError (a traceback) never echoes a value; a key pasted into
    # an ``*_env`` field must not reach a terminal. ``format_validation_error`` shows values it may show.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), hide_input_in_errors=True
    )

    @classmethod
    def load(cls: type[T], source: str | Path | dict | None = None, overrides: list[str] | None = None) -> T:
        """Build a config from a file or dict plus ``a.b=c`` overrides; raise ConfigError listing all problems."""
        where = "<dict>"
        if source is None:
            data: dict[str, Any] = {}
        elif isinstance(source, dict):
            data = copy.deepcopy(source)
        else:
            where = str(source)
            data = read_config_file(source)
        patch = parse_overrides(overrides or [])
        data = merge_layers(data, patch)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc
        # "--set name=2024" or "--set name=on" parses as a number or a bool; a text field gets the text
        raw = dict(item.split("=", 1) for item in overrides or [])
        retyped = [
            field_path(e["loc"])
            for e in error.errors()
            if e["type"] == "string_type" and _dotted(field_path(e["loc"])) in raw
        ]
        if retyped:
            for loc in retyped:
                node = data
                for part in loc[:-1]:
                    node = node[part]
                node[loc[-1]] = raw[_dotted(loc)]
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                error = exc
        # a bad value given with --set is reported against --set, not against the file
        raise ConfigError(format_validation_error(error, cls.__name__, where, _leaf_keys(patch))) from None

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], where: str = "<dict>") -> T:
        """Validate ``data``; on failure raise one ConfigError that lists every bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, cls.__name__, where)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        """A stable hash of the resolved config, used to decide whether an output can be reused. Fields
        declared ``json_schema_extra={"fingerprint": False}`` (where a run is tracked) are left out."""
        data = self.to_dict()
        for name, info in type(self).model_fields.items():
            if (
                isinstance(info.json_schema_extra, dict)
                and info.json_schema_extra.get("fingerprint") is False
            ):
                data.pop(name, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def format_validation_error(
    exc: ValidationError, model: str, where: str, overridden: set[str] | frozenset[str] = frozenset()
) -> str:
    """One line per problem: ``<where>: <Model>.<field>: <what is wrong> (got <value>)``."""
    from distilflow.secrets import redact

    lines = []
    for err in exc.errors():
        # a dict key is part of the location: a key pasted as a variable name must not be shown there
        loc = ".".join("<not shown>" if redact(p) else str(p) for p in field_path(err["loc"])) or "(root)"
        origin = f"--set {loc}" if _from_override(loc, overridden) else where
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or fix its spelling"
        shown = "" if err["type"] in HIDDEN_INPUT else _shown(err.get("input"))
        lines.append(f"{origin}: {model}.{loc}: {msg}{shown}")
    return f"{len(lines)} problem(s) in config:\n  " + "\n  ".join(lines)


HIDDEN_INPUT = ("missing", "extra_forbidden", "env_name")
"""Error types whose input is never shown: absent, irrelevant, or a field that names a secret's variable."""


def _shown(value: Any) -> str:
    """`` (got VALUE)`` for a message; a whole section is not repeated, and nothing key-like is shown."""
    from distilflow.secrets import redact

    if isinstance(value, dict):
        return ""
    note = redact(value)
    return f" (got {note})" if note else f" (got {_short(value)})"


def field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error's location as config keys: without tagged union labels (``UNION_TAG``)."""
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith(UNION_TAG)))


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _from_override(loc: str, overridden: set[str] | frozenset[str]) -> bool:
    return any(loc == key or loc.startswith(key + ".") for key in overridden)


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys |= _leaf_keys(value, dotted + ".") if isinstance(value, dict) and value else {dotted}
    return keys


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 floats: PyYAML reads ``1e-5`` (no dot) as the string "1e-5"."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 floats (``1e-5`` is a number)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping, naming the file on any error."""
    from distilflow import uri as uris

    try:
        text = uris.read_text(str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    if str(path).lower().endswith(".json"):
        # JSON is parsed as JSON: YAML refuses tab indentation, which JSON writers use
        try:
            data = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
    else:
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=[1,2]"]`` into a nested dict; values are parsed as YAML scalars/flow."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sft.max_steps=20")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: empty key segment in {key!r}")
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set to a value and also used as a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_layers(
    *layers: dict[str, Any],
    replace: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Config layers merged into one, lowest precedence first (``deep_merge`` of each onto the rest).

    Args:
        layers: Mappings, each overriding the ones before it.
        replace: Called as ``replace(merged, layer)`` before a layer is merged in: returns ``merged``
            less what the layer replaces instead of merging into (the recipes' rule for a teacher or
            judge that names its own model).
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(replace(merged, layer) if replace else merged, layer)
    return merged
