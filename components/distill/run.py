"""The ``distill`` stage: a teacher writes chains of thought for every problem.

Reads ``problems_uri`` (records.Problem) and asks the teacher ``n`` times per problem. An endpoint
teacher keeps ``teacher.concurrency`` requests in flight (budgets, timeouts, retries: see
``distilflow.teachers.endpoint``); an in-process teacher answers ``batch_size`` problems per call.

Nothing is paid for twice. Every answer goes to a content-addressed cache (``distilflow.teachers.cache``,
default ``<output_uri>/cache``) the moment it arrives, and answered traces are written as numbered
shards under ``parts/<generation key>/`` as they complete. After a crash or a kill at any point, a
rerun with the same config takes the shards' rows as done, takes answers the cache holds without a
request, and sends only what was never answered (at most the requests in flight at the kill are
sent again). The result is ``traces.jsonl`` (records.Trace, one per (problem, sample), in problem
order), ``failures.jsonl`` (rows that failed after retries), a Markdown/HTML report and metrics.

With ``logits`` each answer also carries the teacher's top-k log-probabilities at every token
(``distilflow.teachers.logprobs``): asked for in the request (so cached apart from text-only answers),
written as a Parquet part before each traces shard, and assembled into ``logits/`` for exactly the
traces written, with the teachers' vocabulary fingerprint and sampling settings in the manifest
(``components/distill/logits.py``). ``logits.answers_uri`` scores given answers instead of generating.

It does not score, filter or deduplicate traces (``curate`` does).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from distilflow import uri as uris
from distilflow.components.distill import report
from distilflow.components.distill.config import PROMPT_TEMPLATES, DistillConfig, LogitsConfig
from distilflow.components.distill.logits import LogitsSummary
from distilflow.errors import BackendError, DistilflowError, RecordError
from distilflow.outputs import COUNT, METRIC, StageOutput
from distilflow.progress import Progress
from distilflow.records import Problem, Trace, read_jsonl, template_tokens, write_jsonl
from distilflow.sources import read_records, source_uri
from distilflow.teachers.cache import TeacherCache, cache_key
from distilflow.teachers.protocol import request_body

TRACES = "traces.jsonl"
FAILURES = "failures.jsonl"
REJECTED = "rejected.jsonl"
PARTS = "parts"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


class DistillResult(BaseModel):
    """What a distill run produced (also stored in its manifest)."""

    traces_uri: str = Field(description="JSONL of records.Trace")
    problems: int = Field(description="Problems asked", json_schema_extra=COUNT)
    traces: int = Field(
        description="Traces written (problems x n, less failed rows)", json_schema_extra=COUNT
    )
    tokens: int = Field(description="Completion tokens of all traces written", json_schema_extra=COUNT)
    finish_reasons: dict[str, int] = Field(description="How many traces ended with each finish reason")
    teacher: str = Field(description="Name of the teacher recorded in the traces (comma-separated: several)")
    by_teacher: dict[str, int] = Field({}, description="Traces written by each teacher")
    generation_key: str = Field(
        "", description="Hash of the settings that shape the traces (teachers, prompt, n)"
    )
    shard_index: int = Field(0, description="The shard of the problems this output holds")
    num_shards: int = Field(1, description="How many shards the problems were split into")
    prompt_template: str | None = Field(description="Versioned prompt template used (None: native)")
    resumed: int = Field(
        0, description="Traces taken from the shards of an interrupted run", json_schema_extra=COUNT
    )
    requests: int = Field(
        0, description="Requests sent in this run (HTTP attempts, retries included)", json_schema_extra=COUNT
    )
    cache_hits: int = Field(
        0, description="Answers taken from the teacher cache without a request", json_schema_extra=COUNT
    )
    failed: int = Field(
        0, description="(problem, sample) rows that failed after retries", json_schema_extra=COUNT
    )
    failures_by_kind: dict[str, int] = Field(
        {},
        description="Failed rows by the kind of their last error",
        json_schema_extra={**METRIC, "each": "failed_{}"},
    )
    errors_by_kind: dict[str, int] = Field(
        {},
        description="Failed attempts (retried or not) by kind",
        json_schema_extra={**METRIC, "each": "errors_{}"},
    )
    prompt_tokens: int = Field(
        0, description="Prompt tokens of the requests answered in this run", json_schema_extra=METRIC
    )
    completion_tokens: int = Field(
        0, description="Completion tokens of the requests answered in this run", json_schema_extra=METRIC
    )
    tokens_per_s: float = Field(
        0.0, description="Completion tokens per second of generation in this run", json_schema_extra=METRIC
    )
    requests_per_s: float = Field(
        0.0,
        description="Requests sent per second of generation in this run (HTTP attempts, retries included)",
        json_schema_extra=METRIC,
    )
    traces_per_s: float = Field(
        0.0,
        description="Answers received per second of generation in this run (traces, cache hits excluded)",
        json_schema_extra=METRIC,
    )
    mean_latency_s: float = Field(
        0.0, description="Mean latency of a successful request", json_schema_extra=METRIC
    )
    wall_s: float = Field(0.0, description="Seconds spent generating in this run")
    failures_uri: str | None = Field(
        None, description="JSONL of failed rows {problem_id, sample, kind, error}"
    )
    rejected: int = Field(
        0,
        description="Problems and answers rejected because they hold chat-template control tokens "
        "(<|im_end|>, </think>, ...) that would change the structure of a training example",
        json_schema_extra=COUNT,
    )
    rejected_uri: str | None = Field(
        None, description="JSONL of rejected problems and answers {problem_id, sample, where, tokens}"
    )
    report_md: str | None = Field(None, description="Markdown report")
    report_html: str | None = Field(None, description="HTML report")
    logits: LogitsSummary | None = Field(
        None,
        description="The teacher's top-k log-probabilities of every answer (with logits): files and contents",
    )
    logits_rows: int = Field(0, description="Traces stored with their logits", json_schema_extra=COUNT)
    logits_tokens: int = Field(
        0, description="Answer positions stored with their top-k logprobs", json_schema_extra=COUNT
    )
    logits_mb_per_million_tokens: float = Field(
        0.0,
        description="Megabytes (10^6 bytes) of Parquet logits per million answer tokens",
        json_schema_extra=METRIC,
    )


def prompt_of(config: DistillConfig, teacher: str | None = None) -> str:
    """The prompt layout a teacher uses: its entry in ``prompts``, else the stage's ``prompt``."""
    return config.prompts.get(teacher, config.prompt) if teacher else config.prompt


