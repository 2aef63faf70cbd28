"""Promise 2: a stage killed with SIGKILL at any point and run again ends with the outputs of an
uninterrupted run (the same rows; training continues its step count), and while it is unfinished
no downstream stage accepts its output.

Every stage runs as ``distilflow stage NAME --config FILE`` in a subprocess and is killed at points
drawn from a seeded generator (request counts, checkpoint steps, finished chunks), then rerun.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from distilflow import uri as uris
from distilflow.client.cli import main
from distilflow.outputs import MARKER
from distilflow.records import Message, SftExample, Trace, output_shards, read_jsonl, write_jsonl
from tests.fakes.fault_server import FaultServer
from tests.reliability.conftest import (
    SECRETS,
    TEACHER_KEY_ENV,
    cli,
    endpoint_teacher,
    figure,
    popen_cli,
    problems,
    result_of,
    write_config,
)

pytestmark = pytest.mark.reliability
SEED = 20261126


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], log: str, timeout: float = 180) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it exits or times out first."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, (
                f"the stage finished before the kill point:\n{Path(log).read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"kill point not reached in {timeout}s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def refused_downstream(args: list[str]) -> str:
    """Run a downstream stage (in-process CLI) on a partial output: it must refuse with exit 1."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "no completion marker" in result.stderr, result.output
    return result.stderr.strip().splitlines()[-1]


def test_distill_killed_at_random_points_resumes_to_the_same_rows(work):
    rng = random.Random(SEED)
    n_problems, n, concurrency = 40, 2, 4
    problems_uri = problems(os.path.join(work, "problems.jsonl"), n_problems)
    log = os.path.join(work, "distill.log")
    section = {"problems_uri": problems_uri, "n": n, "shard_size": 8, "flush_s": 0.2}

    def teacher(url: str) -> dict:
        return endpoint_teacher(url, concurrency=concurrency)

    with FaultServer(latency_s=0.02, api_key=SECRETS[TEACHER_KEY_ENV]) as url:
        ref = os.path.join(work, "ref")
        cfg = write_config(
            os.path.join(work, "ref.yaml"), section | {"output_uri": ref, "teacher": teacher(url)}
        )
        assert cli("stage", "distill", "--config", cfg, log=log).returncode == 0

    server = FaultServer(latency_s=0.02, api_key=SECRETS[TEACHER_KEY_ENV])
    points = sorted(rng.sample(range(5, n_problems * n - 10), 2))
    out = os.path.join(work, "out")
    with server as url:
        cfg = write_config(
            os.path.join(work, "out.yaml"), section | {"output_uri": out, "teacher": teacher(url)}
        )
        for point in points:
            proc = popen_cli("stage", "distill", "--config", cfg, log=log)
            kill_when(proc, lambda p=point: server.requests >= p, log)
            assert not os.path.exists(os.path.join(out, MARKER))
            curate = {"output_uri": os.path.join(work, "curate"), "data_uri": out, "judge": teacher(url)}
            refusal = refused_downstream(
                ["stage", "curate", "--config", write_config(os.path.join(work, "c.yaml"), curate)]
            )
        done = cli("stage", "distill", "--config", cfg, log=log)
        assert done.returncode == 0, done.stderr[-3000:]
    final = result_of(done)
    rows = read_jsonl(os.path.join(out, "traces.jsonl"), Trace)
    reference = read_jsonl(os.path.join(ref, "traces.jsonl"), Trace)
    assert [r.model_dump() for r in rows] == [r.model_dump() for r in reference]
    sent = server.sent()
    resent = sum(c - 1 for c in sent.values())
    assert len(sent) == n_problems * n and resent <= concurrency * len(points), (resent, points)
    assert final["resumed"] + final["cache_hits"] > 0
    figure(
        "kill/distill",
        kill_points_requests=points,
        rows=f"{len(rows)}/{n_problems * n}",
        equal_to_uninterrupted=True,
        duplicates=len(rows) - len({r.id for r in rows}),
        requests_resent=resent,
        resumed_from_shards=final["resumed"],
        cache_hits=final["cache_hits"],
        downstream=refusal[:90],
    )


def _distill_output(work: str, url: str, n_problems: int) -> str:
    """A finished distill output (in-process: the curate test kills curate, not distill)."""
    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.run import run

    out = os.path.join(work, "distill")
    problems_uri = problems(os.path.join(work, "problems.jsonl"), n_problems)
    run(
        DistillConfig.from_dict(
            {"output_uri": out, "problems_uri": problems_uri, "teacher": endpoint_teacher(url)}
        )
    )
    return out


