"""The ``evaluate`` stage: accuracy and tokens spent by one or more models under a pinned protocol.

For every model (the wired one, then ``models``; once per ``thinking_modes`` entry if set) and
every benchmark (``benchmarks``, plus ``problems_uri`` as a JSONL benchmark), it samples
``samples`` answers per problem through the teacher contract (transformers in-process, vLLM
offline, or an OpenAI-compatible endpoint), checks each answer (thinking stripped; math-verify for
math, the final letter for multiple choice, the tests in ``distilflow.sandbox`` for code) and
reports avg@k accuracy, unbiased pass@k, token efficiency (mean/median output tokens overall and
for correct answers, accuracy per 1,000 tokens, truncation rate) and a per-difficulty breakdown.
The protocol (data hash, sampling, seed, prompt, chat template, thinking mode, checker, sandbox)
and each model's identity (URI and content hash) are written next to every score, so two numbers
are only compared when they measured the same thing.

It does not serve the model (that is ``deploy``) or judge reasoning quality (that is ``curate``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from distilflow import answers
from distilflow import uri as uris
from distilflow.components.evaluate import registry, report
from distilflow.components.evaluate.benchmarks import (
    CODE_PROMPT,
    LCB_ANSWER,
    LCB_FORMAT_STDIN,
    Benchmark,
    Item,
    benchmark_configs,
    load_benchmark,
)
from distilflow.components.evaluate.config import EvaluateConfig, ModelSpec
from distilflow.components.evaluate.metrics import summarise
from distilflow.errors import ConfigError
from distilflow.outputs import COUNT, METRIC, StageOutput
from distilflow.progress import Progress
from distilflow.records import write_jsonl

STAGE = "evaluate"
# Imports LiveCodeBench puts before every program (LeetCode signatures use List, Optional, ...).
CODE_PRELUDE = "".join(
    f"from {m} import *\nimport {m}\n"
    for m in ("typing", "collections", "heapq", "bisect", "math", "itertools", "functools", "string", "re")
)
RESULTS = "results.jsonl"
METRICS = "metrics.json"
COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
# Rows of the chunks finished so far and the key they belong to; a rerun resumes from them.
PARTIAL = "results.partial.jsonl"
PARTIAL_KEY = "results.partial.key"


class EvaluateResult(BaseModel):
    """What ``evaluate`` measured and where it wrote it (headline: the first model on the first benchmark)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    accuracy: float = Field(
        description="avg@k: mean correctness over every sampled answer", json_schema_extra=METRIC
    )
    pass_at_k: float = Field(
        description="Unbiased pass@k with k = samples per problem", json_schema_extra=METRIC
    )
    mean_tokens: float = Field(description="Mean output tokens per answer", json_schema_extra=METRIC)
    truncated: float = Field(
        0,
        description="Fraction of answers that hit the token limit (the headline run)",
        json_schema_extra=METRIC,
    )
    n_problems: int = Field(description="Problems evaluated")
    samples: int = Field(description="Answers per problem (k)")
    problems: int = Field(0, description="Problems of every benchmark", json_schema_extra=COUNT)
    answers: int = Field(0, description="Answers generated and checked, every model", json_schema_extra=COUNT)
    protocol: dict[str, Any] = Field(
        description="How the numbers were produced (prompt, sampling, checker, data)"
    )
    model_id: dict[str, Any] = Field(description="The model's URI and content hash")
    runs: list[dict[str, Any]] = Field(
        default_factory=list, description="Every (model, benchmark): identity, protocol and metrics"
    )
    results_uri: str = Field(description="JSONL with one row per model, benchmark, problem and sample")
    metrics_uri: str = Field(description="metrics.json")
    comparison_uri: str = Field("", description="Comparison table (Markdown)")
    report_md: str = Field(description="Markdown report")
    report_html: str = Field(description="HTML report")
    protocol_sha256: str = Field(
        "",
        description="sha256 of the headline run's protocol (canonical JSON): equal hashes, same measurement",
    )
    tracking_run: str | None = Field(None, description="The MLflow run the scores went to (tracking: mlflow)")
    registered_model: str | None = Field(
        None, description="The MLflow registered model (registry.model_name)"
    )
    registered_version: str | None = Field(None, description="The model version registered for this model")


@dataclass
class Entry:
    """One model under one thinking mode: what is scored, and how it generates."""

    name: str
    spec: ModelSpec
    enable_thinking: bool | None
    identity: dict[str, Any]


def render_prompt(template: str, item: Item) -> str:
    return template.replace("{{problem}}", item.problem)