def system_prompt(config: DistillConfig, teacher: str | None = None) -> str | None:
    """The rendered system prompt of a teacher's prompt layout (None for ``native``)."""
    from distilflow import templates

    ref = PROMPT_TEMPLATES[prompt_of(config, teacher)]
    return templates.load(ref).render() if ref else None


def build_chat(problem: Problem, system: str | None) -> list[dict]:
    chat = [{"role": "system", "content": system}] if system else []
    return chat + [{"role": "user", "content": problem.problem}]


def generation_key(config: DistillConfig) -> str:
    """Hash of what shapes the traces (teacher, sampling, prompt, n), not of how fast they come:
    shards are only resumed by a run that would have written the same rows."""
    include = {"backend", "model", "name", "gguf_file", "max_new_tokens", "temperature"}
    include |= {"top_p", "seed", "chat_template_kwargs"}
    teachers = [t.model_dump(mode="json", include=include) for t in config.teacher_list]
    spec = {"teachers": teachers, "prompt": PROMPT_TEMPLATES[config.prompt], "n": config.n}
    if config.prompts:  # keys of runs without per-teacher prompts stay as they were
        spec["prompts"] = {name: PROMPT_TEMPLATES[p] for name, p in sorted(config.prompts.items())}
    if config.teachers is not None:
        spec["shares"] = config.shares
    else:  # keys of one-teacher runs stay as they were
        spec = {"teacher": teachers[0], "prompt": spec["prompt"], "n": config.n} | (
            {"prompts": spec["prompts"]} if "prompts" in spec else {}
        )
    if config.logits is not None:  # keys of text-only runs stay as they were
        spec["logits"] = config.logits.model_dump(mode="json")
    blob = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Job:
    """One (problem, sample) to answer."""

    problem: Problem
    sample: int
    request: dict[str, Any]
    key: str
    teacher: int = 0  # index into config.teacher_list
    given: Trace | None = None  # the answer to score instead of generating (logits.answers_uri)


def route(problem_id: str, sample: int, shares: list[float]) -> int:
    """The teacher of a (problem, sample): a hash-uniform draw over the cumulative shares, so the
    same row always goes to the same teacher, whatever the order or the shard it is answered in."""
    digest = hashlib.sha256(f"{problem_id}\0{sample}".encode()).hexdigest()
    u = int(digest[:15], 16) / 16**15 * sum(shares)
    for i, share in enumerate(shares):
        u -= share
        if u < 0:
            return i
    return len(shares) - 1


def shard_of(problems: list[Problem], index: int, count: int) -> list[Problem]:
    """Contiguous shard ``index`` of ``count``: concatenating the shards in order gives ``problems``."""
    size = math.ceil(len(problems) / count)
    return problems[index * size : (index + 1) * size]


class Shards:
    """Answered traces, written as numbered shards ``part-NNNNN.jsonl``, each once and atomically."""

    def __init__(
        self, out: StageOutput, key: str, shard_size: int, flush_s: float, logits: LogitsConfig | None = None
    ):
        self.root, self.dir = out.path(PARTS), out.path(PARTS, key)
        self.key, self.shard_size, self.flush_s = key, shard_size, flush_s
        self.logits_config = logits
        self.logits: dict[
            str, dict[str, Any]
        ] = {}  # Parquet rows (logits.row_of) not yet written, by trace id
        self.rows: dict[tuple[str, int], Trace] = {}
        self.rejected: list[dict[str, Any]] = []
        self.buffer: list[Trace] = []
        self.next_index, self.last = 0, time.monotonic()

    def _ls(self, uri: str, pattern: str) -> list[str]:
        fs, path = uris.filesystem(uri)
        if not uris.is_local(uri):
            fs.invalidate_cache(path)
        return sorted(os.path.basename(p.rstrip("/")) for p in fs.glob(f"{path.rstrip('/')}/{pattern}"))

    def load(self) -> int:
        """Take the rows of earlier shards with this generation key; drop shards of other settings."""
        for name in self._ls(self.root, "*"):
            if name != self.key:
                print(
                    f"[distill] {PARTS}/{name}: shards of other teacher/prompt settings; removing", flush=True
                )
                uris.remove(uris.join(self.root, name), recursive=True)
        for name in self._ls(self.dir, "*.tmp-*"):  # a write killed before its rename
            uris.remove(uris.join(self.dir, name))
        for name in self._ls(self.dir, "part-*.jsonl"):
            self.next_index = max(self.next_index, int(name[5:10]) + 1)
            try:
                traces = read_jsonl(uris.join(self.dir, name), Trace, allow_empty=True)
            except RecordError as exc:  # cannot happen with atomic writes; redo its rows from the cache
                print(f"[distill] ignoring unreadable shard {name}: {exc}", flush=True)
                continue
            for t in traces:
                self.rows.setdefault((t.problem_id, t.sample), t)
        return len(self.rows)

    def add(self, trace: Trace, logits_row: dict[str, Any] | None = None) -> list[Trace] | None:
        """Record a trace (and its logits row, with ``logits``); return the rows to write when a shard is due.

        An answer holding chat-template control tokens is rejected (listed in ``rejected``, never
        written): as text in a training example it would end the turn or the thinking block early.
        """
        tokens = template_tokens(trace.reasoning, trace.content)
        if tokens:
            self.rejected.append(
                {"problem_id": trace.problem_id, "sample": trace.sample, "where": "answer", "tokens": tokens}
            )
            return None
        self.rows[(trace.problem_id, trace.sample)] = trace
        if logits_row is not None:
            self.logits[trace.id] = logits_row
        self.buffer.append(trace)
        if len(self.buffer) >= self.shard_size or time.monotonic() - self.last >= self.flush_s:
            return self.take()
        return None

    def take(self) -> list[Trace] | None:
        rows, self.buffer, self.last = self.buffer, [], time.monotonic()
        return rows or None

    def write(self, rows: list[Trace] | None) -> None:
        """Write ``rows`` as the next shard; with logits, their Parquet part first (the traces are the commit)."""
        if rows:
            index, self.next_index = self.next_index, self.next_index + 1
            if self.logits_config is not None:
                from distilflow.components.distill import logits

                part = [self.logits.pop(t.id) for t in rows]
                uri = uris.join(self.dir, f"logits-{index:05d}.parquet")
                logits.write_part(uri, part, self.logits_config.top_k, self.logits_config.dtype)
            write_jsonl(uris.join(self.dir, f"part-{index:05d}.jsonl"), rows)