def test_curate_killed_at_random_points_reruns_to_the_same_selection(work):
    rng = random.Random(SEED + 1)
    n_problems, batch = 32, 4
    log = os.path.join(work, "curate.log")
    server = FaultServer(latency_s=0.02, api_key=SECRETS[TEACHER_KEY_ENV])
    with server as url:
        data = _distill_output(work, url, n_problems)
        judge = endpoint_teacher(url, concurrency=2)
        section = {"data_uri": data, "judge": judge, "mode": "logprobs", "batch_size": batch}
        ref = os.path.join(work, "ref")
        cfg = write_config(os.path.join(work, "ref.yaml"), section | {"output_uri": ref})
        start = server.requests
        assert cli("stage", "curate", "--config", cfg, log=log).returncode == 0
        per_run = server.requests - start
        out = os.path.join(work, "out")
        cfg = write_config(os.path.join(work, "out.yaml"), section | {"output_uri": out})
        points = sorted(rng.sample(range(batch * 3, per_run - batch * 3), 2))
        first = server.requests
        for point in points:
            begin = server.requests
            proc = popen_cli("stage", "curate", "--config", cfg, log=log)
            kill_when(proc, lambda p=point, b=begin: server.requests - b >= p, log)
            assert not os.path.exists(os.path.join(out, MARKER))
            sft = {"output_uri": os.path.join(work, "sft"), "data_uri": out, "model": data}
            refusal = refused_downstream(
                ["stage", "sft", "--config", write_config(os.path.join(work, "s.yaml"), sft)]
            )
        begin = server.requests
        done = cli("stage", "curate", "--config", cfg, log=log)
        assert done.returncode == 0, done.stderr[-3000:]
        last = server.requests - begin
    final = result_of(done)
    for kind in ("scored", "sft", "preference"):  # the same shards, byte for byte
        ours, theirs = output_shards(out, kind), output_shards(ref, kind)
        assert [os.path.basename(u) for u in ours] == [os.path.basename(u) for u in theirs], kind
        assert [Path(u).read_text() for u in ours] == [Path(u).read_text() for u in theirs], kind
    scored = [
        json.loads(line) for u in output_shards(out, "scored") for line in Path(u).read_text().splitlines()
    ]
    ids = collections.Counter(r["id"] for r in scored)
    assert len(ids) == n_problems and max(ids.values()) == 1
    figure(
        "kill/curate",
        kill_points_requests=points,
        rows=f"{final['scored']}/{n_problems}",
        equal_to_uninterrupted=True,
        duplicates=sum(c - 1 for c in ids.values()),
        judge_requests_per_run=per_run,
        rerun_requests=last,
        requests_resent=server.requests - first - per_run,
        downstream=refusal[:90],
    )


def sft_examples(n: int = 8) -> list[SftExample]:
    return [
        SftExample(
            id=f"e{i}",
            messages=[
                Message(role="user", content=f"What is {i} + {i}?"),
                Message(
                    role="assistant",
                    content=f"The answer is \\boxed{{{2 * i}}}.",
                    reasoning_content=f"We add {i} and {i} to get {2 * i}.",
                ),
            ],
        )
        for i in range(n)
    ]


def _complete_steps(output_uri: str) -> list[int]:
    from distilflow.training.checkpointing import list_checkpoints

    return [c.step for c in list_checkpoints(output_uri) if c.marker is not None]


