"""The ``evaluate`` stage on a tiny random-weight Qwen3: files, protocol, answer checking, resume."""

from __future__ import annotations

import hashlib
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
    assert proto["checker"] == "math: math-verify" and len(proto["problems_sha256"]) == 64
    assert metrics["model"]["uri"] == tiny_qwen3 and len(metrics["model"]["files_sha256"]) == 16

    md = _read(out, "report.md")
    assert "pass@2" in md and metrics["model"]["files_sha256"] in md and "prompt_template" in md
    html = _read(out, "report.html")
    assert "<table" in html and "pass@2" in html and "</html>" in html

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
    from distilflow.teachers.transformers import TransformersTeacher

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
    from distilflow.teachers.transformers import TransformersTeacher

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
    page = dsl.HTML(name="report_html", uri=str(tmp_path / "report.html"), metadata={})
    student = dsl.Model(name="student", uri=str(tmp_path / "student"), metadata={})
    config = {
        "evaluate": {"problems_uri": problems_file, "samples": 1, "temperature": 0.0, "max_new_tokens": 8}
    }
    with pytest.raises(IncompleteOutputError, match="completion marker"):
        evaluate.python_func(config, str(tmp_path / "run"), model, metrics, report, page, student)

    (stage_dir / MARKER).write_text("done\n")
    (stage_dir / MANIFEST).write_text("{}")
    evaluate.python_func(config, str(tmp_path / "run"), model, metrics, report, page, student)
    # the manifest's counts and metrics: 4 problems answered once each
    assert set(metrics.metadata) == {
        "accuracy",
        "pass_at_k",
        "mean_tokens",
        "truncated",
        "problems",
        "answers",
    }
    assert metrics.metadata["mean_tokens"] > 0
    assert (metrics.metadata["problems"], metrics.metadata["answers"]) == (4, 4)
    assert "| pass@1 |" in _read(report.path)
    assert report.metadata["uri"].endswith(os.path.join("run", "evaluate", "report.md"))
    assert "<svg" in _read(page.path) and page.metadata["uri"].endswith("report.html")
    # the scored student: the same model, its scores and the protocol's hash in the Model's metadata
    manifest = json.loads(_read(os.path.join(tmp_path, "run", "evaluate", MANIFEST)))
    assert student.metadata["uri"] == tiny_qwen3 and student.metadata["model_uri"] == tiny_qwen3
    assert student.metadata["accuracy"] == metrics.metadata["accuracy"]
    canonical = json.dumps(manifest["result"]["protocol"], sort_keys=True, separators=(",", ":"))
    assert student.metadata["protocol_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert "mlflow_run" not in student.metadata  # untracked


def test_problem_without_reference_is_refused(tiny_qwen3, tmp_path):
    problems = str(tmp_path / "p.jsonl")
    write_jsonl(problems, [Problem(id="ok", problem="1+1?", answer="2"), Problem(id="nope", problem="2+2?")])
    with pytest.raises(RecordError, match=r"1 problem\(s\) have no reference answer \(nope\)"):
        run(_config(tiny_qwen3, problems, str(tmp_path / "out")))
    assert not os.path.exists(tmp_path / "out" / MARKER)


@pytest.mark.unit
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


# --- benchmarks, protocol, comparison, report -------------------------------------------------

SAMPLE_BENCHMARKS = ["aime2024", "math500", "gpqa_diamond", "livecodebench"]


SAMPLES = os.path.join(
    os.path.dirname(__import__("distilflow.components.evaluate", fromlist=["x"]).__file__), "samples"
)


def file_sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def canonical_rows_sha256(path: str) -> str:
    """sha256 over the file's rows, each as JSON with sorted keys (UTF-8) and a newline: the protocol's
    problems_sha256 as its documentation defines it, computed independently of the stage."""
    import hashlib

    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    blob = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def test_problems_hash_is_the_datas_not_the_files_format(tmp_path):
    """A parquet mirror of a benchmark's rows gets the same problems_sha256 as the JSONL (comparable
    protocols) and its own data_file_sha256 (the bytes read); one changed row changes the hash."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distilflow.components.evaluate.benchmarks import load_benchmark
    from distilflow.components.evaluate.config import BenchmarkConfig
    from distilflow.components.evaluate.run import protocol

    jsonl = os.path.join(SAMPLES, "math500.jsonl")
    with open(jsonl, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    mirror = str(tmp_path / "math500.parquet")
    pq.write_table(pa.Table.from_pylist(rows), mirror)
    changed = str(tmp_path / "math500.jsonl")
    with open(changed, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row | ({"answer": "0"} if i == 1 else {})) + "\n")
    config = EvaluateConfig.from_dict({"output_uri": str(tmp_path / "o"), "benchmarks": ["math500"]})
    protos = {
        source: protocol(config, load_benchmark(BenchmarkConfig(name="math500", source=source), config))
        for source in ("sample", mirror, changed)
    }
    assert (
        protos["sample"]["problems_sha256"]
        == protos[mirror]["problems_sha256"]
        == canonical_rows_sha256(jsonl)
    )
    assert protos[mirror]["data_file_sha256"] == file_sha256(mirror) != file_sha256(jsonl)
    assert (
        protos[changed]["problems_sha256"] == canonical_rows_sha256(changed) != canonical_rows_sha256(jsonl)
    )


@pytest.mark.unit
def test_the_stage_source_applies_to_benchmarks_without_their_own(tmp_path):
    """evaluate.source: sample, or a folder of mirrors (<name>.parquet, else <name>.jsonl); a benchmark
    that names its own source keeps it."""
    from distilflow.components.evaluate.benchmarks import benchmark_configs

    (tmp_path / "math500.parquet").write_bytes(b"")
    base = {
        "output_uri": "/o",
        "benchmarks": ["math500", "aime2024", {"name": "gpqa_diamond", "source": "hub"}],
    }
    folder = EvaluateConfig.from_dict(base | {"source": str(tmp_path)})
    assert [b.source for b in benchmark_configs(folder)] == [
        str(tmp_path / "math500.parquet"),
        str(tmp_path / "aime2024.jsonl"),
        "hub",
    ]
    sample = EvaluateConfig.from_dict(base | {"source": "sample", "problems_uri": "/p.jsonl"})
    assert [(b.name, b.source) for b in benchmark_configs(sample)] == [
        ("jsonl", "/p.jsonl"), ("math500", "sample"), ("aime2024", "sample"), ("gpqa_diamond", "hub"),
    ]  # fmt: skip
    assert [b.source for b in benchmark_configs(EvaluateConfig.from_dict(base))] == ["hub"] * 3


def _content_sha(folder: str) -> str:
    import hashlib

    lines = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                lines.append(f"{os.path.relpath(full, folder)}:{hashlib.sha256(f.read()).hexdigest()}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def test_tiny_model_end_to_end_on_math_and_code_samples(tiny_qwen3, tmp_path):
    """A real (tiny, random) model through generation, extraction, the sandbox path and the result files."""
    from distilflow.components.evaluate.benchmarks import CODE_PROMPT
    from distilflow.components.evaluate.config import DEFAULT_PROMPT

    out = str(tmp_path / "evaluate")
    cfg = EvaluateConfig.from_dict(
        {
            "output_uri": out,
            "model": tiny_qwen3,
            "model_name": "tiny",
            "benchmarks": [
                {"name": "math500", "source": "sample", "max_problems": 3},
                {"name": "livecodebench", "source": "sample"},
            ],
            "samples": 2,
            "pass_k": [1],
            "temperature": 1.0,
            "top_p": 0.9,
            "max_new_tokens": 12,
            "seed": 7,
            "enable_thinking": False,
            "system_prompt": "Be brief.",
            "batch_size": 4,
        }
    )
    result = run(cfg)
    rows = _rows(result.results_uri)
    assert len(rows) == (3 + 3) * 2
    assert {r["benchmark"] for r in rows} == {"math500", "livecodebench"} and {r["model"] for r in rows} == {
        "tiny"
    }
    code_rows = [r for r in rows if r["benchmark"] == "livecodebench"]
    # Random weights write no fenced code: each answer is a failed test run, not a crash.
    assert all(r["domain"] == "code" and r["tests"]["n_tests"] == 3 and not r["correct"] for r in code_rows)
    assert all(0 < r["tokens"] <= 12 for r in rows)

    metrics = json.loads(_read(out, "metrics.json"))
    identity = metrics["model"]
    assert identity["uri"] == tiny_qwen3 and identity["content_sha256"] == _content_sha(tiny_qwen3)
    assert identity["chat_template_sha256"] and identity["enable_thinking"] is False
    by_bench = {r["benchmark"]: r for r in metrics["runs"]}
    for name, template in (("math500", DEFAULT_PROMPT), ("livecodebench", CODE_PROMPT)):
        proto = by_bench[name]["protocol"]
        assert proto["samples"] == 2 and proto["pass_k"] == [1, 2]
        assert proto["temperature"] == 1.0 and proto["top_p"] == 0.9 and proto["max_new_tokens"] == 12
        assert (
            proto["seed"] == 7 and proto["enable_thinking"] is False and proto["system_prompt"] == "Be brief."
        )
        assert proto["prompt_template"] == template and proto["data_source"] == "sample"
        assert (
            identity["chat_template_sha256"] in proto["chat_template"] and len(proto["problems_sha256"]) == 64
        )
        m = by_bench[name]["metrics"]
        assert set(m["pass_k"]) == {"1", "2"} and m["n_answers"] == len(
            [r for r in rows if r["benchmark"] == name]
        )
    assert by_bench["livecodebench"]["protocol"]["sandbox"]["timeout_s"] == cfg.code_timeout_s
    assert by_bench["math500"]["protocol"]["checker"] == "math: math-verify"
    # the data's identity, computed here with hashlib from the shipped files themselves
    for name in ("math500", "livecodebench"):
        path = os.path.join(SAMPLES, f"{name}.jsonl")
        proto = by_bench[name]["protocol"]
        assert proto["data_uri"] == path and proto["data_file_sha256"] == file_sha256(path)
        assert proto["problems_sha256"] == canonical_rows_sha256(path)  # all rows, before max_problems
    # One self-contained score file per model and benchmark: protocol and identity next to the numbers.
    score = json.loads(_read(out, "scores", "tiny", "livecodebench.json"))
    assert score["protocol"] == by_bench["livecodebench"]["protocol"] and score["model"] == identity
    assert "accuracy_per_1k_tokens" in score["metrics"] and "truncation_rate" in score["metrics"]


class ScriptedTeacher:
    """Answers the shipped samples right ('good') or wrong ('bad'); thinking on adds a long think block."""

    SOLUTIONS = {
        "sample-lcb-1": "a, b = map(int, input().split())\nprint(a + b)",
        "sample-lcb-2": "s = input().strip()\nprint(sum(c in 'aeiou' for c in s))",
        "sample-lcb-3": "class Solution:\n    def maxSum(self, nums: List[int], k: int) -> int:\n"
        "        return sum(sorted(nums)[-k:])",
    }
    HOSTILE = {
        "sample-lcb-1": "print(0)",
        "sample-lcb-2": "import os\nwhile True:\n    os.fork()",
        "sample-lcb-3": "import os\nprint(open('/etc/hostname').read())",
    }

    def __init__(self, config, items):
        self.config, self.items = config, items
        self.name = config.name
        self.thinking = (config.chat_template_kwargs or {}).get("enable_thinking")

    def _reply(self, item) -> str:
        good = self.config.model == "good"
        if item.domain == "code":
            code = (self.SOLUTIONS if good else self.HOSTILE)[item.id]
            return f"Here it is.\n```python\n{code}\n```"
        if item.domain == "multiple_choice":
            letter = item.answer if good else "ABCD"[("ABCD".index(item.answer) + 1) % 4]
            return f"Reasoning.\nAnswer: {letter}"
        return f"So the answer is \\boxed{{{item.answer if good else '-1'}}}."

    def generate(self, chats, n=1):
        from distilflow.teachers.protocol import Completion

        out = []
        for chat in chats:
            item = next(i for i in self.items if i.problem in chat[-1]["content"])
            think = "<think>" + "hmm " * 40 + "</think>" if self.thinking else ""
            reply = think + self._reply(item)
            reasoning, content = (think[7:-8], reply[len(think) :]) if think else ("", reply)
            out.append([Completion(reasoning, content, len(reply.split()) + 5, "stop") for _ in range(n)])
        return out

    def close(self):
        pass


def _sample_items():
    from distilflow.components.evaluate.benchmarks import load_benchmark
    from distilflow.components.evaluate.config import BenchmarkConfig

    probe = EvaluateConfig.from_dict({"output_uri": "unused", "benchmarks": SAMPLE_BENCHMARKS})
    return [
        i
        for n in SAMPLE_BENCHMARKS
        for i in load_benchmark(BenchmarkConfig(name=n, source="sample"), probe).items
    ]


def test_several_models_compared_on_four_benchmarks_with_thinking_on_and_off(tmp_path, monkeypatch):
    """Two models x thinking on/off x four benchmarks in one run: checks, comparison table, report."""
    import distilflow.teachers as teacher_mod
    from tests.browser import render_dom

    items = _sample_items()
    monkeypatch.setattr(teacher_mod, "make_teacher", lambda c: ScriptedTeacher(c, items))
    out = str(tmp_path / "evaluate")
    endpoint = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    cfg = EvaluateConfig.from_dict(
        {
            "output_uri": out,
            "models": [
                {"name": "good", "model": "good", **endpoint},
                {"name": "bad", "model": "bad", **endpoint},
            ],
            "benchmarks": [{"name": n, "source": "sample"} for n in SAMPLE_BENCHMARKS],
            "thinking_modes": [True, False],
            "samples": 2,
            "code_timeout_s": 3,
        }
    )
    result = run(cfg)
    table = {(r["model"], r["benchmark"]): r for r in result.runs}
    assert len(table) == 2 * 2 * 4
    for (model, bench), r in table.items():
        expected = 1.0 if model.startswith("good") else 0.0
        assert r["accuracy"] == expected and r["pass_at_k"] == expected, (model, bench)
    on, off = table[("good (thinking on)", "math500")], table[("good (thinking off)", "math500")]
    assert (
        on["mean_tokens"] > off["mean_tokens"]
        and on["accuracy_per_1k_tokens"] < off["accuracy_per_1k_tokens"]
    )

    rows = _rows(result.results_uri)
    hostile = [r for r in rows if r["model"].startswith("bad") and r["problem_id"] == "sample-lcb-2"]
    assert hostile and all(r["tests"]["first_failure"]["status"] == "blocked" for r in hostile)
    gpqa = [r for r in rows if r["benchmark"] == "gpqa_diamond"]
    assert {r["reference"] for r in gpqa} <= set("ABCD")

    metrics = json.loads(_read(out, "metrics.json"))
    assert len(metrics["comparison"]) == 16
    protos = {(r["model_name"], r["benchmark"]): r["protocol"] for r in metrics["runs"]}
    assert protos[("good (thinking off)", "aime2024")]["enable_thinking"] is False
    assert protos[("good (thinking on)", "aime2024")]["enable_thinking"] is True
    assert protos[("good (thinking on)", "gpqa_diamond")]["data_shuffle_choices"] is True
    assert metrics["runs"][0]["model"]["uri"] == "http://127.0.0.1:9/v1"
    assert _read(out, "comparison.csv").count("\n") == 17
    assert "| good (thinking on) | livecodebench | 1.0000 |" in _read(out, "comparison.md")

    dom = render_dom(os.path.join(out, "report.html"))
    assert dom.count("<circle") == 16
    comparison = dom.split('class="comparison"', 1)[1].split("</table>", 1)[0]
    assert comparison.count("<tr>") == 1 + 16
    difficulty = dom.split('class="difficulty"', 1)[1].split("</table>", 1)[0]
    assert "level 5" in difficulty and "problems 1-5" in difficulty and "hard" in difficulty
    # report_failures (3) failed answers per bad run: 2 thinking modes x 4 benchmarks; none for 'good'.
    assert dom.count('class="failure"') == 2 * 4 * cfg.report_failures
    assert "blocked" in dom  # a sample failure of the hostile code shows its test status


@pytest.mark.unit
def test_benchmark_adapters_read_the_hub_formats(tmp_path):
    from distilflow.components.evaluate.benchmarks import load_benchmark, sample_path
    from distilflow.components.evaluate.config import BenchmarkConfig

    def load(name: str, seed: int = 0):
        cfg = EvaluateConfig.from_dict({"output_uri": "unused", "benchmarks": [name], "seed": seed})
        return load_benchmark(BenchmarkConfig(name=name, source="sample"), cfg)

    aime = load("aime2024")
    assert aime.samples == 8 and aime.items[1].answer == "025" and aime.items[0].difficulty == "problems 1-5"
    math = load("math500")
    assert math.items[-1].answer == "[2,5)" and math.items[-1].difficulty == "level 5"

    gpqa0, gpqa0b, gpqa1 = load("gpqa_diamond", 0), load("gpqa_diamond", 0), load("gpqa_diamond", 1)
    assert [i.problem for i in gpqa0.items] == [i.problem for i in gpqa0b.items]  # seeded
    assert [i.problem for i in gpqa0.items] != [i.problem for i in gpqa1.items]  # the seed matters
    assert {i.answer for i in gpqa0.items + gpqa1.items} != {"A"}  # the correct option moves
    rows = _rows(sample_path("gpqa_diamond"))
    for item, row in zip(gpqa0.items, rows, strict=True):
        assert item.meta["choices"]["ABCD".index(item.answer)] == row["Correct Answer"]
        assert item.domain == "multiple_choice" and f"{item.answer}) {row['Correct Answer']}" in item.problem

    lcb = load("livecodebench")
    first, third = lcb.items[0], lcb.items[2]
    assert len(first.tests) == 3 and {t.kind for t in first.tests} == {"stdin"}  # private tests decoded
    assert third.func_name == "maxSum" and {t.kind for t in third.tests} == {"call"}
    assert "class Solution" in third.problem and first.difficulty == "easy"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "problem": "1+1?", "answer": "2"}\n{"id": "b"}\n')
    cfg = EvaluateConfig.from_dict({"output_uri": "unused", "problems_uri": str(bad)})
    with pytest.raises(RecordError, match="row 2"):
        load_benchmark(BenchmarkConfig(name="jsonl", source=str(bad)), cfg)


def test_hub_loading_uses_the_real_dataset_ids(monkeypatch):
    """Production loads from the hub; here datasets.load_dataset is replaced to see what it is asked."""
    import datasets

    from distilflow.components.evaluate.benchmarks import load_benchmark, sample_path

    calls = []

    def fake_load(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        bench = {"HuggingFaceH4/aime_2024": "aime2024", "HuggingFaceH4/MATH-500": "math500"}.get(path)
        bench = bench or ("gpqa_diamond" if path == "Idavidrein/gpqa" else "livecodebench")
        return _rows(sample_path(bench))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = EvaluateConfig.from_dict({"output_uri": "unused", "benchmarks": SAMPLE_BENCHMARKS})
    loaded = [load_benchmark(b, cfg) for b in cfg.benchmarks]
    assert [(c[0], c[1], c[2].get("split")) for c in calls] == [
        ("HuggingFaceH4/aime_2024", None, "train"),
        ("HuggingFaceH4/MATH-500", None, "test"),
        ("Idavidrein/gpqa", "gpqa_diamond", "train"),
        ("json", None, "train"),
    ]
    assert calls[3][2]["data_files"] == [
        "hf://datasets/livecodebench/code_generation_lite@main/test.jsonl",
        "hf://datasets/livecodebench/code_generation_lite@main/test2.jsonl",
    ]
    assert (
        loaded[3].source["version"] == "release_v2"
        and loaded[0].source["hub_id"] == "HuggingFaceH4/aime_2024"
    )


@pytest.mark.unit
def test_pass_at_k_is_the_unbiased_estimator():
    from math import comb

    from distilflow.components.evaluate.metrics import pass_at_k

    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25) and pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


@pytest.mark.unit
def test_config_defaults_follow_the_reports_and_stay_backward_compatible(tmp_path):
    from distilflow.components.evaluate.benchmarks import effective_samples

    cfg = EvaluateConfig.from_dict({"output_uri": str(tmp_path), "benchmarks": ["aime2024", "math500"]})
    assert cfg.temperature == 0.6 and cfg.top_p == 0.95 and cfg.max_new_tokens == 32768
    assert [effective_samples(b, cfg) for b in cfg.benchmarks] == [8, 1]
    greedy = cfg.model_copy(update={"temperature": 0.0})
    assert [effective_samples(b, greedy) for b in cfg.benchmarks] == [1, 1]
    # The quickstart's section (problems_uri, samples, temperature, max_new_tokens) still loads.
    legacy = EvaluateConfig.from_dict(
        {
            "output_uri": str(tmp_path),
            "problems_uri": "p.jsonl",
            "samples": 1,
            "temperature": 0.0,
            "max_new_tokens": 48,
        }
    )
    assert legacy.benchmarks == [] and legacy.samples == 1
    with pytest.raises(ConfigError, match="problems_uri"):
        EvaluateConfig.from_dict({"output_uri": str(tmp_path)})
    with pytest.raises(ConfigError, match="needs source"):
        EvaluateConfig.from_dict({"output_uri": str(tmp_path), "benchmarks": ["jsonl"]})


@pytest.mark.unit
def test_vllm_engine_settings_reach_each_models_teacher():
    """The wired model's vLLM settings and each listed model's own reach the teacher that runs it."""
    config = EvaluateConfig.from_dict(
        {
            "output_uri": "out",
            "model": "m",
            "backend": "vllm",
            "problems_uri": "p.jsonl",
            "max_model_len": 4096,
            "vllm_engine_args": {"enforce_eager": True},
            "models": [
                {"name": "t", "model": "t", "backend": "vllm", "vllm_engine_args": {"dtype": "float32"}}
            ],
            "model_hash": "sizes",
        }
    )
    wired = teacher_config(config)
    assert (wired.backend, wired.max_model_len, wired.vllm_engine_args) == (
        "vllm",
        4096,
        {"enforce_eager": True},
    )
    other = teacher_config(config, config.models[0])
    assert other.vllm_engine_args == {"dtype": "float32"} and other.max_model_len is None
