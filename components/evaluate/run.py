"""The ``evaluate`` stage: accuracy and tokens spent by a model under a recorded protocol.

It samples ``samples`` answers per problem in-process with transformers (the same
``TransformersTeacher`` the other stages use), checks each final answer against the reference
(thinking stripped, math-verify for math, the letter for multiple choice) and reports avg@k
accuracy, pass@k and the mean output tokens. The protocol (prompt, sampling, seed, checker,
problems hash) and the model's identity are written next to the numbers, so two reports can be
compared knowing whether they measured the same thing.

It does not serve the model (that is ``deploy``), judge reasoning quality, or run code benchmarks.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from distilflow import answers
from distilflow import uri as uris
from distilflow.components.evaluate.config import EvaluateConfig
from distilflow.errors import RecordError
from distilflow.outputs import StageOutput
from distilflow.progress import Progress
from distilflow.records import Problem, read_jsonl, write_jsonl

STAGE = "evaluate"
RESULTS = "results.jsonl"
METRICS = "metrics.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
# Rows of the chunks finished so far and the key they belong to; a rerun resumes from them.
PARTIAL = "results.partial.jsonl"
PARTIAL_KEY = "results.partial.key"


class EvaluateResult(BaseModel):
    """What ``evaluate`` measured and where it wrote it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    accuracy: float = Field(description="avg@k: mean correctness over every sampled answer")
    pass_at_k: float = Field(
        description="Fraction of problems with at least one correct answer among k samples"
    )
    mean_tokens: float = Field(description="Mean output tokens per answer")
    n_problems: int = Field(description="Problems evaluated")
    samples: int = Field(description="Answers per problem (k)")
    protocol: dict[str, Any] = Field(
        description="How the numbers were produced (prompt, sampling, checker, data)"
    )
    model_id: dict[str, str] = Field(description="The model's URI and a hash of its file names and sizes")
    results_uri: str = Field(description="JSONL with one row per problem and sample")
    metrics_uri: str = Field(description="metrics.json")
    report_md: str = Field(description="Markdown report")
    report_html: str = Field(description="HTML report")


def render_prompt(config: EvaluateConfig, problem: Problem) -> str:
    return config.prompt_template.replace("{{problem}}", problem.problem)


def build_chat(config: EvaluateConfig, problem: Problem) -> list[dict[str, str]]:
    """The chat one problem is asked as (system prompt, if any, then the rendered user message)."""
    chat = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    return chat + [{"role": "user", "content": render_prompt(config, problem)}]


def teacher_config(config: EvaluateConfig):
    """The in-process generation settings the protocol pins."""
    from distilflow.teacher import TeacherConfig

    kwargs = {"enable_thinking": config.enable_thinking} if config.enable_thinking is not None else None
    return TeacherConfig(
        backend="transformers",
        model=config.model,
        gguf_file=config.gguf_file,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        batch_size=config.batch_size,
        device=config.device,
        chat_template_kwargs=kwargs,
    )


def model_identity(model: str, gguf_file: str | None = None) -> dict[str, str]:
    """The model's URI plus a hash of its files' names and sizes: cheap, and it changes with the weights."""
    from distilflow.models import resolve_model

    path = resolve_model(model, gguf_file)
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            entries.append(f"{os.path.relpath(full, path)}:{os.path.getsize(full)}")
    digest = hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]
    return {"uri": model, "files_sha256": digest}


def load_problems(config: EvaluateConfig) -> tuple[list[Problem], str]:
    """The problems to evaluate and the sha256 of the file they came from."""
    problems = read_jsonl(config.problems_uri, Problem)
    missing = [p.id for p in problems if not p.answer]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise RecordError(
            f"{config.problems_uri}: {len(missing)} problem(s) have no reference answer ({shown}); "
            "evaluate needs an 'answer' on every problem: add them or drop those lines"
        )
    if config.max_problems is not None:
        problems = problems[: config.max_problems]
    return problems, hashlib.sha256(uris.read_bytes(config.problems_uri)).hexdigest()


