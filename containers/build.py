#!/usr/bin/env python3
"""Build (and push) the stage images, tagged with the package version.

    python containers/build.py                      # build base, train, vllm
    python containers/build.py train --push         # build and push one family
    python containers/build.py --registry registry.example.com/team --push
    python containers/build.py --dry-run            # print the commands only

The tags come from ``distilflow.images.image(family)``, the same function the compiled components
use, so a pipeline compiled from this checkout (with the same ``DISTILFLOW_IMAGE_REGISTRY``)
references exactly the images built here. Run from any folder; the build context is the
repository root. Needs the package installed from this checkout (``pip install -e .``): the script
refuses an installed version that differs from pyproject.toml's.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise SystemExit("pyproject.toml has no version")
    return match.group(1)


def commands(
    families: list[str], registry: str | None, push: bool, tool: str, base_images: dict[str, str]
) -> list[list[str]]:
    """The build (and push) command lines, in order."""
    if registry:
        os.environ["DISTILFLOW_IMAGE_REGISTRY"] = registry
    import distilflow
    from distilflow import images

    version = checkout_version()
    if distilflow.__version__ != version:
        raise SystemExit(
            f"the installed distilflow is {distilflow.__version__} but this checkout is {version}; "
            f"pip install -e {ROOT} first"
        )
    out = []
    for family in families:
        ref = images.image(family)
        cmd = [
            tool,
            "build",
            "-f",
            str(ROOT / "containers" / family / "Dockerfile"),
            "--build-arg",
            f"DISTILFLOW_VERSION={version}",
        ]
        if family in base_images:
            cmd += ["--build-arg", f"BASE_IMAGE={base_images[family]}"]
        out.append([*cmd, "-t", ref, str(ROOT)])
        if push:
            out.append([tool, "push", ref])
    return out


def main(argv: list[str] | None = None) -> int:
    from distilflow.images import FAMILIES

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "families", nargs="*", metavar="FAMILY", help=f"of {', '.join(FAMILIES)} (default: all)"
    )
    parser.add_argument(
        "--registry", help="image registry (default: $DISTILFLOW_IMAGE_REGISTRY or ghcr.io/distilflow)"
    )
    parser.add_argument("--push", action="store_true", help="push each image after building it")
    parser.add_argument(
        "--base-image",
        action="append",
        default=[],
        metavar="FAMILY=IMAGE",
        help="another base image for train or vllm (their Dockerfiles' BASE_IMAGE)",
    )
    parser.add_argument("--tool", default=os.environ.get("DOCKER", "docker"), help="docker or podman")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    base_images = dict(item.split("=", 1) for item in args.base_image)
    families = list(args.families) or list(FAMILIES)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown image family {', '.join(unknown)}; families: {', '.join(FAMILIES)}")
    lines = commands(families, args.registry, args.push, args.tool, base_images)
    if not args.dry_run and shutil.which(args.tool) is None:
        raise SystemExit(f"{args.tool} is not installed; use --dry-run to see the commands")
    for cmd in lines:
        print("+ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