class Budget:
    """``min_success_ratio`` over all rows: trips as soon as the failures make it unreachable."""

    def __init__(self, ratio: float, total: int):
        self.ratio, self.total = ratio, total
        self.allowed = total - math.ceil(round(ratio * total, 9))
        self.failures: list[dict[str, Any]] = []

    @property
    def tripped(self) -> bool:
        return len(self.failures) > self.allowed


def add_answer(shards: Shards, job: Job, answer: dict[str, Any], teacher: str) -> list[Trace] | None:
    """Record the trace of an answer (the given trace when scoring) and, with logits, its Parquet row."""
    from distilflow.teachers.protocol import completion_of

    trace = job.given or trace_of(job, completion_of(answer), teacher)
    if shards.logits_config is None:
        return shards.add(trace)
    from distilflow.components.distill.logits import row_of

    if not answer.get("logits"):
        raise BackendError(f"teacher {teacher} answered {trace.id} without the logits asked for")
    return shards.add(trace, row_of(trace, job.request["messages"], answer["logits"]))


def trace_of(job: Job, completion: Any, teacher: str) -> Trace:
    p = job.problem
    return Trace(
        id=f"{p.id}/{teacher}/{job.sample}",
        problem_id=p.id,
        problem=p.problem,
        reference=p.answer,
        domain=p.domain,
        teacher=teacher,
        sample=job.sample,
        reasoning=completion.reasoning,
        content=completion.content,
        tokens=completion.tokens,
        finish_reason=completion.finish_reason,
    )


async def ask_endpoint(
    config: DistillConfig,
    teacher: Any,
    jobs: list[Job],
    cache: TeacherCache,
    shards: Shards,
    budget: Budget,
    progress: Progress,
) -> None:
    """Answer ``jobs`` keeping ``teacher.config.concurrency`` requests in flight.

    A request holds one of ``concurrency`` slots from the moment it is sent until its answer is in
    the cache, so a kill at any point loses at most ``concurrency`` sent-but-unsaved requests. Twice
    as many workers as slots do the rest (cache lookups, traces, shards) while the slots stay busy.
    A request still failing after ``max_retries`` while the endpoint answered others (a transient
    fault, not a dead endpoint) is retried in a final pass, until it succeeds or the teacher's
    ``retry_budget_s`` is spent, before its row counts as failed.
    """
    from distilflow.teachers.endpoint import RequestError

    pending = iter(jobs)
    name = teacher.name
    slots = asyncio.Semaphore(teacher.config.concurrency)
    local = uris.is_local(cache.uri)
    deferred: list[Job] = []

    async def io(fn: Any, *args: Any) -> Any:
        # A local cache entry is read or written in well under a millisecond: inline, that is
        # cheaper than a hop to a thread and back (measured with bench/bench_distill.py).
        return fn(*args) if local else await asyncio.to_thread(fn, *args)

    async def record(job: Job, answer: dict[str, Any]) -> None:
        rows = add_answer(shards, job, answer, name)
        if rows:
            await asyncio.to_thread(shards.write, rows)
        progress.update()

    async def ask(ep: Any, job: Job, deadline: float | None = None) -> None:
        try:
            async with slots:
                answer = await teacher.acomplete(ep, job.request, deadline)
                await io(cache.put, job.key, teacher.config.model, job.request, answer)
        except RequestError as exc:
            if exc.transient and deadline is None:
                deferred.append(job)  # the final pass retries it
                return
            budget.failures.append(
                {"problem_id": job.problem.id, "sample": job.sample, "kind": exc.kind}
                | {"status": exc.status, "attempts": exc.attempts, "error": str(exc)}
            )
            progress.update()
            if budget.tripped:
                raise BudgetExceeded from None
            return
        await record(job, answer)

    async def worker(ep: Any) -> None:
        for job in pending:  # one shared iterator: each job goes to exactly one worker
            answer = await io(cache.get, job.key)
            if answer is None:
                await ask(ep, job)
            else:
                await record(job, answer)

    workers = min(2 * teacher.config.concurrency, len(jobs))
    async with teacher.endpoint() as ep:
        tasks = [asyncio.create_task(worker(ep)) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
            if deferred:
                tasks = final_pass(teacher, deferred, lambda job, deadline: ask(ep, job, deadline))
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(shards.write, shards.take())


def final_pass(teacher: Any, deferred: list[Job], ask: Any) -> list[asyncio.Task]:
    """The tasks of the final retry pass: each deferred job asked again until it is answered or the
    teacher's ``retry_budget_s`` (from now) is spent."""
    budget_s = teacher.config.retry_budget_s
    print(
        f"[distill] final retry pass: {len(deferred)} requests to {teacher.name} failed "
        f"{teacher.config.max_retries + 1} times while the endpoint answered others; "
        f"retrying them for up to {budget_s:g} s",
        flush=True,
    )
    deadline = time.monotonic() + budget_s
    return [asyncio.create_task(ask(job, deadline)) for job in deferred]


async def ask_endpoints(
    config: DistillConfig,
    work: list[tuple[Any, list[Job]]],
    cache: TeacherCache,
    shards: Shards,
    budget: Budget,
    progress: Progress,
) -> None:
    """Every endpoint teacher at once, each with its own connection pool and concurrency."""
    # Cache and shard I/O run in threads (a remote store takes tens of ms an object): one per worker,
    # so a finished request never queues behind other workers' lookups in asyncio's small default pool.
    workers = sum(min(2 * t.config.concurrency, len(jobs)) for t, jobs in work)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=workers + 1))
    tasks = [ask_endpoint(config, t, jobs, cache, shards, budget, progress) for t, jobs in work]
    await asyncio.gather(*tasks)


