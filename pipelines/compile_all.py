"""Compile every registered pipeline into ``pipelines/golden/<name>.yaml`` (the golden specs).

``python -m distilflow.pipelines.compile_all`` rewrites them; ``--check`` only reports which differ.
tests/pipelines/test_pipelines.py fails when a golden spec is stale, so a change to a recipe, a component or an
image shows up in review as a diff of the compiled YAML. Compilation is made deterministic by clearing
the build-time environment that changes the spec (image registry, pull secrets): run it in a fresh
interpreter, as the pipelines read it when their modules are imported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
COMPILE_TIME_ENV = ("DISTILFLOW_IMAGE_REGISTRY", "DISTILFLOW_IMAGE_PULL_SECRETS")
REGENERATE = "python -m distilflow.pipelines.compile_all"


@contextlib.contextmanager
def _clean_env() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in COMPILE_TIME_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def compile_text(name: str) -> str:
    """The compiled YAML of pipeline ``name``, as the golden file holds it."""
    from kfp import compiler

    from distilflow.pipelines import load_pipeline

    with _clean_env(), tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{name}.yaml")
        compiler.Compiler().compile(pipeline_func=load_pipeline(name).pipeline, package_path=path)
        with open(path, encoding="utf-8") as f:
            return f.read()


def golden_path(name: str, folder: str = GOLDEN_DIR) -> str:
    return os.path.join(folder, f"{name}.yaml")


def main(argv: list[str] | None = None) -> int:
    set_vars = [k for k in COMPILE_TIME_ENV if os.environ.get(k)]
    if set_vars:
        print(
            f"error: unset {', '.join(set_vars)} first: golden specs use the default registry, no pull secrets"
        )
        return 2
    from distilflow.pipelines import PIPELINES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only report stale golden specs; exit 1 if any.")
    parser.add_argument("--out", default=GOLDEN_DIR, help="Folder of the golden specs.")
    args = parser.parse_args(argv)
    stale = []
    for name in sorted(PIPELINES):
        text, path = compile_text(name), golden_path(name, args.out)
        old = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
        if old == text:
            continue
        stale.append(name)
        if not args.check:
            os.makedirs(args.out, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {path}")
    if args.check and stale:
        print(f"stale golden specs: {', '.join(stale)}; regenerate with: {REGENERATE}")
        return 1
    print(f"{len(PIPELINES) - len(stale)} golden spec(s) unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