def item_template(bench: Benchmark, item: Item, config: EvaluateConfig) -> str:
    """The benchmark's template; code problems of a JSONL benchmark get the code instruction."""
    if bench.kind == "jsonl" and item.domain == "code":
        return CODE_PROMPT.replace(
            "{{problem}}", "### Question:\n{{problem}}\n\n" + LCB_FORMAT_STDIN + LCB_ANSWER
        )
    return bench.prompt_template


def build_chat(config: EvaluateConfig, problem: Any, template: str | None = None) -> list[dict[str, str]]:
    """The chat one problem is asked as (system prompt, if any, then the rendered user message)."""
    chat = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    text = (template or config.prompt_template).replace("{{problem}}", problem.problem)
    return chat + [{"role": "user", "content": text}]


def wired_spec(config: EvaluateConfig) -> ModelSpec | None:
    if not config.model:
        return None
    return ModelSpec(
        name=config.model_name or config.model.rstrip("/").rsplit("/", 1)[-1] or "model",
        model=config.model,
        backend=config.backend,
        gguf_file=config.gguf_file,
        enable_thinking=config.enable_thinking,
        device=config.device,
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_model_len=config.max_model_len,
        vllm_engine_args=config.vllm_engine_args,
    )


def teacher_config(config: EvaluateConfig, spec: ModelSpec | None = None, enable_thinking: Any = "spec"):
    """The generation settings the protocol pins, for one model."""
    from distilflow.teachers.config import TeacherConfig

    spec = spec or wired_spec(config)
    if spec is None:
        raise ConfigError("evaluate: no model to evaluate; set model or models")
    thinking = spec.enable_thinking if enable_thinking == "spec" else enable_thinking
    if thinking is None and enable_thinking == "spec":
        thinking = config.enable_thinking
    kwargs = {"enable_thinking": thinking} if thinking is not None else None
    return TeacherConfig(
        backend=spec.backend,
        model=spec.model,
        name=spec.name,
        base_url=spec.base_url,
        api_key_env=spec.api_key_env,
        gguf_file=spec.gguf_file,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        batch_size=config.batch_size,
        device=spec.device,
        chat_template_kwargs=kwargs,
        tensor_parallel_size=spec.tensor_parallel_size,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        max_model_len=spec.max_model_len,
        vllm_engine_args=spec.vllm_engine_args,
        concurrency=spec.concurrency,
        timeout_s=spec.timeout_s,
    )


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _chat_template_sha(path: str) -> str | None:
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.exists(jinja):
        return _file_sha256(jinja)[:16]
    cfg = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
        if template:
            return hashlib.sha256(json.dumps(template).encode()).hexdigest()[:16]
    return None


def model_identity(model: str, gguf_file: str | None = None, how: str = "content") -> dict[str, Any]:
    """The model's URI plus a hash of its files: every byte (``content``) or names and sizes (``sizes``).

    ``files_sha256`` (names and sizes) is kept for reports made before content hashes.
    """
    from distilflow.models import resolve_model

    path = resolve_model(model, gguf_file)
    entries, content = [], []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            entries.append(f"{rel}:{os.path.getsize(full)}")
            if how == "content":
                content.append(f"{rel}:{_file_sha256(full)}")
    identity: dict[str, Any] = {
        "uri": model,
        "files_sha256": hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16],
        "hash": how,
        "chat_template_sha256": _chat_template_sha(path),
    }
    if how == "content":
        identity["content_sha256"] = hashlib.sha256("\n".join(sorted(content)).encode()).hexdigest()
    if gguf_file:
        identity["gguf_file"] = gguf_file
    return identity


def _identity(spec: ModelSpec, how: str) -> dict[str, Any]:
    if spec.backend == "openai":
        # Nothing to hash from here: the endpoint and the name it serves are the identity.
        return {"uri": spec.base_url, "served_model": spec.model, "hash": "none (endpoint)"}
    return model_identity(spec.model, spec.gguf_file, how)


def build_entries(config: EvaluateConfig) -> list[Entry]:
    specs = [s for s in [wired_spec(config), *config.models] if s is not None]
    if not specs:
        raise ConfigError("evaluate: no model to evaluate; set model (wired by the pipeline) or models")
    entries = []
    for spec in specs:
        identity = {"name": spec.name, "backend": spec.backend, **_identity(spec, config.model_hash)}
        default = spec.enable_thinking if spec.enable_thinking is not None else config.enable_thinking
        modes = config.thinking_modes if config.thinking_modes else [default]
        for mode in modes:
            name = (
                spec.name
                if not config.thinking_modes
                else f"{spec.name} (thinking {'on' if mode else 'off'})"
            )
            entries.append(Entry(name, spec, mode, {**identity, "enable_thinking": mode}))
    return entries