class BudgetExceeded(Exception):
    """Raised inside the request loop when min_success_ratio can no longer be met."""


def ask_in_process(
    config: DistillConfig,
    teacher: Any,
    jobs: list[Job],
    cache: TeacherCache,
    shards: Shards,
    progress: Progress,
) -> tuple[int, int, int, float]:
    """Answer ``jobs`` with an in-process teacher, ``batch_size`` problems per call.

    Returns the prompts generated, the completion and prompt tokens they spent (per answer, as an
    endpoint counts one request per sample) and their summed latency (each answer waited for its call).

    A problem with any sample missing from the cache is generated whole (``n`` samples in one call)
    and only its missing samples are used and cached; each batch is written as a shard.
    """
    from distilflow.teachers.protocol import answer_of_completion

    logprobs = {"logprobs": config.logits.top_k} if config.logits else {}
    by_problem: dict[str, list[Job]] = collections.defaultdict(list)
    for job in jobs:
        by_problem[job.problem.id].append(job)
    groups = list(by_problem.values())
    asked = spent = prompt_tokens = 0
    latency = 0.0
    for start in range(0, len(groups), config.batch_size):
        batch = groups[start : start + config.batch_size]
        answers = {job.key: cache.get(job.key) for group in batch for job in group}
        missing = [group for group in batch if any(answers[j.key] is None for j in group)]
        if missing:
            system = system_prompt(config, teacher.name)
            called = time.monotonic()
            got = teacher.generate(
                [build_chat(g[0].problem, system) for g in missing], n=config.n, **logprobs
            )
            latency += (time.monotonic() - called) * len(missing) * config.n
            if len(got) != len(missing) or any(len(a) != config.n for a in got):
                raise BackendError(
                    f"teacher {teacher.name} returned {[len(a) for a in got]} answers "
                    f"for {len(missing)} problems x {config.n}"
                )
            asked += len(missing)
            spent += sum(c.tokens for a in got for c in a)
            prompt_tokens += sum(c.prompt_tokens for a in got for c in a)
            for group, completions in zip(missing, got, strict=True):
                for job in group:
                    if answers[job.key] is None:
                        answers[job.key] = answer_of_completion(completions[job.sample])
                        cache.put(job.key, teacher.config.model, job.request, answers[job.key])
        for group in batch:
            for job in group:
                # a shard can fall due inside the batch (shard_size, flush_s): write it, do not drop it
                shards.write(add_answer(shards, job, answers[job.key], teacher.name))
            progress.update(len(group))
        shards.write(shards.take())
    return asked, spent, prompt_tokens, latency


def ask_scoring(
    config: DistillConfig,
    teacher: Any,
    jobs: list[Job],
    cache: TeacherCache,
    shards: Shards,
    progress: Progress,
) -> tuple[int, int, int, float]:
    """Score given answers (``logits.answers_uri``) with the teacher, ``batch_size`` at a time: its top-k
    log-probabilities over each answer as its chat template renders it. Each score is cached like a
    generated answer; each batch is written as a shard. Returns what ``ask_in_process`` returns."""
    k = config.logits.top_k  # type: ignore[union-attr]
    asked = tokens = 0
    latency = 0.0
    for start in range(0, len(jobs), config.batch_size):
        batch = jobs[start : start + config.batch_size]
        answers = {job.key: cache.get(job.key) for job in batch}
        missing = [job for job in batch if answers[job.key] is None]
        if missing:
            called = time.monotonic()
            chats = [job.request["messages"] for job in missing]
            given = [(job.given.reasoning, job.given.content) for job in missing]  # type: ignore[union-attr]
            scored = teacher.score_answers(chats, given, k)
            latency += (time.monotonic() - called) * len(missing)
            for job, found in zip(missing, scored, strict=True):
                answers[job.key] = {
                    "content": job.given.content,  # type: ignore[union-attr]
                    "reasoning": job.given.reasoning,  # type: ignore[union-attr]
                    "split": True,
                    "finish_reason": job.given.finish_reason,  # type: ignore[union-attr]
                    "prompt_tokens": 0,
                    "completion_tokens": len(found),
                    "logits": found.to_json(),
                }
                cache.put(job.key, teacher.config.model, job.request, answers[job.key])
            asked, tokens = asked + len(missing), tokens + sum(len(f) for f in scored)
        for job in batch:
            shards.write(add_answer(shards, job, answers[job.key], teacher.name))
        progress.update(len(batch))
        shards.write(shards.take())
    return asked, tokens, 0, latency


