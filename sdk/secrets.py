"""Secrets stay in the environment: config fields that name a variable (``*_env``) hold a name, never a key.

``EnvName`` is the type of every such field. It refuses a value that is not a variable name
(``^[A-Za-z_][A-Za-z0-9_]*$``) or that looks like a key (the shapes providers publish: OpenAI's and
Anthropic's ``sk-``, AWS's ``AKIA``/``ASIA``, Alibaba Cloud's ``LTAI``, Hugging Face's ``hf_``,
GitHub's ``ghp_``/``github_pat_``, Slack's ``xox?-``, Google's ``AIza``, JWTs, and long high-entropy
strings), with a message that names the field and never the value. ``unset_keys`` lists the
variables a config names for a key it needs that the environment does not set, so a stage (and
validate) stops before any work with "TEACHER_API_KEY is not set".
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator
from pydantic_core import PydanticCustomError

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# (what it looks like, pattern) of the key shapes providers document.
KEY_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an Anthropic API key (sk-ant-...)", re.compile(r"^sk-ant-")),
    ("an OpenAI-style API key (sk-...)", re.compile(r"^sk-[A-Za-z0-9_-]{8,}")),
    ("an AWS access key id (AKIA.../ASIA...)", re.compile(r"^(AKIA|ASIA)[0-9A-Z]{12,}$")),
    ("an Alibaba Cloud AccessKey id (LTAI...)", re.compile(r"^LTAI[0-9A-Za-z]{8,}$")),
    ("a Hugging Face token (hf_...)", re.compile(r"^hf_[A-Za-z0-9]{16,}$")),
    ("a GitHub token (ghp_.../github_pat_...)", re.compile(r"^(gh[pousr]_[A-Za-z0-9]{16,}|github_pat_)")),
    ("a Slack token (xox?-...)", re.compile(r"^xox[abposr]-")),
    ("a Google API key (AIza...)", re.compile(r"^AIza[0-9A-Za-z_-]{20,}$")),
    ("a JSON Web Token (eyJ...)", re.compile(r"^eyJ[A-Za-z0-9_-]{8,}\.")),
    ("a PEM private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
)


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_like_key(value: str) -> str | None:
    """What ``value`` looks like when it looks like a key or token (e.g. "an OpenAI-style API key
    (sk-...)"), else None. A variable name such as ``ALIBABA_CLOUD_ACCESS_KEY_SECRET`` does not."""
    text = value.strip()
    for what, pattern in KEY_SHAPES:
        if pattern.search(text):
            return what
    if len(text) >= 32 and re.fullmatch(r"[0-9a-fA-F]+", text):
        return "a hex-encoded secret"
    classes = sum(bool(re.search(p, text)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    # Names are words joined by "_"; a random token mixes cases and digits with no word breaks.
    longest_run = max((len(part) for part in re.split(r"[_\-.]", text)), default=0)
    digit_runs = len(re.findall(r"[0-9]+", text))  # "MyVariableName2024" has one; a random token several
    if len(text) >= 20 and classes == 3 and longest_run >= 16 and digit_runs >= 2 and _entropy(text) >= 3.5:
        return "a long random string (a key or token)"
    return None


def check_env_name(value: str) -> str:
    """``value`` if it is a variable name; else an error that never contains the value."""
    what = looks_like_key(value)
    if what:
        raise PydanticCustomError(
            "env_name",
            f"holds what looks like {what}, not the name of an environment variable; never paste a key "
            "into a config: export it in a variable (export MY_API_KEY=...) or mount it from a Kubernetes "
            "Secret, and write the variable's name here (the value is not shown)",
        )
    if not ENV_NAME_RE.fullmatch(value):
        raise PydanticCustomError(
            "env_name",
            "must be the name of an environment variable (letters, digits and _, not starting with a "
            "digit, e.g. TEACHER_API_KEY); the value is not shown",
        )
    return value


EnvName = Annotated[str, AfterValidator(check_env_name)]
"""A config field that names an environment variable (the variable holds a secret)."""


def _check_env_map(value: Any) -> Any:
    """Keys of a mapping checked as variable names before pydantic sees them: a bad dict key would
    otherwise become part of the error's location, which every message and traceback prints."""
    if isinstance(value, dict):
        for i, name in enumerate(value):
            if isinstance(name, str):
                try:
                    check_env_name(name)
                except PydanticCustomError as exc:
                    raise PydanticCustomError("env_name", f"entry {i + 1}'s name {exc.message()}") from None
        for i, item in enumerate(value.values()):
            what = looks_like_key(item) if isinstance(item, str) else None
            if what:
                raise PydanticCustomError(
                    "env_name",
                    f"entry {i + 1}'s value holds what looks like {what}; give a reference to where the key "
                    "is kept (secret-name/key), never the key (the value is not shown)",
                )
    return value


EnvNameMap = Annotated[dict[str, str], BeforeValidator(_check_env_map)]
"""A mapping from environment variable names to references (``secret_env``: NAME -> secret-name/key)."""


def redact(value: Any) -> str | None:
    """None when ``value`` holds nothing key-like; else a note to show instead of it."""
    if isinstance(value, str):
        return "a value that looks like a key; not shown" if looks_like_key(value) else None
    if isinstance(value, dict):
        parts: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set)):
        parts = list(value)
    else:
        return None
    return next((note for note in map(redact, parts) if note), None)


def is_env_field(name: str) -> bool:
    """Whether a config key names environment variables: ``api_key_env``, ``secret_env``, ``env``,
    ``secret_env_names``, ... (the walk over the config classes in the tests finds no other kind)."""
    return name == "env" or name.endswith("_env") or name.endswith("_env_names")


def env_field_problems(tree: Any, where: str = "") -> list[str]:
    """Problems with the ``*_env`` values anywhere in a plain config tree (a pipeline config before its
    sections become stage configs, so that no key reaches a pipeline parameter or a KFP API), each
    naming the field and never the value."""
    problems: list[str] = []
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            problems.extend(env_field_problems(item, f"{where}[{i}]"))
        return problems
    if not isinstance(tree, dict):
        return problems
    for key, value in tree.items():
        path = f"{where}.{key}" if where else str(key)
        if not is_env_field(str(key)):
            problems.extend(env_field_problems(value, path))
            continue
        names = value if isinstance(value, list) else list(value) if isinstance(value, dict) else [value]
        values = list(value.values()) if isinstance(value, dict) else []
        for name in names:
            if name is None or not isinstance(name, str):
                continue
            try:
                check_env_name(name)
            except PydanticCustomError as exc:
                problems.append(f"{path}: {exc.message()}")
        if any(isinstance(v, str) and looks_like_key(v) for v in values):
            problems.append(f"{path}: a value looks like a key, not secret-name/key (not shown)")
    return problems


def _needs_key(model: BaseModel) -> bool:
    """A model that sends the key it names: a variable chosen in the config (not the field's default,
    ``OPENAI_API_KEY``, which a keyless local endpoint leaves unset) and, for a teacher-like entry, an
    endpoint. The default is compared by value: a config dumped with its defaults and read back (a
    pipeline's resolved config) names them all, and they stay defaults."""
    name = getattr(model, "api_key_env", None)
    field = type(model).model_fields.get("api_key_env")
    if name is None or field is None or name == field.default:
        return False
    backend = getattr(model, "backend", None)
    return "backend" not in type(model).model_fields or backend == "openai"


def key_variables(config: BaseModel, where: str = "") -> list[tuple[str, str]]:
    """``(field path, variable)`` of every ``api_key_env`` in ``config`` (nested models and lists
    included) that names a chosen variable for a model that sends it (an endpoint teacher, judge or model)."""
    found = []
    if _needs_key(config):
        found.append((f"{where}api_key_env", config.api_key_env))
    for name in type(config).model_fields:
        value = getattr(config, name, None)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                index = f"[{i}]" if isinstance(value, list) else ""
                found.extend(key_variables(item, f"{where}{name}{index}."))
    return found


def unset_keys(config: BaseModel, section: str = "") -> list[str]:
    """One line per key variable that ``config`` needs and the environment leaves unset or empty:
    "TEACHER_API_KEY is not set (distill.teacher.api_key_env names it); ...". Never the value."""
    prefix = f"{section}." if section else ""
    return [
        f"{name} is not set ({prefix}{path} names it); export it, or mount it from the Kubernetes Secret "
        "that holds the key"
        for path, name in key_variables(config)
        if not os.environ.get(name)
    ]
