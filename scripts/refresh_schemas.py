"""Re-download the published schemas the strict test fakes validate against, into tests/data/.

Not run in CI: the vendored files are committed. Run it when a supported version changes:

    python scripts/refresh_schemas.py                 # from raw.githubusercontent.com
    python scripts/refresh_schemas.py --mirror kserve/kserve=/path/to/clone   # from a local clone

Each output file is JSON with a ``source`` header (repository, path, tag, commit, URL) and the
schema itself:

- a CRD's ``openAPIV3Schema`` of its served version, with the ``description`` texts removed (they
  are 90% of the bytes and never validate anything; everything else is kept as published);
- KFP's v2beta1 REST ``definitions`` (run and experiment swagger files), with descriptions removed.

The file names carry the upstream tag, so two versions of one schema can sit side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import yaml

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")

CRDS = [
    # (repository, tag, commit, path, output file)
    (
        "kubeflow/trainer",
        "v2.2.0",
        "dc7656ad878916f526cd401f30a347574cd47877",
        "manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml",
        "trainjobs.trainer.kubeflow.org.v2.2.0.json",
    ),
    (
        "kubeflow/trainer",
        "v2.3.0",
        "658725bdae5c7e3a0854d93ac6ff492e109a22ab",
        "manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml",
        "trainjobs.trainer.kubeflow.org.v2.3.0.json",
    ),
    (
        "kserve/kserve",
        "v0.15.0",
        "d20d4228a8b2956b800ad5a3e62c0578b5a5b97f",
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "inferenceservices.serving.kserve.io.v0.15.0.json",
    ),
    (
        "kserve/kserve",
        "v0.20.0",
        "1fb781055dd1567164358233e1125142ca6ef1fe",
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "inferenceservices.serving.kserve.io.v0.20.0.json",
    ),
]

SWAGGERS = (
    "kubeflow/pipelines",
    "2.17.0",
    "4a3592cb2dd0a91a4652ab93893ec8beda1f3158",
    ["backend/api/v2beta1/swagger/run.swagger.json", "backend/api/v2beta1/swagger/experiment.swagger.json"],
    "kfp.v2beta1.definitions.2.17.0.json",
)


def fetch(repo: str, commit: str, path: str, mirrors: dict[str, str]) -> str:
    """The file at ``commit`` from a local clone named in ``mirrors``, else from GitHub."""
    if repo in mirrors:
        return subprocess.run(
            ["git", "-C", mirrors[repo], "show", f"{commit}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    url = f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read().decode()


def strip_descriptions(schema: Any, in_properties: bool = False) -> Any:
    """The schema without ``description`` keywords (a property *named* description is kept)."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "description" and not in_properties and isinstance(value, str):
                continue
            out[key] = strip_descriptions(value, in_properties=key == "properties" and not in_properties)
        return out
    if isinstance(schema, list):
        return [strip_descriptions(item) for item in schema]
    return schema


def source(repo: str, tag: str, commit: str, paths: list[str]) -> dict[str, Any]:
    return {
        "repository": f"https://github.com/{repo}",
        "tag": tag,
        "commit": commit,
        "paths": paths,
        "urls": [f"https://raw.githubusercontent.com/{repo}/{commit}/{p}" for p in paths],
        "refreshed_by": "scripts/refresh_schemas.py",
        "changes": "description texts removed; nothing else",
    }


def crd_file(repo: str, tag: str, commit: str, path: str, mirrors: dict[str, str]) -> dict[str, Any]:
    crd = yaml.safe_load(fetch(repo, commit, path, mirrors))
    served = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    if len(served) != 1:
        raise SystemExit(f"{repo}@{tag}:{path}: expected one served storage version, found {len(served)}")
    version = served[0]
    return {
        "source": source(repo, tag, commit, [path]),
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "plural": crd["spec"]["names"]["plural"],
        "version": version["name"],
        "openAPIV3Schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
    }


def swagger_file(
    repo: str, tag: str, commit: str, paths: list[str], mirrors: dict[str, str]
) -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    for path in paths:
        definitions.update(json.loads(fetch(repo, commit, path, mirrors))["definitions"])
    return {"source": source(repo, tag, commit, paths), "definitions": strip_descriptions(definitions)}


def write(name: str, doc: dict[str, Any]) -> None:
    path = os.path.join(DATA, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))  # the source header first
        f.write("\n")
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="OWNER/NAME=PATH",
        help="read that repository from a local git clone instead of GitHub (repeatable)",
    )
    args = parser.parse_args(argv)
    mirrors = dict(item.split("=", 1) for item in args.mirror)
    os.makedirs(DATA, exist_ok=True)
    for repo, tag, commit, path, name in CRDS:
        write(name, crd_file(repo, tag, commit, path, mirrors))
    repo, tag, commit, paths, name = SWAGGERS
    write(name, swagger_file(repo, tag, commit, paths, mirrors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