def protocol(config: EvaluateConfig, n_problems: int, problems_sha256: str) -> dict[str, Any]:
    """Everything that changes the numbers, so reports are only compared when these match."""
    return {
        "problems_uri": config.problems_uri,
        "problems_sha256": problems_sha256,
        "n_problems": n_problems,
        "samples": config.samples,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "enable_thinking": config.enable_thinking,
        "system_prompt": config.system_prompt,
        "prompt_template": config.prompt_template,
        "checker": answers.checker(),
        "backend": "transformers",
    }


def score(problem: Problem, sample: int, completion: Any) -> dict[str, Any]:
    """One results row: the answer after the thinking, what it states, and whether that is right."""
    reference = problem.answer or ""
    return {
        "problem_id": problem.id,
        "sample": sample,
        "domain": problem.domain,
        "reference": reference,
        "reasoning": completion.reasoning,
        "response": completion.content,
        "predicted": answers.extract_answer(completion.content, problem.domain),
        "correct": answers.is_correct(completion.content, reference, problem.domain),
        "tokens": completion.tokens,
        "finish_reason": completion.finish_reason,
    }


def summarise(rows: list[dict[str, Any]], n_problems: int, samples: int) -> dict[str, float]:
    """avg@k accuracy, pass@k, mean tokens and the share of answers cut off by max_new_tokens."""
    by_problem: dict[str, list[bool]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).append(bool(row["correct"]))
    n = max(len(rows), 1)
    return {
        "accuracy": sum(r["correct"] for r in rows) / n,
        "pass_at_k": sum(any(v) for v in by_problem.values()) / max(n_problems, 1),
        "mean_tokens": sum(r["tokens"] for r in rows) / n,
        "truncated": sum(r["finish_reason"] == "length" for r in rows) / n,
        "n_problems": n_problems,
        "samples": samples,
        "n_answers": len(rows),
    }


def _table_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    k = metrics["samples"]
    return [
        (f"accuracy (avg@{k})", f"{metrics['accuracy']:.4f}"),
        (f"pass@{k}", f"{metrics['pass_at_k']:.4f}"),
        ("mean output tokens", f"{metrics['mean_tokens']:.1f}"),
        ("truncated answers", f"{metrics['truncated']:.4f}"),
        ("problems", str(metrics["n_problems"])),
        ("samples per problem", str(k)),
    ]


def render_markdown(metrics: dict[str, Any]) -> str:
    model = metrics["model"]
    lines = ["# Evaluation", "", f"Model: `{model['uri']}` (files sha256 `{model['files_sha256']}`)", ""]
    lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _table_rows(metrics)]
    lines += ["", "## Protocol", "", "| setting | value |", "|---|---|"]
    for key, value in metrics["protocol"].items():
        shown = json.dumps(value, ensure_ascii=False).replace("|", "\\|")
        lines.append(f"| {key} | `{shown}` |")
    return "\n".join(lines) + "\n"


def render_html(metrics: dict[str, Any]) -> str:
    model = metrics["model"]

    def table(rows: list[tuple[str, str]]) -> str:
        cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<table>{cells}</table>"

    proto = [(k, json.dumps(v, ensure_ascii=False)) for k, v in metrics["protocol"].items()]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Evaluation</title>"
        "<style>table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px;"
        "text-align:left;font-family:monospace;white-space:pre-wrap}</style></head><body>"
        "<h1>Evaluation</h1>"
        f"<p>Model: <code>{html.escape(model['uri'])}</code> (files sha256 "
        f"<code>{html.escape(model['files_sha256'])}</code>)</p>"
        f"{table(_table_rows(metrics))}<h2>Protocol</h2>{table(proto)}</body></html>\n"
    )