@pytest.mark.parametrize("kills", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_sft_killed_at_a_random_checkpoint_on_faulty_s3_continues_its_steps(
    work, tiny_qwen3, faulty_s3, kills
):
    """sft writes checkpoints to S3 through the faulty proxy, is killed after a checkpoint drawn at
    random, reruns from it and ends where an uninterrupted run ends; evaluate refuses its model
    while it is unfinished."""
    import torch
    from safetensors.torch import load_file

    from distilflow.components.sft.config import SftConfig
    from distilflow.components.sft.run import run

    proxy, bucket = faulty_s3
    rng = random.Random(SEED + 2)
    data = os.path.join(work, "sft.jsonl")
    write_jsonl(data, sft_examples())
    settings = {
        "data_uri": data,
        "model": tiny_qwen3,
        "max_steps": 8,
        "learning_rate": 5e-3,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_length": 128,
        "logging_steps": 1,
        "save_steps": 2,
        "save_total_limit": 2,
    }
    out = f"s3://{bucket}/run/sft"
    cfg = write_config(os.path.join(work, "sft.yaml"), settings | {"output_uri": out})
    log = os.path.join(work, "sft.log")
    points = sorted(rng.sample([2, 4, 6], kills))
    proxy.faults = {"slow": 0.05, "500": 0.03, "drop_after": 0.02}
    for point in points:  # each run after the first resumes, then is killed again
        proc = popen_cli("stage", "sft", "--config", cfg, log=log)
        kill_when(proc, lambda p=point: p in _complete_steps(out), log)
        assert not uris.exists(f"{out}/{MARKER}")
    steps_before = _complete_steps(out)
    evaluate = {
        "output_uri": os.path.join(work, "evaluate"),
        "model": f"{out}/model",
        "problems_uri": problems(os.path.join(work, "p.jsonl"), 2),
    }
    refusal = refused_downstream(
        ["stage", "evaluate", "--config", write_config(os.path.join(work, "e.yaml"), evaluate)]
    )
    done = cli("stage", "sft", "--config", cfg, log=log)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = result_of(done)
    assert resumed["resumed_from_step"] == max(steps_before) and resumed["steps"] == 8

    whole = run(SftConfig.from_dict(settings | {"output_uri": os.path.join(work, "whole")}))
    assert whole.steps == 8 and whole.resumed_from_step is None
    assert resumed["final_loss"] == pytest.approx(whole.final_loss, rel=1e-4)
    local = Path(work, "resumed.safetensors")
    local.write_bytes(uris.read_bytes(f"{out}/model/model.safetensors"))
    a, b = load_file(str(local)), load_file(os.path.join(whole.model_uri, "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    figure(
        f"kill/sft-{kills}",
        kill_points_checkpoint=points,
        checkpoints_at_kill=steps_before,
        resumed_from_step=resumed["resumed_from_step"],
        steps=f"{resumed['steps']}/8",
        final_loss=f"{resumed['final_loss']:.5f} vs {whole.final_loss:.5f} uninterrupted",
        s3_faults=dict(proxy.injected()),
        s3_requests_resent=proxy.resent(),
        downstream=refusal[:90],
    )


@pytest.mark.parametrize("kills", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_evaluate_killed_after_random_chunks_resumes_to_the_same_results(work, tiny_qwen3, kills):
    from distilflow.components.evaluate.config import EvaluateConfig
    from distilflow.components.evaluate.run import PARTIAL, run

    rng = random.Random(SEED + 3)
    settings = {
        "model": tiny_qwen3,
        "problems_uri": problems(os.path.join(work, "problems.jsonl"), 12),
        "samples": 2,
        "max_new_tokens": 12,
        "batch_size": 2,
        "temperature": 0.8,
        "seed": 3,
    }
    out = os.path.join(work, "out")
    cfg = write_config(os.path.join(work, "evaluate.yaml"), settings | {"output_uri": out})
    log = os.path.join(work, "evaluate.log")
    points = sorted(rng.sample(range(1, 5), kills))
    partial = os.path.join(out, PARTIAL)

    def answered() -> int:
        try:
            return len(Path(partial).read_text().splitlines())
        except FileNotFoundError:
            return 0

    at_kill = []
    for chunks in points:
        proc = popen_cli("stage", "evaluate", "--config", cfg, log=log)
        kill_when(proc, lambda c=chunks: answered() >= c * 2 * 2, log)
        at_kill.append(answered())
        assert not os.path.exists(os.path.join(out, MARKER))
    done = cli("stage", "evaluate", "--config", cfg, log=log)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout
    whole = run(EvaluateConfig.from_dict(settings | {"output_uri": os.path.join(work, "whole")}))
    got = Path(out, "results.jsonl").read_text()
    assert got == Path(whole.results_uri).read_text()
    assert result_of(done)["accuracy"] == whole.accuracy
    figure(
        f"kill/evaluate-{kills}",
        kill_points_chunks=points,
        answers_at_kill=at_kill,
        rows=f"{len(got.splitlines())}/24",
        equal_to_uninterrupted=True,
    )


def preference_pairs(path: str, n: int = 8) -> str:
    from distilflow.records import PreferencePair

    def msg(role: str, text: str) -> Message:
        return Message(role=role, content=text)

    rows = [
        PreferencePair(
            id=f"pair{i}",
            prompt=[msg("user", f"What is {i} + {i}?")],
            chosen=[msg("assistant", f"{i} + {i} = {2 * i}. The answer is \\boxed{{{2 * i}}}.")],
            rejected=[msg("assistant", f"The answer is \\boxed{{{2 * i + 1}}}.")],
        )
        for i in range(n)
    ]
    write_jsonl(path, rows)
    return path


def _kill_at_checkpoint_and_resume(
    stage: str, settings: dict, work: str, seed: int, downstream: Callable[[str], dict]
) -> dict:
    """Run STAGE via the CLI, SIGKILL it once a checkpoint drawn at random is complete, check that
    ``downstream(killed_output)`` (a stage section) is refused, rerun it and compare with an
    uninterrupted in-process run. Returns the figures."""
    import torch
    from safetensors.torch import load_file

    from distilflow.components import load_config_class, load_run

    rng = random.Random(seed)
    steps, every = settings["max_steps"], settings["save_steps"]
    point = rng.choice(range(every, steps, every))
    out = os.path.join(work, "out")
    cfg = write_config(os.path.join(work, f"{stage}.yaml"), settings | {"output_uri": out})
    log = os.path.join(work, f"{stage}.log")
    proc = popen_cli("stage", stage, "--config", cfg, log=log)
    kill_when(proc, lambda: point in _complete_steps(out), log, timeout=600)
    assert not os.path.exists(os.path.join(out, MARKER))
    at_kill = _complete_steps(out)
    section = downstream(out)
    name = section.pop("stage")
    refusal = refused_downstream(
        ["stage", name, "--config", write_config(os.path.join(work, "down.yaml"), section)]
    )
    done = cli("stage", stage, "--config", cfg, log=log, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = result_of(done)
    assert resumed["resumed_from_step"] == max(at_kill) and resumed["steps"] == steps
    config = load_config_class(stage).from_dict(settings | {"output_uri": os.path.join(work, "whole")})
    whole = load_run(stage)(config)
    assert whole.steps == steps and whole.resumed_from_step is None
    assert resumed["final_loss"] == pytest.approx(whole.final_loss, rel=1e-4, abs=1e-6)
    a = load_file(os.path.join(out, "model", "model.safetensors"))
    b = load_file(os.path.join(whole.model_uri, "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    return {
        "kill_point_checkpoint": point,
        "checkpoints_at_kill": at_kill,
        "resumed_from_step": resumed["resumed_from_step"],
        "steps": f"{resumed['steps']}/{steps}",
        "final_loss": f"{resumed['final_loss']:.5f} vs {whole.final_loss:.5f} uninterrupted",
        "downstream": refusal[:90],
    }


@pytest.mark.slow
def test_reward_killed_at_a_random_checkpoint_continues_its_steps(work, tiny_qwen3):
    settings = {
        "data_uri": preference_pairs(os.path.join(work, "pairs.jsonl")),
        "model": tiny_qwen3,
        "max_steps": 6,
        "save_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "max_length": 128,
        "logging_steps": 1,
        "heldout_fraction": 0.25,
    }

    def rl_on(reward: str) -> dict:
        return {
            "stage": "rl",
            "output_uri": os.path.join(work, "rl"),
            "model": tiny_qwen3,
            "problems_uri": problems(os.path.join(work, "p.jsonl"), 2),
            "rewards": {"correctness": 1.0, "reward_model": 0.5},
            "reward_model_uri": reward,
            "num_generations": 2,
            "per_device_train_batch_size": 2,
        }

    figure("kill/reward", **_kill_at_checkpoint_and_resume("reward", settings, work, SEED + 4, rl_on))


@pytest.mark.slow
def test_rl_killed_at_a_random_checkpoint_continues_its_steps(work, tiny_qwen3):
    settings = {
        "problems_uri": problems(os.path.join(work, "problems.jsonl"), 8),
        "model": tiny_qwen3,
        "max_steps": 4,
        "save_steps": 2,
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_completion_length": 8,
        "learning_rate": 1e-3,
        "logging_steps": 1,
    }

    def evaluate_on(rl: str) -> dict:
        return {
            "stage": "evaluate",
            "output_uri": os.path.join(work, "evaluate"),
            "model": os.path.join(rl, "model"),
            "problems_uri": settings["problems_uri"],
        }

    figure("kill/rl", **_kill_at_checkpoint_and_resume("rl", settings, work, SEED + 5, evaluate_on))
