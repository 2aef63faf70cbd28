"""The ``distill`` stage: a teacher writes chains of thought for every problem.

Reads ``problems_uri`` (records.Problem), asks the teacher ``n`` times per problem and writes
``<output_uri>/traces.jsonl`` (records.Trace: reasoning kept apart from the answer section).
Finished batches are appended to ``traces.partial.jsonl``, so a rerun after a crash asks only
for the problems not yet answered. It does not score, filter or deduplicate traces (``curate``
does), and it keeps no cache of individual calls beyond that part file.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os

from pydantic import BaseModel, Field, ValidationError

from distilflow import uri as uris
from distilflow.components.distill.config import PROMPT_TEMPLATES, DistillConfig
from distilflow.errors import BackendError, RecordError
from distilflow.outputs import StageOutput
from distilflow.progress import Progress
from distilflow.records import Problem, Trace, dumps, read_jsonl, write_jsonl

TRACES = "traces.jsonl"
PARTIAL = "traces.partial.jsonl"
PARTIAL_META = "traces.partial.json"


class DistillResult(BaseModel):
    """What a distill run produced (also stored in its manifest)."""

    traces_uri: str = Field(description="JSONL of records.Trace")
    problems: int = Field(description="Problems answered")
    traces: int = Field(description="Traces written (problems x n)")
    tokens: int = Field(description="Completion tokens the teacher spent on all traces")
    finish_reasons: dict[str, int] = Field(description="How many traces ended with each finish reason")
    teacher: str = Field(description="Name of the teacher recorded in the traces")
    prompt_template: str | None = Field(description="Versioned prompt template used (None: native)")
    resumed: int = Field(0, description="Problems taken from the part file of an interrupted run")


def system_prompt(config: DistillConfig) -> str | None:
    """The rendered system prompt of ``config.prompt`` (None for ``native``)."""
    from distilflow import templates

    ref = PROMPT_TEMPLATES[config.prompt]
    return templates.load(ref).render() if ref else None


def build_chat(problem: Problem, system: str | None) -> list[dict]:
    chat = [{"role": "system", "content": system}] if system else []
    return chat + [{"role": "user", "content": problem.problem}]


def generation_key(config: DistillConfig) -> str:
    """Hash of what shapes the traces (teacher, sampling, prompt, n), not of how fast they come:
    a part file is only resumed by a run that would have written the same rows."""
    teacher = config.teacher.model_dump(
        mode="json",
        include={"backend", "model", "name", "base_url", "gguf_file", "max_new_tokens", "temperature"}
        | {"top_p", "seed", "chat_template_kwargs"},
    )
    blob = json.dumps(
        {"teacher": teacher, "prompt": PROMPT_TEMPLATES[config.prompt], "n": config.n}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_partial(out: StageOutput, key: str, n: int) -> dict[str, list[Trace]]:
    """Traces of an interrupted run with the same generation key, by problem id.

    A torn last line (the crash hit mid-append) is dropped and the file rewritten without it.
    """
    part, meta = out.path(PARTIAL), out.path(PARTIAL_META)
    if not uris.exists(part):
        return {}
    found_key = json.loads(uris.read_text(meta)).get("key") if uris.exists(meta) else None
    if found_key != key:
        print(f"[distill] {part} was written with other teacher/prompt settings; starting over", flush=True)
        uris.remove(part)
        return {}
    lines = [(i, raw) for i, raw in enumerate(uris.read_bytes(part).split(b"\n"), start=1) if raw.strip()]
    traces: list[Trace] = []
    for pos, (lineno, raw) in enumerate(lines):
        try:
            traces.append(Trace.model_validate_json(raw))
        except ValidationError as exc:
            if pos < len(lines) - 1:
                raise RecordError(
                    f"{part}:{lineno}: not a Trace ({exc.errors()[0]['msg']}); delete {part} to start over"
                ) from None
            print(f"[distill] {part}:{lineno}: dropping a torn last line", flush=True)
            uris.write_text(part, dumps(traces))
    by_problem: dict[str, list[Trace]] = collections.defaultdict(list)
    for trace in traces:
        by_problem[trace.problem_id].append(trace)
    # Batches are appended whole, so a problem is either complete or absent; be strict anyway.
    return {pid: rows for pid, rows in by_problem.items() if len(rows) == n}


def append_partial(out: StageOutput, new: list[Trace], everything: list[Trace]) -> None:
    """Append a finished batch: in place on a local disk (fsynced), else by rewriting the object
    (object stores have no append; the part file is small next to the generation cost)."""
    part = out.path(PARTIAL)
    if uris.is_local(part):
        os.makedirs(os.path.dirname(part), exist_ok=True)
        with open(part, "a", encoding="utf-8") as f:
            f.write(dumps(new))
            f.flush()
            os.fsync(f.fileno())
    else:
        uris.write_text(part, dumps(everything))


def run(config: DistillConfig) -> DistillResult:
    """Answer every problem ``n`` times with the teacher and write ``traces.jsonl``.

    Resumes from ``traces.partial.jsonl`` after a crash; a rerun of a finished output with the
    same config returns the stored result without loading the teacher.
    """
    from distilflow.teacher import make_teacher

    out = StageOutput(config.output_uri, "distill")
    manifest = out.reusable(config)
    if manifest is not None:
        print(f"[distill] {out.uri} is complete for this config; nothing to do", flush=True)
        return DistillResult.model_validate(manifest["result"])
    problems = read_jsonl(config.problems_uri, Problem)[: config.limit]
    out.begin(config)
    key, name, n = generation_key(config), config.teacher.display_name, config.n
    done = load_partial(out, key, n)
    done = {p.id: done[p.id] for p in problems if p.id in done}
    uris.write_text(out.path(PARTIAL_META), json.dumps({"key": key}))
    todo = [p for p in problems if p.id not in done]
    print(
        f"[distill] {len(problems)} problems, {len(done)} already answered, {len(todo)} to ask {name} x{n}",
        flush=True,
    )
    if todo:
        system = system_prompt(config)
        everything = [t for rows in done.values() for t in rows]
        progress = Progress("distill", "problems", total=len(todo))
        teacher = make_teacher(config.teacher)
        try:
            for start in range(0, len(todo), config.batch_size):
                batch = todo[start : start + config.batch_size]
                answers = teacher.generate([build_chat(p, system) for p in batch], n=n)
                if len(answers) != len(batch) or any(len(a) != n for a in answers):
                    raise BackendError(
                        f"teacher {name} returned {[len(a) for a in answers]} answers for {len(batch)} problems x {n}"
                    )
                new = [
                    Trace(
                        id=f"{p.id}/{name}/{s}",
                        problem_id=p.id,
                        problem=p.problem,
                        reference=p.answer,
                        domain=p.domain,
                        teacher=name,
                        sample=s,
                        reasoning=c.reasoning,
                        content=c.content,
                        tokens=c.tokens,
                        finish_reason=c.finish_reason,
                    )
                    for p, completions in zip(batch, answers, strict=True)
                    for s, c in enumerate(completions)
                ]
                everything.extend(new)
                append_partial(out, new, everything)
                for p in batch:
                    done[p.id] = [t for t in new if t.problem_id == p.id]
                progress.update(len(batch))
        finally:
            teacher.close()
    traces = [t for p in problems for t in done[p.id]]
    traces_uri = out.path(TRACES)
    write_jsonl(traces_uri, traces)
    reasons = dict(collections.Counter(t.finish_reason for t in traces))
    tokens = sum(t.tokens for t in traces)
    if reasons.get("length"):
        print(
            f"[distill] {reasons['length']}/{len(traces)} traces hit max_new_tokens; raise teacher.max_new_tokens",
            flush=True,
        )
    result = DistillResult(
        traces_uri=traces_uri,
        problems=len(problems),
        traces=len(traces),
        tokens=tokens,
        finish_reasons=reasons,
        teacher=name,
        prompt_template=PROMPT_TEMPLATES[config.prompt],
        resumed=len(problems) - len(todo),
    )
    out.finish(
        result=result.model_dump(),
        inputs={"problems": config.problems_uri, "prompt_template": result.prompt_template or "native"},
        outputs={"traces": traces_uri},
        counts={
            "problems": len(problems),
            "traces": len(traces),
            "tokens": tokens,
            "resumed": result.resumed,
        },
        metrics={"tokens_per_trace": tokens / len(traces) if traces else 0.0},
    )
    uris.remove(out.path(PARTIAL))
    uris.remove(out.path(PARTIAL_META))
    return result