def _resume(out: StageOutput, key: str) -> list[dict[str, Any]]:
    """Rows of an interrupted run with the same config, problems and model; else nothing."""
    if not (uris.exists(out.path(PARTIAL_KEY)) and uris.read_text(out.path(PARTIAL_KEY)).strip() == key):
        return []
    rows = [json.loads(line) for line in uris.read_text(out.path(PARTIAL)).splitlines() if line.strip()]
    print(f"[{STAGE}] resuming: {len(rows)} answers already done", flush=True)
    return rows


def run(config: EvaluateConfig) -> EvaluateResult:
    """Generate ``samples`` answers per problem, check them, and write results, metrics and reports.

    Problems are answered in chunks of ``batch_size``; after each chunk the rows so far are saved,
    so an interrupted run resumes where it stopped. Each chunk is seeded with ``seed``, which keeps
    a resumed run's answers identical to an uninterrupted one.
    """
    out = StageOutput(config.output_uri, STAGE)
    done = out.reusable(config)
    if done:
        return EvaluateResult.model_validate(done["result"])
    problems, problems_sha = load_problems(config)
    model_id = model_identity(config.model, config.gguf_file)
    proto = protocol(config, len(problems), problems_sha)
    out.begin(config)

    from distilflow.teacher import TransformersTeacher

    key = f"{config.fingerprint()}:{problems_sha}:{model_id['files_sha256']}"
    rows = _resume(out, key)
    finished = {r["problem_id"] for r in rows}
    teacher = TransformersTeacher(teacher_config(config))
    progress = Progress(STAGE, "problems", len(problems))
    started = time.monotonic()
    for start in range(0, len(problems), config.batch_size):
        chunk = problems[start : start + config.batch_size]
        if all(p.id in finished for p in chunk):
            progress.update(len(chunk))
            continue
        completions = teacher.generate([build_chat(config, p) for p in chunk], n=config.samples)
        for problem, samples in zip(chunk, completions, strict=True):
            rows.extend(score(problem, i, c) for i, c in enumerate(samples))
        write_jsonl(out.path(PARTIAL), rows)
        uris.write_text(out.path(PARTIAL_KEY), key + "\n")
        progress.update(len(chunk))
    teacher.close()

    metrics: dict[str, Any] = summarise(rows, len(problems), config.samples)
    metrics.update(protocol=proto, model=model_id, generation_s=round(time.monotonic() - started, 3))
    write_jsonl(out.path(RESULTS), rows)
    uris.write_text(out.path(METRICS), json.dumps(metrics, indent=2))
    uris.write_text(out.path(REPORT_MD), render_markdown(metrics))
    uris.write_text(out.path(REPORT_HTML), render_html(metrics))
    uris.remove(out.path(PARTIAL))
    uris.remove(out.path(PARTIAL_KEY))
    print(
        f"[{STAGE}] accuracy {metrics['accuracy']:.4f}, pass@{config.samples} {metrics['pass_at_k']:.4f}, "
        f"mean tokens {metrics['mean_tokens']:.1f} over {len(problems)} problems x {config.samples}",
        flush=True,
    )
    result = EvaluateResult(
        accuracy=metrics["accuracy"],
        pass_at_k=metrics["pass_at_k"],
        mean_tokens=metrics["mean_tokens"],
        n_problems=len(problems),
        samples=config.samples,
        protocol=proto,
        model_id=model_id,
        results_uri=out.path(RESULTS),
        metrics_uri=out.path(METRICS),
        report_md=out.path(REPORT_MD),
        report_html=out.path(REPORT_HTML),
    )
    out.finish(
        result=result.model_dump(mode="json"),
        inputs={"model": config.model, "problems_uri": config.problems_uri},
        outputs={"results": RESULTS, "metrics": METRICS, "report_md": REPORT_MD, "report_html": REPORT_HTML},
        counts={"problems": len(problems), "answers": len(rows)},
        metrics={k: metrics[k] for k in ("accuracy", "pass_at_k", "mean_tokens", "truncated")},
    )
    return result