def given_answers(config: DistillConfig) -> dict[tuple[str, int], Trace]:
    """The answers to score (``logits.answers_uri``: a distill output folder or a traces JSONL), by
    (problem id, sample)."""
    from distilflow.outputs import require_complete

    source = config.logits.answers_uri  # type: ignore[union-attr]
    if not source.rstrip("/").endswith(".jsonl"):
        require_complete(source, "distill logits.answers_uri")
        source = uris.join(source, TRACES)
    return {(t.problem_id, t.sample): t for t in read_jsonl(source, Trace)}


def reject_hostile(problems: list[Problem]) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Problems without chat-template control tokens, and a row for each one that has some.

    Prompt-injection prose is data and passes; ``<|im_end|>``-like tokens do not: the teacher's
    server would parse them as turn delimiters, and a training example would inherit them.
    """
    kept, rejected = [], []
    for p in problems:
        tokens = template_tokens(p.problem)
        if tokens:
            rejected.append({"problem_id": p.id, "sample": None, "where": "problem", "tokens": tokens})
        else:
            kept.append(p)
    return kept, rejected


def run(config: DistillConfig) -> DistillResult:
    """Answer every problem ``n`` times with the teacher and write ``traces.jsonl``.

    Resumes from the shards and the cache of an interrupted run; a rerun of a finished output with
    the same config returns the stored result without loading the teacher. Fails (after writing
    ``failures.jsonl`` and the shards) when fewer than ``min_success_ratio`` of the rows succeed.
    """
    out = StageOutput(config.output_uri, "distill")
    manifest = out.reusable(config)
    if manifest is not None:
        print(f"[distill] {out.uri} is complete for this config; nothing to do", flush=True)
        return DistillResult.model_validate(manifest["result"])
    problems = read_records(config.problems_uri, Problem)[: config.limit]
    if config.num_shards > 1:
        problems = shard_of(problems, config.shard_index, config.num_shards)
    problems, rejected = reject_hostile(problems)
    out.begin(config)
    # with logits, the teachers' vocabulary first: a tokenizer that cannot be read fails before any request
    vocab = teachers_fingerprint(config) if config.logits is not None else None
    plan = plan_jobs(config, out, problems, rejected)
    generated = generate(config, plan)
    traces = write_rows(config, out, plan, generated)
    result = result_of(config, out, plan, generated, traces)
    result = with_logits(result, write_logits(config, out, plan, traces, vocab))
    publish(config, out, result, traces)
    uris.remove(out.path(PARTS), recursive=True)
    return result


@dataclass
class Plan:
    """What a run has to answer: its problems, the teachers' names, the cache and the shards already
    written, and the jobs left for each teacher."""

    problems: list[Problem]
    names: list[str]
    key: str
    cache: TeacherCache
    shards: Shards
    jobs: list[list[Job]]
    wanted: int
    resumed: int


def plan_jobs(
    config: DistillConfig, out: StageOutput, problems: list[Problem], rejected: list[dict[str, Any]]
) -> Plan:
    """Load the shards of an interrupted run and make a job of every (problem, sample) still missing,
    routed to its teacher."""
    key, n, specs = generation_key(config), config.n, config.teacher_list
    names = [t.display_name for t in specs]
    cache = TeacherCache(config.cache_uri or out.path("cache"))
    shards = Shards(out, key, config.shard_size, config.flush_s, config.logits)
    shards.load()
    shards.rejected.extend(rejected)
    given = given_answers(config) if config.logits and config.logits.answers_uri else None
    wanted = {(p.id, s) for p in problems for s in range(n) if given is None or (p.id, s) in given}
    resumed = len(wanted & set(shards.rows))
    systems = [system_prompt(config, name) for name in names]
    shares = config.shares or [1.0] * len(specs)
    jobs: list[list[Job]] = [[] for _ in specs]
    for p in problems:
        for s in range(n):
            if (p.id, s) in wanted and (p.id, s) not in shards.rows:
                i = route(p.id, s, shares) if len(specs) > 1 else 0
                answer = given[(p.id, s)] if given is not None else None
                body = job_body(config, specs[i], build_chat(p, systems[i]), s, answer)
                key_i = cache_key(specs[i].backend, specs[i].model, body, s)
                jobs[i].append(Job(p, s, body, key_i, i, answer))
    todo = sum(len(j) for j in jobs)
    shard = f" (shard {config.shard_index} of {config.num_shards})" if config.num_shards > 1 else ""
    print(
        f"[distill] {len(problems)} problems{shard} x {n}: {resumed} traces already written, {todo} to answer "
        f"with {', '.join(f'{name}: {len(j)}' for name, j in zip(names, jobs, strict=True))} (cache: {cache.uri})",
        flush=True,
    )
    return Plan(problems, names, key, cache, shards, jobs, len(wanted), resumed)


def job_body(config: DistillConfig, spec: Any, chat: list[dict], sample: int, given: Trace | None) -> dict:
    """What a (problem, sample) asks its teacher, also its cache key: the chat-completions body; with
    logits, asking for token ids with their top-k logprobs; scoring, the given answer to score."""
    if config.logits is None:
        return request_body(spec, chat, sample)
    if given is None:
        from distilflow.teachers.openai import logits_body

        return logits_body(spec, chat, sample, config.logits.top_k)
    score = {"reasoning": given.reasoning, "content": given.content}
    return request_body(spec, chat, sample, score=score, prompt_logprobs=config.logits.top_k)


@dataclass
class Generated:
    """How the answering went: failures against the budget, the endpoints' stats, what in-process
    teachers did (samples asked, tokens generated, prompt tokens, latency) and the wall time."""

    budget: Budget
    stats: Any
    asked: int
    generated_tokens: int
    prompt_tokens: int
    latency: float
    wall: float


def generate(config: DistillConfig, plan: Plan) -> Generated:
    """Answer every job: endpoint teachers concurrently, then in-process teachers in batches. Stops
    early once the failures make ``min_success_ratio`` unreachable."""
    from distilflow.teachers import make_teacher

    budget = Budget(config.min_success_ratio, plan.wanted)
    teachers = [
        make_teacher(spec) if todo_i else None
        for spec, todo_i in zip(config.teacher_list, plan.jobs, strict=True)
    ]
    progress = Progress("distill", "traces", total=sum(len(j) for j in plan.jobs))
    start, asked, generated_tokens, prompt_tokens, latency = time.monotonic(), 0, 0, 0, 0.0
    try:
        scoring = config.logits is not None and config.logits.answers_uri is not None
        endpoint_work = [
            (t, j)
            for t, j in zip(teachers, plan.jobs, strict=True)
            if t and t.config.backend == "openai" and not scoring
        ]
        if endpoint_work:
            asyncio.run(ask_endpoints(config, endpoint_work, plan.cache, plan.shards, budget, progress))
        for t, j in zip(teachers, plan.jobs, strict=True):
            if t is not None and (t.config.backend != "openai" or scoring):
                ask = ask_scoring if scoring else ask_in_process
                got = ask(config, t, j, plan.cache, plan.shards, progress)
                asked, generated_tokens = asked + got[0], generated_tokens + got[1]
                prompt_tokens, latency = prompt_tokens + got[2], latency + got[3]
    except BudgetExceeded:
        pass
    finally:
        for t in teachers:
            if t is not None:
                t.close()
    stats = sum_stats([getattr(t, "stats", None) for t in teachers])
    wall = time.monotonic() - start
    return Generated(budget, stats, asked, generated_tokens, prompt_tokens, latency, wall)


def write_rows(config: DistillConfig, out: StageOutput, plan: Plan, generated: Generated) -> list[Trace]:
    """Write the failures and the rejected rows; fail when the budget tripped; else write and return
    the traces in problem order."""
    shards, budget = plan.shards, generated.budget
    failures_uri, rejected_uri = out.path(FAILURES), out.path(REJECTED)
    write_jsonl(failures_uri, budget.failures)
    write_jsonl(rejected_uri, shards.rejected)
    if shards.rejected:
        print(
            f"[distill] {len(shards.rejected)} problems/answers rejected: they hold chat-template control "
            f"tokens (e.g. {shards.rejected[0]['tokens']}); listed in {rejected_uri}",
            flush=True,
        )
    if budget.tripped:
        raise BackendError(budget_message(config, budget, generated.stats, failures_uri, len(shards.rows)))
    n = config.n
    traces = [shards.rows[(p.id, s)] for p in plan.problems for s in range(n) if (p.id, s) in shards.rows]
    write_jsonl(out.path(TRACES), traces)
    return traces


def result_of(
    config: DistillConfig, out: StageOutput, plan: Plan, generated: Generated, traces: list[Trace]
) -> DistillResult:
    """What the run produced: rows, tokens, finish reasons, requests and failures by kind, throughput."""
    stats, budget, wall, n = generated.stats, generated.budget, generated.wall, config.n
    reasons = dict(collections.Counter(t.finish_reason for t in traces))
    if reasons.get("length"):
        print(
            f"[distill] {reasons['length']}/{len(traces)} traces hit max_new_tokens; raise teacher.max_new_tokens",
            flush=True,
        )
    answered = stats.succeeded + generated.asked * n
    completion_tokens = stats.completion_tokens + generated.generated_tokens
    return DistillResult(
        traces_uri=out.path(TRACES),
        problems=len(plan.problems),
        traces=len(traces),
        tokens=sum(t.tokens for t in traces),
        finish_reasons=reasons,
        teacher=", ".join(plan.names),
        by_teacher=dict(collections.Counter(t.teacher for t in traces)),
        generation_key=plan.key,
        shard_index=config.shard_index,
        num_shards=config.num_shards,
        prompt_template=PROMPT_TEMPLATES[config.prompt],
        resumed=plan.resumed,
        requests=stats.requests + generated.asked * n,
        cache_hits=plan.cache.hits,
        failed=len(budget.failures),
        failures_by_kind=dict(collections.Counter(f["kind"] for f in budget.failures)),
        errors_by_kind=dict(stats.errors),
        prompt_tokens=stats.prompt_tokens + generated.prompt_tokens,
        completion_tokens=completion_tokens,
        tokens_per_s=completion_tokens / wall if wall > 0 else 0.0,
        requests_per_s=(stats.requests + generated.asked * n) / wall if wall > 0 else 0.0,
        traces_per_s=answered / wall if wall > 0 else 0.0,
        mean_latency_s=(stats.latency_s + generated.latency) / answered if answered else 0.0,
        wall_s=round(wall, 3),
        failures_uri=out.path(FAILURES),
        rejected=len(plan.shards.rejected),
        rejected_uri=out.path(REJECTED),
        report_md=out.path(REPORT_MD),
        report_html=out.path(REPORT_HTML),
    )


def write_logits(
    config: DistillConfig, out: StageOutput, plan: Plan, traces: list[Trace], vocab: dict[str, Any] | None
) -> LogitsSummary | None:
    """With ``logits``: the Parquet shards of exactly the written traces (``logits.assemble``), the
    teachers' vocabulary fingerprint (``vocab``) and sampling settings; None without."""
    if config.logits is None or vocab is None:
        return None
    from distilflow.components.distill import logits

    folder = out.path(logits.FOLDER)
    if uris.exists(folder):  # an earlier finished run's shards
        uris.remove(folder, recursive=True)
    parts = logits.part_uris(plan.shards.dir)
    files, rows, tokens, size = logits.assemble(parts, folder, [t.id for t in traces])
    sampling = {
        t.display_name: t.model_dump(
            include={"temperature", "top_p", "max_new_tokens", "seed", "chat_template_kwargs"}
        )
        for t in config.teacher_list
    }
    summary = LogitsSummary(
        files=files,
        rows=rows,
        tokens=tokens,
        bytes=size,
        top_k=config.logits.top_k,
        dtype=config.logits.dtype,
        tokenizer_fingerprint=vocab["fingerprint"],
        vocab_size=vocab["vocab_size"],
        sampling=sampling,
        source="scored" if config.logits.answers_uri else "generated",
    )
    print(
        f"[distill] logits: {rows} traces, {tokens} tokens, top-{summary.top_k}, {size / 1e6:.2f} MB "
        f"({summary.bytes_per_million_tokens / 1e6:.1f} MB per million tokens) in {folder}",
        flush=True,
    )
    return summary