def protocol(config: EvaluateConfig, bench: Benchmark, entry: Entry | None = None) -> dict[str, Any]:
    """Everything that changes the numbers, so results are only compared when these match."""
    from distilflow import sandbox

    checker = {"math": answers.checker(), "multiple_choice": "final letter", "code": "sandboxed tests"}
    domains = sorted({i.domain for i in bench.items})
    proto: dict[str, Any] = {
        "benchmark": bench.name,
        "benchmark_kind": bench.kind,
        **{f"data_{k}": v for k, v in bench.source.items() if v is not None},
        "problems_sha256": bench.sha256,
        "n_problems": len(bench.items),
        "samples": bench.samples,
        "pass_k": sorted({k for k in config.pass_k if k <= bench.samples} | {bench.samples}),
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "chunk_size": config.chunk_size,
        "enable_thinking": entry.enable_thinking if entry else config.enable_thinking,
        "chat_template": "the model's tokenizer chat template"
        + (
            f" (sha256 {entry.identity.get('chat_template_sha256')})"
            if entry and entry.identity.get("chat_template_sha256")
            else ""
        ),
        "system_prompt": config.system_prompt,
        "prompt_template": bench.prompt_template,
        "answer_extraction": "thinking block stripped; last \\boxed{} / final letter / last fenced code block",
        "checker": ", ".join(f"{d}: {checker.get(d, 'normalised string')}" for d in domains),
        "backend": entry.spec.backend if entry else config.backend,
    }
    if "code" in domains:
        proto["sandbox"] = {
            **sandbox.describe(),
            "timeout_s": config.code_timeout_s,
            "memory_mb": config.code_memory_mb,
            "max_tests": config.code_max_tests,
        }
    return proto


def _limits(config: EvaluateConfig):
    from distilflow.sandbox import Limits

    return Limits(wall_s=config.code_timeout_s, cpu_s=config.code_timeout_s, memory_mb=config.code_memory_mb)


def score(
    item: Item, sample: int, completion: Any, config: EvaluateConfig, code_report: dict | None = None
) -> dict[str, Any]:
    """One results row: the answer after the thinking, what it states, and whether that is right."""
    row = {
        "problem_id": item.id,
        "sample": sample,
        "domain": item.domain,
        "difficulty": item.difficulty,
        "reference": item.answer or "",
        "reasoning": completion.reasoning,
        "response": completion.content,
        "tokens": completion.tokens,
        "finish_reason": completion.finish_reason,
    }
    if item.domain == "code":
        code = answers.extract_code(completion.content)
        row["predicted"] = code
        row["tests"] = code_report
        row["correct"] = bool(code_report and code_report.get("passed"))
    else:
        row["predicted"] = answers.extract_answer(completion.content, item.domain)
        row["correct"] = answers.is_correct(completion.content, item.answer or "", item.domain)
    return row


def grade_code(item: Item, content: str, config: EvaluateConfig) -> dict[str, Any]:
    from distilflow.sandbox import run_tests

    code = answers.extract_code(content)
    tests = item.tests[: config.code_max_tests] if config.code_max_tests else item.tests
    if not code:
        return {
            "passed": False,
            "n_tests": len(tests),
            "n_run": 0,
            "n_passed": 0,
            "first_failure": {"status": "no-code"},
        }
    result = run_tests(code, tests, _limits(config), func_name=item.func_name, prelude=CODE_PRELUDE)
    return result.to_dict()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _resume(out: StageOutput, key: str) -> list[dict[str, Any]]:
    """Rows of an interrupted run with the same config, data and models; else nothing."""
    if not (uris.exists(out.path(PARTIAL_KEY)) and uris.read_text(out.path(PARTIAL_KEY)).strip() == key):
        return []
    if not uris.exists(out.path(PARTIAL)):
        return []
    rows = [json.loads(line) for line in uris.read_text(out.path(PARTIAL)).splitlines() if line.strip()]
    print(f"[{STAGE}] resuming: {len(rows)} answers already done", flush=True)
    return rows


def _generate_and_score(
    teacher: Any,
    entry: Entry,
    bench: Benchmark,
    chunk: list[Item],
    config: EvaluateConfig,
    pool: ThreadPoolExecutor,
) -> list[dict[str, Any]]:
    chats = [build_chat(config, item, item_template(bench, item, config)) for item in chunk]
    completions = teacher.generate(chats, n=bench.samples)
    jobs = {}
    for item, samples in zip(chunk, completions, strict=True):
        if item.domain == "code":
            for i, c in enumerate(samples):
                jobs[(item.id, i)] = pool.submit(grade_code, item, c.content, config)
    rows = []
    for item, samples in zip(chunk, completions, strict=True):
        for i, c in enumerate(samples):
            report_ = jobs[(item.id, i)].result() if (item.id, i) in jobs else None
            rows.append({"model": entry.name, "benchmark": bench.name, **score(item, i, c, config, report_)})
    return rows


