"""The ``evaluate`` stage on a tiny random-weight Qwen3: files, protocol, answer checking, resume."""

from __future__ import annotations

import json
import os

import pytest

from distilflow.components.evaluate.config import EvaluateConfig
from distilflow.components.evaluate.run import build_chat, run, teacher_config
from distilflow.errors import ConfigError, IncompleteOutputError, RecordError
from distilflow.outputs import MANIFEST, MARKER
from distilflow.records import Problem, write_jsonl


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """One torch/OpenMP thread, here and in the subprocesses the tests start: on 2 shared cores,
    2 spinning OpenMP threads made 8 tiny generate() calls take 24.6 s instead of 0.8 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


def _config(tiny_qwen3: str, problems: str, out: str, **overrides) -> EvaluateConfig:
    base = {
        "output_uri": out,
        "model": tiny_qwen3,
        "problems_uri": problems,
        "samples": 2,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 16,
        "batch_size": 4,
        "seed": 0,
    }
    return EvaluateConfig.from_dict({**base, **overrides})


def _read(*parts: str) -> str:
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return f.read()


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_evaluate_writes_results_metrics_and_reports(tiny_qwen3, problems_file, tmp_path):
    out = str(tmp_path / "evaluate")
    cfg = _config(tiny_qwen3, problems_file, out, enable_thinking=False, system_prompt="Be brief.")
    result = run(cfg)

    rows = _rows(os.path.join(out, "results.jsonl"))
    assert len(rows) == 4 * 2
    assert sorted((r["problem_id"], r["sample"]) for r in rows) == [
        (p, s) for p in ("p1", "p2", "p3", "p4") for s in (0, 1)
    ]
    for row in rows:
        assert {"response", "predicted", "correct", "tokens", "reference"} <= set(row)
        assert 0 < row["tokens"] <= 16
    assert result.n_problems == 4 and result.samples == 2
    assert result.accuracy == pytest.approx(sum(r["correct"] for r in rows) / 8)
    assert result.mean_tokens == pytest.approx(sum(r["tokens"] for r in rows) / 8)

    metrics = json.loads(_read(out, "metrics.json"))
    assert metrics["accuracy"] == result.accuracy and metrics["pass_at_k"] == result.pass_at_k
    assert metrics["n_problems"] == 4 and metrics["n_answers"] == 8
    proto = metrics["protocol"]
    assert proto["samples"] == 2 and proto["temperature"] == 1.0 and proto["max_new_tokens"] == 16
    assert proto["enable_thinking"] is False and proto["system_prompt"] == "Be brief."
    assert proto["checker"] == "math-verify" and len(proto["problems_sha256"]) == 64
    assert metrics["model"]["uri"] == tiny_qwen3 and len(metrics["model"]["files_sha256"]) == 16

    md = _read(out, "report.md")
    assert "pass@2" in md and metrics["model"]["files_sha256"] in md and "prompt_template" in md
    html = _read(out, "report.html")
    assert "<table>" in html and "pass@2" in html and "</html>" in html

    manifest = json.loads(_read(out, MANIFEST))
    assert manifest["result"]["protocol"] == proto
    assert manifest["counts"] == {"problems": 4, "answers": 8}
    assert os.path.exists(os.path.join(out, MARKER))
    assert not os.path.exists(os.path.join(out, "results.partial.jsonl"))

    # A rerun of the finished stage returns the stored result without generating again.
    before = os.path.getmtime(os.path.join(out, "results.jsonl"))
    assert run(cfg) == result
    assert os.path.getmtime(os.path.join(out, "results.jsonl")) == before


def test_accuracy_really_checks_answers(tiny_qwen3, tmp_path):
    """References equal to what the model states score 1.0; references it does not state score 0.0."""
    from distilflow.answers import extract_answer
    from distilflow.teacher import TransformersTeacher

    candidates = [
        Problem(id=f"q{i}", problem=f"What is {i} + {i}?", answer="0", domain="math") for i in range(8)
    ]
    # batch_size=1: each problem is its own seeded generate() call, so its answer does not depend on
    # which other problems are asked; the test can ask them one by one exactly as the stage does.
    probe = _config(tiny_qwen3, "unused.jsonl", "unused", samples=1, batch_size=1, max_new_tokens=32)
    teacher = TransformersTeacher(teacher_config(probe))
    stated = {}
    for p in candidates:
        completion = teacher.generate([build_chat(probe, p)], n=1)[0][0]
        predicted = extract_answer(completion.content, p.domain)
        if predicted is not None:  # random weights: some answers contain no number at all
            stated[p.id] = predicted
    teacher.close()
    assert len(stated) >= 2, f"too few tiny-model answers state a number: {stated}"

    right = [p.model_copy(update={"answer": stated[p.id]}) for p in candidates if p.id in stated]
    wrong = [p.model_copy(update={"answer": "987654321.5"}) for p in right]
    for name, rows, expected in (("right", right, 1.0), ("wrong", wrong, 0.0)):
        problems = str(tmp_path / f"{name}.jsonl")
        write_jsonl(problems, rows)
        cfg = probe.model_copy(update={"problems_uri": problems, "output_uri": str(tmp_path / name)})
        result = run(cfg)
        assert result.accuracy == expected and result.pass_at_k == expected, name
        preds = {r["problem_id"]: r["predicted"] for r in _rows(str(tmp_path / name / "results.jsonl"))}
        assert preds == stated


def test_interrupted_run_resumes_with_identical_answers(tiny_qwen3, problems_file, tmp_path, monkeypatch):
    from distilflow.teacher import TransformersTeacher

    whole = run(_config(tiny_qwen3, problems_file, str(tmp_path / "whole"), batch_size=2))

    calls = []
    original = TransformersTeacher.generate

    def crash_on_second_chunk(self, chats, n=1):
        calls.append(len(chats))
        if len(calls) == 2:
            raise RuntimeError("simulated preemption")
        return original(self, chats, n)

    monkeypatch.setattr(TransformersTeacher, "generate", crash_on_second_chunk)
    out = str(tmp_path / "resumed")
    cfg = _config(tiny_qwen3, problems_file, out, batch_size=2)
    with pytest.raises(RuntimeError, match="preemption"):
        run(cfg)
    assert len(_rows(os.path.join(out, "results.partial.jsonl"))) == 2 * 2
    assert not os.path.exists(os.path.join(out, MARKER))

    calls.clear()
    resumed = run(cfg)
    assert calls == [2]  # only the second chunk was generated again
    strip = ("problem_id", "sample", "response", "tokens", "correct")
    key = lambda rows: [{k: r[k] for k in strip} for r in rows]  # noqa: E731
    assert key(_rows(os.path.join(out, "results.jsonl"))) == key(_rows(whole.results_uri))
    assert resumed.accuracy == whole.accuracy and resumed.mean_tokens == whole.mean_tokens


def test_component_logs_metrics_and_writes_report(tiny_qwen3, problems_file, tmp_path):
    """The KFP shell: model read from an upstream artifact (marker checked), metrics and Markdown out."""
    from kfp import dsl

    from distilflow.components.evaluate.component import evaluate

    stage_dir = tmp_path / "run" / "sft"
    stage_dir.mkdir(parents=True)
    model = dsl.Model(name="model", uri="unused", metadata={"uri": tiny_qwen3, "stage_uri": str(stage_dir)})
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    report = dsl.Markdown(name="report", uri=str(tmp_path / "report.md"), metadata={})
    config = {
        "evaluate": {"problems_uri": problems_file, "samples": 1, "temperature": 0.0, "max_new_tokens": 8}
    }
    with pytest.raises(IncompleteOutputError, match="completion marker"):
        evaluate.python_func(config, str(tmp_path / "run"), model, metrics, report)

    (stage_dir / MARKER).write_text("done\n")
    (stage_dir / MANIFEST).write_text("{}")
    evaluate.python_func(config, str(tmp_path / "run"), model, metrics, report)
    assert set(metrics.metadata) == {"accuracy", "pass@1", "mean_tokens"}
    assert metrics.metadata["mean_tokens"] > 0
    assert "| pass@1 |" in _read(report.path)
    assert report.metadata["uri"].endswith(os.path.join("run", "evaluate", "report.md"))


def test_problem_without_reference_is_refused(tiny_qwen3, tmp_path):
    problems = str(tmp_path / "p.jsonl")
    write_jsonl(problems, [Problem(id="ok", problem="1+1?", answer="2"), Problem(id="nope", problem="2+2?")])
    with pytest.raises(RecordError, match=r"1 problem\(s\) have no reference answer \(nope\)"):
        run(_config(tiny_qwen3, problems, str(tmp_path / "out")))
    assert not os.path.exists(tmp_path / "out" / MARKER)


def test_config_rejects_greedy_with_several_samples_and_bad_template(tmp_path):
    with pytest.raises(ConfigError) as err:
        EvaluateConfig.from_dict(
            {
                "output_uri": str(tmp_path),
                "model": str(tmp_path),
                "problems_uri": "p.jsonl",
                "samples": 4,
                "temperature": 0,
                "prompt_template": "no placeholder",
            }
        )
    assert "samples=4 with temperature=0" in str(err.value) and "{{problem}}" in str(err.value)


def test_evaluate_reads_model_and_writes_outputs_on_s3(
    tiny_qwen3, problems_file, s3_bucket, tmp_path, monkeypatch
):
    """Model and outputs in object storage (moto's S3 server): nothing is written to local disk but the cache."""
    from distilflow import uri as uris

    monkeypatch.setenv("DISTILFLOW_CACHE", str(tmp_path / "cache"))
    model_uri = f"s3://{s3_bucket}/models/tiny"
    uris.upload_dir(tiny_qwen3, model_uri)
    out = f"s3://{s3_bucket}/runs/r1/evaluate"
    result = run(_config(model_uri, problems_file, out, samples=1, temperature=0.0, max_new_tokens=8))

    rows = [json.loads(line) for line in uris.read_text(result.results_uri).splitlines()]
    assert len(rows) == 4 and result.results_uri == out + "/results.jsonl"
    metrics = json.loads(uris.read_text(out + "/metrics.json"))
    assert metrics["model"]["uri"] == model_uri and metrics["protocol"]["temperature"] == 0.0
    assert "| pass@1 |" in uris.read_text(out + "/report.md")
    assert uris.exists(out + "/" + MARKER) and not uris.exists(out + "/results.partial.jsonl")