def teachers_fingerprint(config: DistillConfig) -> dict[str, Any]:
    """The vocabulary fingerprint the teachers share (each tokenizer loaded from ``tokenizer`` or the
    model); white-box data from teachers with different vocabularies cannot be mixed."""
    from distilflow.models import load_tokenizer
    from distilflow.teachers.logprobs import vocab_fingerprint

    found = {
        t.display_name: vocab_fingerprint(
            load_tokenizer(
                t.tokenizer or t.model, None if t.tokenizer else t.gguf_file, need_chat_template=False
            )
        )
        for t in config.teacher_list
    }
    if len({f["fingerprint"] for f in found.values()}) > 1:
        raise DistilflowError(
            f"distill.logits: the teachers' tokenizers differ ({found}); top-k logprobs of different "
            "vocabularies cannot be mixed. Use teachers of one tokenizer family, or one teacher"
        )
    return next(iter(found.values()))


def with_logits(result: DistillResult, summary: LogitsSummary | None) -> DistillResult:
    """``result`` with its logits summary and the counts the manifest lists."""
    if summary is None:
        return result
    return result.model_copy(
        update={
            "logits": summary,
            "logits_rows": summary.rows,
            "logits_tokens": summary.tokens,
            "logits_mb_per_million_tokens": round(summary.bytes_per_million_tokens / 1e6, 3),
        }
    )