def run(config: EvaluateConfig) -> EvaluateResult:
    """Generate ``samples`` answers per problem for every model and benchmark, check them, and write
    results, per-score protocol files, metrics, a comparison table and reports.

    Problems are answered in chunks (``chunk_size``; by default ``batch_size`` for transformers and
    512 for vLLM and endpoints, whose schedulers batch every request of a call); after each chunk
    the rows so far are saved, so an interrupted run resumes where it stopped. Each chunk is seeded
    with ``seed``, which keeps a resumed run's answers identical to an uninterrupted one.
    """
    out = StageOutput(config.output_uri, STAGE)
    done = out.reusable(config)
    if done:
        return EvaluateResult.model_validate(done["result"])
    benches = [load_benchmark(b, config) for b in benchmark_configs(config)]
    entries = build_entries(config)
    out.begin(config)
    rows, generation_s = answer_all(config, out, benches, entries)
    runs = score_runs(config, benches, entries, rows)
    score_files = write_outputs(out, runs, rows, benches, generation_s)
    result = result_of(out, runs, score_files, benches, rows)
    registry.hand_off(config, result)  # scores to the experiment, the model to the registry (as asked)
    out.finish(
        result,
        inputs={
            "models": ", ".join(str(e.identity.get("uri")) for e in entries),
            "benchmarks": ", ".join(b.name for b in benches),
            **({"model": config.model} if config.model else {}),
            **({"problems_uri": config.problems_uri} if config.problems_uri else {}),
        },
        outputs={
            "results": RESULTS,
            "metrics": METRICS,
            "comparison": COMPARISON_MD,
            "report_md": REPORT_MD,
            "report_html": REPORT_HTML,
            **score_files,
        },
        metrics=per_run_metrics(result),
    )
    return result


def answer_all(
    config: EvaluateConfig, out: StageOutput, benches: list[Any], entries: list[Entry]
) -> tuple[list[dict[str, Any]], float]:
    """Every answer row (resumed ones first) and the seconds spent generating: each model answers
    each benchmark chunk by chunk, the rows so far saved after every chunk."""
    from distilflow.teachers import make_teacher

    key_parts = [config.fingerprint()] + [b.sha256 for b in benches]
    key_parts += [
        str(e.identity.get("content_sha256") or e.identity.get("files_sha256") or e.identity) for e in entries
    ]
    key = hashlib.sha256(":".join(key_parts).encode()).hexdigest()
    rows = _resume(out, key)
    if not rows:
        # The key goes down before any row, and a stale partial from another config is dropped
        # first, so a kill between two writes never pairs rows with the wrong key or loses the key.
        uris.remove(out.path(PARTIAL))
        uris.write_text(out.path(PARTIAL_KEY), key + "\n")
    finished = {(r["model"], r["benchmark"], r["problem_id"]) for r in rows}
    total = sum(len(b.items) for b in benches) * len(entries)
    progress = Progress(STAGE, "problems", total)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=config.code_workers) as pool:
        for entry in entries:
            teacher = None
            step = config.chunk_size or (config.batch_size if entry.spec.backend == "transformers" else 512)
            for bench in benches:
                for start in range(0, len(bench.items), step):
                    chunk = bench.items[start : start + step]
                    if all((entry.name, bench.name, i.id) in finished for i in chunk):
                        progress.update(len(chunk))
                        continue
                    if teacher is None:
                        teacher = make_teacher(teacher_config(config, entry.spec, entry.enable_thinking))
                    rows.extend(_generate_and_score(teacher, entry, bench, chunk, config, pool))
                    write_jsonl(out.path(PARTIAL), rows)
                    progress.update(len(chunk))
            if teacher is not None:
                teacher.close()
    return rows, round(time.monotonic() - started, 3)


