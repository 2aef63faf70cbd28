"""Render an HTML report in headless Chromium and return the DOM after its scripts ran.

Report tests use this to check that charts are really drawn by a browser, not just present as
text. Chromium is a system package (Debian: ``apt-get install chromium``); ``.ci/run`` installs it
and sets ``DISTILFLOW_REQUIRE_BROWSER=1`` so that a missing browser fails CI instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    explicit = os.environ.get("DISTILFLOW_CHROMIUM")
    if explicit:
        return explicit
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def render_dom(html_path: str | Path, *, timeout: float = 60.0) -> str:
    """The serialized DOM of ``html_path`` after headless Chromium loaded it and ran its scripts."""
    browser = chromium_path()
    if browser is None:
        if os.environ.get("DISTILFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail("headless Chromium is required (DISTILFLOW_REQUIRE_BROWSER=1) but none is on PATH")
        pytest.skip("no Chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="distilflow-chromium-") as profile:
        proc = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",  # tests run as root in CI
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                Path(html_path).resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0 or "<html" not in proc.stdout.lower():
        raise AssertionError(
            f"chromium failed to render {html_path} (rc={proc.returncode}): {proc.stderr[-2000:]}"
        )
    return proc.stdout