def publish(config: DistillConfig, out: StageOutput, result: DistillResult, traces: list[Trace]) -> None:
    """Write the reports, then the manifest."""
    uris.write_text(result.report_md, report.render_markdown(result, traces, config))
    uris.write_text(result.report_html, report.render_html(result, traces, config))
    names = [t.display_name for t in config.teacher_list]
    out.finish(
        result,
        inputs={
            "problems": source_uri(config.problems_uri),
            "prompt_template": result.prompt_template or "native",
            "prompt_templates": {
                name: PROMPT_TEMPLATES[prompt_of(config, name)] or "native" for name in names
            },
        },
        outputs={
            "traces": result.traces_uri,
            "failures": result.failures_uri,
            "rejected": result.rejected_uri,
            "report_md": REPORT_MD,
            "report_html": REPORT_HTML,
        }
        | ({"logits": out.path("logits")} if result.logits else {}),
        metrics=per_trace(result),
    )


def sum_stats(stats: list[Any]) -> Any:
    """The endpoint stats of several teachers added up (in-process teachers have none)."""
    from distilflow.teachers.endpoint import EndpointStats

    total = EndpointStats()
    for one in stats:
        if one is None:
            continue
        for name in ("requests", "succeeded", "retries", "prompt_tokens", "completion_tokens", "latency_s"):
            setattr(total, name, getattr(total, name) + getattr(one, name))
        total.errors.update(one.errors)
        total.failures.update(one.failures)
    return total


def budget_message(config: DistillConfig, budget: Budget, stats: Any, failures_uri: str, kept: int) -> str:
    where = ", ".join(
        f"{t.base_url} (model {t.model!r}, {t.max_retries} retries)"
        if t.backend == "openai"
        else f"in-process model {t.model}"
        for t in config.teacher_list
    )
    kinds = dict(collections.Counter(f["kind"] for f in budget.failures))
    errors = f"; failed attempts by kind (retries included): {dict(stats.errors)}" if stats.errors else ""
    errors += f"; last error: {budget.failures[-1].get('error', '')[:200]}" if budget.failures else ""
    statuses = {f.get("status") for f in budget.failures}
    endpoints = [t for t in config.teacher_list if t.backend == "openai"]
    if statuses & {401, 403}:  # the name of the variable, never its value
        names = ", ".join(sorted({f"${t.api_key_env}" for t in endpoints}))
        errors += f". The endpoint refused the API key: check {names}"
    if 404 in statuses:
        errors += f". The endpoint does not serve the model: check teacher.model ({', '.join(t.model for t in endpoints)})"
    return (
        f"distill: {len(budget.failures)} request(s) to {where} failed after retries, more than min_success_ratio={config.min_success_ratio} allows "
        f"({budget.allowed} of {budget.total} rows); failures by kind: {kinds}{errors}. "
        f"Failed rows are listed in {failures_uri}. Fix the endpoint (or lower min_success_ratio) and rerun: "
        f"the {kept} answered traces and every cached answer are kept."
    )


def per_trace(result: DistillResult) -> dict[str, float]:
    """The metric beyond the result's own (``METRIC`` fields): completion tokens per trace."""
    return {"tokens_per_trace": result.tokens / result.traces if result.traces else 0.0}


def shard_uri(output_uri: str, index: int) -> str:
    """Where shard ``index`` of a fanned-out distill writes: ``<output_uri>/shards/NNNNN``."""
    return uris.join(output_uri, "shards", f"{index:05d}")


