"""Benchmark ``distilflow validate`` on a config without local models against two baselines in the
same run: the floor (a Python start that imports the CLI and the quickstart pipeline, which validate
cannot avoid) and the old path (the same check after building the quickstart's tiny student, which
made validate take 5-10 s).

    python bench/bench_validate.py [--repeat 3]

Prints the median wall time of each, the ratios, and one JSON line; the target is validate < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBLEMS = os.path.join(ROOT, "pipelines", "quickstart_problems.jsonl")
OLD_PATH = """
import sys, tempfile
from distilflow.client.local import validate_config
from distilflow.tiny import build_tiny
build_tiny(tempfile.mkdtemp() + "/student", arch="qwen3")  # what prepare() did before validating
validate_config("quickstart", sys.argv[1])
"""


def timed(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd[:4])} failed: {done.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "mine.yaml")
        with open(config, "w") as f:
            f.write(f"distill: {{problems_uri: {PROBLEMS}}}\n")
        py = sys.executable
        floor = timed(
            [py, "-c", "import distilflow.client.cli, distilflow.pipelines.quickstart"], args.repeat
        )
        validate = timed([py, "-m", "distilflow.client.cli", "validate", config], args.repeat)
        old = timed([py, "-c", OLD_PATH, config], args.repeat)
    print(f"import floor        {floor:6.2f} s")
    print(f"validate            {validate:6.2f} s  ({validate / floor:.2f}x the floor)")
    print(f"old path (a model)  {old:6.2f} s  ({old / validate:.1f}x validate)")
    figures = {"bench": "validate", "validate_s": round(validate, 3), "floor_s": round(floor, 3)}
    figures |= {"old_path_s": round(old, 3), "speedup_vs_old": round(old / validate, 2)}
    print(json.dumps({**figures, "target_s": 2.0, "met": validate < 2.0}))


if __name__ == "__main__":
    main()