def score_runs(
    config: EvaluateConfig, benches: list[Any], entries: list[Entry], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One run per (model, benchmark): its identity, protocol, metrics and first failures."""
    runs = []
    for entry in entries:
        for bench in benches:
            mine = [r for r in rows if r["model"] == entry.name and r["benchmark"] == bench.name]
            metrics = summarise(mine, len(bench.items), bench.samples, config.pass_k)
            failures = [r for r in mine if not r["correct"]][: config.report_failures]
            runs.append(
                {
                    "model": entry.identity,
                    "model_name": entry.name,
                    "benchmark": bench.name,
                    "protocol": protocol(config, bench, entry),
                    "metrics": metrics,
                    "failures": [report.failure_view(r) for r in failures],
                }
            )
    return runs


def write_outputs(
    out: StageOutput,
    runs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    benches: list[Any],
    generation_s: float,
) -> dict[str, str]:
    """Write the score file of every run, the results, metrics.json, the comparison and the reports;
    drop the partial rows. Returns the score files by ``<model>/<benchmark>``."""
    from distilflow import sandbox

    score_files = {}
    for r in runs:
        name = f"scores/{_slug(r['model_name'])}/{_slug(r['benchmark'])}.json"
        body = {k: r[k] for k in ("model", "benchmark", "protocol", "metrics")}
        uris.write_text(out.path(name), json.dumps(body, indent=2, ensure_ascii=False))
        score_files[f"{r['model_name']}/{r['benchmark']}"] = name
    head = runs[0]
    metrics_doc: dict[str, Any] = {
        **{k: v for k, v in head["metrics"].items() if k != "by_difficulty"},
        "protocol": head["protocol"],
        "model": head["model"],
        "generation_s": generation_s,
        "sandbox": sandbox.describe()
        if any(b.kind == "livecodebench" or any(i.domain == "code" for i in b.items) for b in benches)
        else None,
        "runs": [
            {k: r[k] for k in ("model_name", "model", "benchmark", "protocol", "metrics")} for r in runs
        ],
        "comparison": report.comparison_rows(runs),
    }
    write_jsonl(out.path(RESULTS), rows)
    uris.write_text(out.path(METRICS), json.dumps(metrics_doc, indent=2, ensure_ascii=False))
    uris.write_text(out.path(COMPARISON_MD), report.comparison_markdown(runs))
    uris.write_text(out.path(COMPARISON_CSV), report.comparison_csv(runs))
    uris.write_text(out.path(REPORT_MD), report.render_markdown(runs))
    uris.write_text(out.path(REPORT_HTML), report.render_html(runs))
    uris.remove(out.path(PARTIAL))
    uris.remove(out.path(PARTIAL_KEY))
    for r in runs:
        m = r["metrics"]
        print(
            f"[{STAGE}] {r['model_name']} on {r['benchmark']}: accuracy {m['accuracy']:.4f}, "
            f"pass@{m['samples']} {m['pass_at_k']:.4f}, mean tokens {m['mean_tokens']:.1f} "
            f"over {m['n_problems']} problems x {m['samples']}",
            flush=True,
        )
    return score_files


RUN_METRICS = ("accuracy", "pass_at_k", "mean_tokens", "truncation_rate", "accuracy_per_1k_tokens")
"""The metrics kept for every (model, benchmark) run in the result."""


def result_of(
    out: StageOutput,
    runs: list[dict[str, Any]],
    score_files: dict[str, str],
    benches: list[Any],
    rows: list[dict[str, Any]],
) -> EvaluateResult:
    """The headline (the first model on the first benchmark), every run's metrics and the files."""
    head = runs[0]
    hm = head["metrics"]
    return EvaluateResult(
        accuracy=hm["accuracy"],
        pass_at_k=hm["pass_at_k"],
        mean_tokens=hm["mean_tokens"],
        truncated=hm["truncated"],
        n_problems=hm["n_problems"],
        samples=hm["samples"],
        problems=sum(len(b.items) for b in benches),
        answers=len(rows),
        protocol=head["protocol"],
        model_id=head["model"],
        runs=[
            {
                "model": r["model_name"],
                "benchmark": r["benchmark"],
                "score_file": score_files[f"{r['model_name']}/{r['benchmark']}"],
                **{k: r["metrics"][k] for k in RUN_METRICS},
            }
            for r in runs
        ],
        results_uri=out.path(RESULTS),
        metrics_uri=out.path(METRICS),
        comparison_uri=out.path(COMPARISON_MD),
        report_md=out.path(REPORT_MD),
        report_html=out.path(REPORT_HTML),
        protocol_sha256=registry.protocol_sha256(head["protocol"]),
    )


def per_run_metrics(result: EvaluateResult) -> dict[str, float]:
    """With more than one (model, benchmark) run, each run's metrics as ``<model>/<benchmark>/<metric>``
    besides the headline's."""
    if len(result.runs) <= 1:
        return {}
    return {f"{r['model']}/{r['benchmark']}/{k}": r[k] for r in result.runs for k in RUN_METRICS}
