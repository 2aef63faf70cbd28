"""Versioned prompt templates: one ``<name>_v<version>.txt`` file each, never edited once released.

A change to a prompt is a new file (``..._v2.txt``), so every output can record exactly which
prompt made it (``Template.ref``, written to the stage manifest). Placeholders are written
``{{name}}``; single braces (``\\boxed{}``, JSON) are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

PLACEHOLDER_RE = re.compile(r"\{\{(\w+)\}\}")
NAME_RE = re.compile(r"^(?P<name>[a-z0-9_]+)_v(?P<version>\d+)$")


@dataclass(frozen=True)
class Template:
    """A prompt template file: its name, version and text."""

    name: str
    version: int
    text: str

    @property
    def ref(self) -> str:
        """The file stem, e.g. ``cot_thought_solution_v1``: what manifests record."""
        return f"{self.name}_v{self.version}"

    @property
    def fields(self) -> set[str]:
        return set(PLACEHOLDER_RE.findall(self.text))

    def render(self, **values: str) -> str:
        """Fill every ``{{field}}``; a missing or unknown field is an error (a silent gap would
        change what the model is asked)."""
        missing, unknown = self.fields - set(values), set(values) - self.fields
        if missing or unknown:
            raise KeyError(
                f"template {self.ref}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}; "
                f"it takes {sorted(self.fields)}"
            )
        return PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], self.text)


def available() -> list[str]:
    """Refs of every template shipped with the package."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[:-4] for f in files if f.name.endswith(".txt") and NAME_RE.match(f.name[:-4]))


def load(ref: str) -> Template:
    """Load a template by ref, e.g. ``load("judge_rv_v1")``."""
    match = NAME_RE.match(ref)
    path = resources.files(__name__).joinpath(ref + ".txt")
    if not match or not path.is_file():
        raise KeyError(f"no prompt template {ref!r}; shipped templates: {', '.join(available())}")
    text = path.read_text(encoding="utf-8").strip("\n")
    return Template(name=match.group("name"), version=int(match.group("version")), text=text)
