"""Screenshots of every stage's HTML report for ``docs/reports/`` (linked from ``docs/reports.md``).

Each page is built by the stage's own report module from the seeded sample inputs the report tests
render (``tests/report_samples.py``) and photographed by headless Chromium:

    python scripts/report_screenshots.py [--out docs/reports]

Needs Chromium (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEIGHTS = {
    "distill": 1060,
    "curate": 2460,
    "sft": 1000,
    "dpo": 1000,
    "reward": 1320,
    "rl": 1560,
    "evaluate": 1500,
}
"""Window height per page (pixels): the page's content, measured once by eye."""


def main() -> None:
    sys.path.insert(0, ROOT)
    from tests.browser import chromium_path
    from tests.report_samples import REPORTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "reports"))
    args = parser.parse_args()
    browser = chromium_path()
    if browser is None:
        sys.exit("no Chromium on PATH (apt-get install chromium)")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for stage, build in REPORTS.items():
            page = os.path.join(tmp, f"{stage}.html")
            with open(page, "w", encoding="utf-8") as f:
                f.write(build())
            png = os.path.join(args.out, f"{stage}.png")
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--user-data-dir={os.path.join(tmp, 'profile')}", f"--window-size=1120,{HEIGHTS[stage]}",
                 f"--screenshot={png}", f"file://{page}"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            print(f"wrote {os.path.relpath(png, ROOT)}")


if __name__ == "__main__":
    main()