def read_shards(shard_uris: list[str]) -> tuple[list[DistillResult], list[Trace], list[dict[str, Any]]]:
    """The shards' results (in shard order), traces and failures, after checking that every shard is
    complete, that they were made with one config and are shards 0..N-1 of N, and that no trace is in two."""
    from distilflow.errors import DistilflowError, IncompleteOutputError
    from distilflow.outputs import MARKER, require_complete

    missing = [u for u in shard_uris if not uris.exists(uris.join(u, MARKER))]
    if missing:
        raise IncompleteOutputError(
            f"{len(missing)} of {len(shard_uris)} distill shards have no completion marker: {missing}; "
            "rerun the fan-out (each shard resumes where it stopped) before merging"
        )
    results = [
        DistillResult.model_validate(require_complete(u, "distill shard")["result"]) for u in shard_uris
    ]
    keys = {r.generation_key for r in results}
    layout = sorted((r.shard_index, r.num_shards) for r in results)
    if len(keys) != 1 or layout != [(i, len(shard_uris)) for i in range(len(shard_uris))]:
        raise DistilflowError(
            f"distill shards {shard_uris} do not make one whole: generation keys {sorted(keys)}, "
            f"(shard_index, num_shards) {layout}; expected one key and shards 0..{len(shard_uris) - 1} "
            f"of {len(shard_uris)}. Rerun the fan-out with one config"
        )
    results = sorted(results, key=lambda r: r.shard_index)
    traces = [t for r in results for t in read_jsonl(r.traces_uri, Trace, allow_empty=True)]
    seen: set[str] = set()
    duplicates = [t.id for t in traces if t.id in seen or seen.add(t.id)]
    if duplicates:
        raise DistilflowError(f"distill shards overlap: trace ids {duplicates[:5]} appear in two shards")
    failures: list[dict[str, Any]] = []
    for r in results:
        if r.failures_uri and uris.exists(r.failures_uri):
            failures += [json.loads(line) for line in uris.read_text(r.failures_uri).splitlines() if line]
    return results, traces, failures


def merged_result(
    results: list[DistillResult], traces: list[Trace], failures: list[dict[str, Any]], out: StageOutput
) -> DistillResult:
    """The shards' results added up into the result of the whole (throughput over the longest shard)."""

    def total(field: str) -> Any:
        return sum(getattr(r, field) for r in results)

    def added(field: str) -> dict[str, int]:
        counter: collections.Counter = collections.Counter()
        for r in results:
            counter.update(getattr(r, field))
        return dict(counter)

    wall = max(r.wall_s for r in results)  # shards run side by side
    answered = sum(r.traces_per_s * r.wall_s for r in results)
    sent = sum(r.requests_per_s * r.wall_s for r in results)
    return DistillResult(
        traces_uri=out.path(TRACES),
        problems=total("problems"),
        traces=len(traces),
        tokens=sum(t.tokens for t in traces),
        finish_reasons=added("finish_reasons"),
        teacher=results[0].teacher,
        by_teacher=added("by_teacher"),
        generation_key=results[0].generation_key,
        shard_index=0,
        num_shards=1,
        prompt_template=results[0].prompt_template,
        resumed=total("resumed"),
        requests=total("requests"),
        cache_hits=total("cache_hits"),
        failed=len(failures),
        failures_by_kind=added("failures_by_kind"),
        errors_by_kind=added("errors_by_kind"),
        prompt_tokens=total("prompt_tokens"),
        completion_tokens=total("completion_tokens"),
        tokens_per_s=total("completion_tokens") / wall if wall > 0 else 0.0,
        requests_per_s=sent / wall if wall > 0 else 0.0,
        traces_per_s=answered / wall if wall > 0 else 0.0,
        mean_latency_s=(
            sum(r.mean_latency_s * r.requests for r in results) / total("requests")
            if total("requests")
            else 0.0
        ),
        wall_s=wall,
        failures_uri=out.path(FAILURES),
        rejected=total("rejected"),
        report_md=out.path(REPORT_MD),
        report_html=out.path(REPORT_HTML),
    )


def merged_logits(results: list[DistillResult]) -> LogitsSummary | None:
    """The shards' logits as one summary (their Parquet files in shard order, which stay where they are)."""
    found = [r.logits for r in results if r.logits is not None]
    if not found:
        return None
    if len(found) != len(results) or len({(f.tokenizer_fingerprint, f.top_k) for f in found}) != 1:
        raise DistilflowError(
            "distill shards disagree on logits (some have none, or different tokenizers or top_k); rerun the "
            "fan-out with one config"
        )
    return found[0].model_copy(
        update={
            "files": [f for s in found for f in s.files],
            "rows": sum(s.rows for s in found),
            "tokens": sum(s.tokens for s in found),
            "bytes": sum(s.bytes for s in found),
        }
    )


def merge(output_uri: str, shard_uris: list[str]) -> DistillResult:
    """Merge the outputs of a fanned-out distill into one output at ``output_uri``.

    Refuses (naming every missing one) unless each shard has its completion marker, and unless the
    shards were made with the same settings and are exactly shards 0..N-1 of N. The traces are
    concatenated in shard order (the problems' order), failures likewise; counts and tokens add up.
    """
    results, traces, failures = read_shards(shard_uris)
    out = StageOutput(output_uri, "distill")
    if out.is_complete():
        uris.remove(out.path("_COMPLETE"))
    traces_uri, failures_uri = out.path(TRACES), out.path(FAILURES)
    write_jsonl(traces_uri, traces)
    write_jsonl(failures_uri, failures)
    result = with_logits(merged_result(results, traces, failures, out), merged_logits(results))
    summary = [("merged shards", str(len(shard_uris)))]
    uris.write_text(result.report_md, report.render_markdown(result, traces, None, summary))
    uris.write_text(result.report_html, report.render_html(result, traces, None, summary))
    out.finish(
        result,
        inputs={f"shard_{i}": u for i, u in enumerate(shard_uris)},
        outputs={
            "traces": traces_uri,
            "failures": failures_uri,
            "report_md": REPORT_MD,
            "report_html": REPORT_HTML,
        }
        | ({"logits": ", ".join(result.logits.files)} if result.logits else {}),
        counts={"shards": len(shard_uris)},
        metrics=per_trace(result),
    )
    return result
