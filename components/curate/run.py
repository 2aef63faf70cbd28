"""The ``curate`` stage: judge, verify and select chains of thought; build SFT and preference data.

Streams ``<data_uri>/traces.jsonl`` from a finished ``distill`` output. An LLM judge scores every
trace for Reasoning Verbosity (RV, 0-9) and Cognitive Difficulty (CD, 0-9) with OmniThought's
rubrics (Cai et al. 2025, arXiv:2505.10937) and for logical soundness (0/1); final answers are
checked against the reference with ``distilflow.answers``. Selection, mixing, deduplication,
decontamination and preference pairs then run over columns in two passes of the judged rows
(``columnar.select_file``; the rules are documented in ``select.py``, whose streaming
``select_stream`` is the reference the tests compare it with). With ``crv: true`` each judged batch goes through CRV refinement
first (``crv.py``): verified rewrites replace the original trace and are scored again.

Every judge, critic and rewrite answer goes through the content-addressed teacher cache
(``judging.CachedTeacher``, default ``<output_uri>/cache``) as it arrives: a rerun after a kill
or a failed request re-sends none of the judgments already received. A judgment that cannot be
read (generate mode: no ``<score>`` on the scale; logprobs mode: the score digits carry less than
``judge.min_digit_mass`` of the judge's next-token probability) leaves its trace unscored and is
written to ``judge_failures`` with the reason, never guessed.

Outputs, as shards ``<kind>-NNNNN-of-NNNNN.jsonl`` of at most ``shard_rows`` rows listed in the
manifest (``result.shards``; read them with ``distilflow.records.iter_output_rows``) and, with
``single_files``, also whole as ``<kind>.jsonl``: ``scored`` (every judged trace with ``kept`` and
``dropped_by``), ``sft`` (kept traces as chats, in curriculum order when asked), ``preference``
(best-vs-worst pairs per problem, with CogPO's beta when asked), ``judge_failures``. Beside them
``selection.json`` (counts, histograms), ``report.html``, the manifest and, last, the marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from distilflow import answers
from distilflow import uri as uris
from distilflow.components.curate import report, shards
from distilflow.components.curate.columnar import select_file
from distilflow.components.curate.config import FORMAT_TEMPLATES, JUDGE_TEMPLATES, CurateConfig
from distilflow.components.curate.corpus import annotator, load_corpus
from distilflow.components.curate.select import filter_flow, iter_lines
from distilflow.errors import RecordError
from distilflow.outputs import COUNT, METRIC, StageOutput, require_complete
from distilflow.progress import Progress
from distilflow.records import Scored, Trace, describe, template_tokens
from distilflow.sources import source_uri
from distilflow.teachers.cache import TeacherCache
from distilflow.teachers.cached import CachedTeacher
from distilflow.teachers.protocol import Unreadable

TRACES = "traces.jsonl"
SELECTION, REPORT = "selection.json", "report.html"
CRV_TEMPLATES = ["crv_critic_v1", "crv_expand_v1", "crv_simplify_v1"]
SCALES = {"rv": "0123456789", "cd": "0123456789", "logic": "01"}
SCALE_TEXT = {"rv": "0 to 9", "cd": "0 to 9", "logic": "0 or 1"}
SCORE_RE = re.compile(r"<score>\s*(\d+(?:\.\d+)?)\s*</score>", re.IGNORECASE)


class CurateResult(BaseModel):
    """What a curate run produced (also stored in its manifest)."""

    shards: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Shard files of each output (scored, sft, preference, judge_failures), relative to "
        "the output folder, in order",
    )
    scored_uri: str | None = Field(
        description="scored.jsonl, every judged trace with its kept flag (records.Scored); None: shards only"
    )
    sft_uri: str | None = Field(
        description="sft.jsonl (records.SftExample of kept traces); None: shards only"
    )
    preference_uri: str | None = Field(
        description="preference.jsonl (records.PreferencePair); None: shards only"
    )
    failures_uri: str | None = Field(
        description="judge_failures.jsonl, judgments that could not be read; None: shards only"
    )
    report_uri: str = Field(description="HTML report: counts per filter, RV/CD histograms and heat maps")
    traces: int = Field(description="Traces read", json_schema_extra=COUNT)
    scored: int = Field(description="Traces with all three scores", json_schema_extra=COUNT)
    kept: int = Field(description="Scored traces selection kept", json_schema_extra=COUNT)
    sft_rows: int = Field(description="SFT examples written", json_schema_extra=COUNT)
    pairs: int = Field(description="Preference pairs written", json_schema_extra=COUNT)
    judge_failures: int = Field(
        description="Traces left unscored because a judgment could not be read", json_schema_extra=COUNT
    )
    rejected_template_tokens: int = Field(
        0,
        description="Traces not judged because their problem, reasoning or answer holds chat-template "
        "control tokens (<|im_end|>, </think>, ...): as training text they would change the template's "
        "structure",
        json_schema_extra=COUNT,
    )
    judge_failures_by_kind: dict[str, int] = Field(
        default_factory=dict,
        description="Unreadable judgments per judged quantity (rv, cd, logic)",
        json_schema_extra={**COUNT, "each": "judge_failures_{}"},
    )
    judge_requests: int = Field(
        0,
        description="Answers asked of the judge/rewriter in this run (cache misses)",
        json_schema_extra=COUNT,
    )
    cache_hits: int = Field(
        0, description="Answers taken from the teacher cache without a request", json_schema_extra=COUNT
    )
    judge_tokens: int = Field(
        0,
        description="Completion tokens the judge/rewriter generated in this run (1 per logprobs judgment)",
        json_schema_extra=COUNT,
    )
    correct: int = Field(description="Traces whose answer matches the reference", json_schema_extra=COUNT)
    incorrect: int = Field(
        description="Traces whose answer does not match the reference", json_schema_extra=COUNT
    )
    unverified: int = Field(description="Traces without a reference answer", json_schema_extra=COUNT)
    dropped: dict[str, int] = Field(
        description="Scored traces dropped per selection filter (the first that failed)",
        json_schema_extra=COUNT,
    )
    mean_rv: float | None = Field(
        description="Mean reasoning verbosity of scored traces", json_schema_extra=METRIC
    )
    mean_cd: float | None = Field(
        description="Mean cognitive difficulty of scored traces", json_schema_extra=METRIC
    )
    judge: str = Field(description="Name of the judge")
    templates: list[str] = Field(description="Versioned judge (and CRV) prompt templates used")
    answer_checker: str = Field(description="math-verify or normalised-string")


def flow_metrics(result: CurateResult) -> dict[str, float]:
    """Metrics beyond the result's own: the keep and correctness rates, and rows in and out overall
    and at each selection filter (in the order the filters apply)."""
    checked = result.correct + result.incorrect
    metrics: dict[str, float] = {
        "keep_rate": result.kept / result.scored if result.scored else 0.0,
        "correct_rate": result.correct / checked if checked else 0.0,
        "rows_in": result.scored,
        "rows_out": result.kept,
    }
    for name, rows_in, rows_out in filter_flow(result.scored, result.dropped):
        metrics |= {f"{name}_in": rows_in, f"{name}_out": rows_out}
    return metrics


def judge_chats(traces: list[Trace], kind: str, mode: str) -> list[list[dict]]:
    """One single-turn chat per trace asking the judge for ``kind`` (rv, cd or logic)."""
    from distilflow import templates

    rubric = templates.load(JUDGE_TEMPLATES[kind])
    output_format = templates.load(FORMAT_TEMPLATES[mode]).render(scale=SCALE_TEXT[kind])
    return [
        [
            {
                "role": "user",
                "content": rubric.render(
                    problem=t.problem,
                    reasoning=t.reasoning or "(none: the reply has no separate reasoning)",
                    answer=t.content or "(none)",
                    output_format=output_format,
                ),
            }
        ]
        for t in traces
    ]


def expected_score(probs: dict[str, float]) -> float:
    """The expected value of a digit distribution (OmniThought's scoring from next-token probabilities)."""
    return sum(int(digit) * p for digit, p in probs.items())


def _failure(trace: Trace, kind: str, reason: str, judgment: str, finish_reason: str | None) -> dict:
    return {
        "id": trace.id,
        "kind": kind,
        "reason": reason,
        "judgment": judgment[-2000:],
        "finish_reason": finish_reason,
    }


def score_logprobs(
    judge: CachedTeacher, traces: list[Trace]
) -> tuple[list[dict[str, float] | None], list[dict]]:
    """Expected scores from the judge's next-token digit distribution (all kinds in one round of
    requests); a trace with an unreadable judgment (``teachers.protocol.Unreadable``: too little of
    the probability on the score digits) gets None and a failure row with the reason."""
    kinds = list(SCALES)
    chats = [chat for kind in kinds for chat in judge_chats(traces, kind, "logprobs")]
    probs = judge.digit_probs(chats, [SCALES[kind] for kind in kinds for _ in traces])
    scores: list[dict[str, float] | None] = [{} for _ in traces]
    failures = []
    for k, kind in enumerate(kinds):
        for i, trace in enumerate(traces):
            p = probs[k * len(traces) + i]
            if isinstance(p, Unreadable):
                failures.append(_failure(trace, kind, p.reason, "", None))
                scores[i] = None
            elif scores[i] is not None:
                # logic: P("1") over {"0","1"}, the judge's confidence that the reasoning is sound.
                scores[i][kind] = p["1"] if kind == "logic" else expected_score(p)  # type: ignore[index]
    return scores, failures


def parse_score(text: str, kind: str) -> float | None:
    """The last ``<score>N</score>`` in a judgment, if it is on the scale; else None (never a guess)."""
    found = SCORE_RE.findall(text)
    if not found:
        return None
    value = float(found[-1])
    top = len(SCALES[kind]) - 1
    return value if value.is_integer() and 0 <= value <= top else None


def score_generate(
    judge: CachedTeacher, traces: list[Trace]
) -> tuple[list[dict[str, float] | None], list[dict]]:
    """Scores from written judgments (all kinds in one round of requests); a trace with any
    unparseable judgment gets None and a failure row."""
    kinds = list(SCALES)
    chats = [chat for kind in kinds for chat in judge_chats(traces, kind, "generate")]
    replies = judge.generate(chats, n=1)
    scores: list[dict[str, float] | None] = [{} for _ in traces]
    failures = []
    for k, kind in enumerate(kinds):
        for i, trace in enumerate(traces):
            (reply,) = replies[k * len(traces) + i]
            text = (reply.reasoning + "\n" + reply.content).strip()
            value = parse_score(text, kind)
            if value is None:
                reason = f"no <score> on the scale ({SCALE_TEXT[kind]})"
                failures.append(_failure(trace, kind, reason, text, reply.finish_reason))
                scores[i] = None
            elif scores[i] is not None:
                scores[i][kind] = value / (len(SCALES[kind]) - 1) if kind == "logic" else value  # type: ignore[index]
    return scores, failures


def check_answer(trace: Trace) -> tuple[bool | None, str | None]:
    """(correct, predicted): the answer section against the reference; correct is None without one."""
    predicted = answers.extract_answer(trace.content, trace.domain) if trace.content.strip() else None
    if trace.reference is None:
        return None, predicted
    return (
        predicted is not None and answers.is_correct(trace.content, trace.reference, trace.domain)
    ), predicted


def _clip(value: float, top: float) -> float:
    # Expected values can overshoot the scale by a rounding error; records validate the range.
    return round(min(max(value, 0.0), top), 4)


def iter_traces(uri: str) -> Iterator[Trace]:
    """Validated traces streamed from a JSONL file; a bad line is reported as ``file:line``."""
    for lineno, line in iter_lines(uri):
        try:
            yield Trace.model_validate_json(line, strict=True)
        except ValidationError as exc:
            raise RecordError(f"{uri}:{lineno}: not a valid Trace: {describe(exc)}") from None
        except ValueError as exc:
            raise RecordError(f"{uri}:{lineno}: not a valid Trace: {str(exc).splitlines()[-1]}") from None


def count_lines(uri: str) -> int:
    return sum(1 for _ in iter_lines(uri))


@dataclass
class Judged:
    """What judging produced besides the judged rows."""

    traces: int = 0
    unscored: int = 0
    rejected: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    failure_shards: list[str] = field(default_factory=list)
    requests: int = 0
    cache_hits: int = 0
    tokens: int = 0
    cache_uri: str = ""


def _batches(items: Iterator[Trace], size: int) -> Iterator[list[Trace]]:
    batch: list[Trace] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def judge_all(config: CurateConfig, traces_uri: str, judged_path: str, workdir: str) -> Judged:
    """Score every trace and check its answer; write Scored rows (kept=False) to ``judged_path`` and
    unreadable judgments as ``judge_failures`` shards in ``workdir``, streamed; every answer goes
    through the teacher cache."""
    cache = TeacherCache(config.cache_uri or uris.join(config.output_uri, "cache"))
    total = count_lines(traces_uri)
    print(
        f"[curate] judging {total} traces with {config.judge.display_name} ({config.mode} mode; "
        f"teacher cache {cache.uri})",
        flush=True,
    )
    progress = Progress("curate", "traces judged", total=total)
    judge = CachedTeacher(config.judge, cache)
    rewriter = CachedTeacher(config.crv_rewriter, cache) if config.crv and config.crv_rewriter else judge
    judged = Judged(failures_by_kind=dict.fromkeys(SCALES, 0), cache_uri=cache.uri)
    try:
        with (
            open(judged_path, "w", encoding="utf-8") as out,
            shards.ShardWriter(workdir, "judge_failures", config.shard_rows) as bad,
        ):
            for batch in _batches(iter_traces(traces_uri), config.batch_size):
                read = len(batch)
                # hostile data: text with control tokens would change a training example's structure
                batch = [t for t in batch if not template_tokens(t.problem, t.reasoning, t.content)]
                judged.rejected += read - len(batch)
                rows, failures, unscored = (
                    _judge_batch(judge, rewriter, batch, config) if batch else ([], [], 0)
                )
                for row in rows:
                    out.write(row.model_dump_json() + "\n")
                for failure in failures:
                    bad.write(json.dumps(failure, ensure_ascii=False) + "\n")
                    judged.failures_by_kind[failure["kind"]] += 1
                judged.unscored += unscored
                judged.traces += read
                progress.update(read)
    finally:
        judge.close()
        rewriter.close()
    judged.failure_shards = bad.paths
    teachers = [judge] if rewriter is judge else [judge, rewriter]
    judged.requests = sum(t.asked for t in teachers)
    judged.tokens = sum(t.tokens for t in teachers)
    judged.cache_hits = cache.hits
    print(
        f"[curate] judged {judged.traces} traces: {judged.requests} answers asked of the model, "
        f"{judged.cache_hits} taken from the cache, {judged.tokens} tokens generated",
        flush=True,
    )
    return judged


def _score(judge: CachedTeacher, batch: list[Trace], config: CurateConfig) -> tuple[list, list[dict]]:
    return score_logprobs(judge, batch) if config.mode == "logprobs" else score_generate(judge, batch)


def _scored(trace: Trace, score: dict[str, float], judge: str, **extra: Any) -> Scored:
    correct, predicted = check_answer(trace)
    fields = trace.model_dump() | extra
    return Scored(
        **fields,
        rv=_clip(score["rv"], 9),
        cd=_clip(score["cd"], 9),
        logic=_clip(score["logic"], 1),
        correct=correct,
        predicted=predicted,
        judge=judge,
        kept=False,
    )


def _judge_batch(
    judge: CachedTeacher, rewriter: CachedTeacher, batch: list[Trace], config: CurateConfig
) -> tuple[list[Scored], list[dict], int]:
    """(scored rows, failure rows, traces left unscored) of one batch."""
    scores, failures = _score(judge, batch, config)
    name = config.judge.display_name
    rows = [_scored(t, s, name) for t, s in zip(batch, scores, strict=True) if s is not None]
    if config.crv and rows:
        rows, more = _refine(judge, rewriter, rows, config)
        failures += more
    return rows, failures, sum(s is None for s in scores)


def _refine(
    judge: CachedTeacher, rewriter: CachedTeacher, rows: list[Scored], config: CurateConfig
) -> tuple[list[Scored], list[dict]]:
    """CRV over a judged batch; verified rewrites are scored again (a rewrite that cannot be scored is
    dropped in favour of the original, and its unreadable judgments are reported)."""
    from distilflow.components.curate import crv

    refined, changed = crv.refine(rewriter, rows, config)
    failures: list[dict] = []
    if changed:
        traces = [
            Trace.model_validate(refined[i].model_dump(include=set(Trace.model_fields))) for i in changed
        ]
        scores, failures = _score(judge, traces, config)
        for failure in failures:
            failure["crv_rewrite"] = True
        for i, trace, score in zip(changed, traces, scores, strict=True):
            crv_fields = {"crv_level": refined[i].crv_level, "crv_outcome": refined[i].crv_outcome}
            if score is None:
                failed = {
                    "crv_level": refined[i].crv_level,
                    "crv_outcome": "rejected: the rewrite could not be scored",
                }
                refined[i] = rows[i].model_copy(update=failed)
            else:
                refined[i] = _scored(trace, score, config.judge.display_name, **crv_fields)
    return refined, failures


def _workdir(output_uri: str) -> str:
    # Beside the outputs when local (finished files are renamed into place); a temp folder otherwise.
    if uris.is_local(output_uri):
        path = os.path.join(uris.local_path(output_uri), "_work")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path
    return tempfile.mkdtemp(prefix="distilflow-curate-")


def _publish(local: str, uri: str) -> None:
    if uris.is_local(uri):
        os.replace(local, uris.local_path(uri))
        return
    fs, path = uris.filesystem(uri)
    fs.put_file(local, path)


def _publish_outputs(
    out: StageOutput, local: dict[str, list[str]], single_files: bool, work: str
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Publish each output's local shards under their final names (and whole, with ``single_files``)
    after removing what an earlier run left; return the shard names and the single files' URIs."""
    names: dict[str, list[str]] = {}
    singles: dict[str, str] = {}
    for kind, paths in local.items():
        shards.remove_stale(out.uri, kind, single_files)
        names[kind] = [shards.shard_name(kind, i, len(paths)) for i in range(len(paths))]
        if single_files:
            whole = os.path.join(work, f"{kind}.jsonl")
            shards.concatenate(paths, whole)
            singles[kind] = out.path(f"{kind}.jsonl")
            _publish(whole, singles[kind])
        for path, name in zip(paths, names[kind], strict=True):
            _publish(path, out.path(name))
    return names, singles


def templates_used(config: CurateConfig) -> list[str]:
    """The versioned prompt templates a run with ``config`` sends (recorded in the manifest)."""
    if config.corpus is not None:
        return []  # a scored corpus: no judge prompt is sent
    used = [*JUDGE_TEMPLATES.values(), FORMAT_TEMPLATES[config.mode]]
    if config.crv:
        used += CRV_TEMPLATES if config.crv_critic == "judge" else CRV_TEMPLATES[1:]
    return used


def run(config: CurateConfig) -> CurateResult:
    """Judge every trace, verify answers, select rows and write scored, SFT and preference shards.

    With ``corpus`` (traces already scored, e.g. OmniThought's release) it reads the given RV/CD/logic
    scores instead of judging (``corpus.py``) and selects from them without any judge call.
    Refuses a ``data_uri`` without a completion marker. A rerun of a finished output with the
    same config returns the stored result without loading the judge; a rerun of an interrupted
    one takes every judgment it had received from the teacher cache and asks only for the rest.
    """
    out = StageOutput(config.output_uri, "curate")
    manifest = out.reusable(config)
    if manifest is not None:
        print(f"[curate] {out.uri} is complete for this config; nothing to do", flush=True)
        return CurateResult.model_validate(manifest["result"])
    if config.corpus is None:
        require_complete(config.data_uri, "curate data_uri")
    traces_uri = uris.join(config.data_uri, TRACES) if config.data_uri else source_uri(config.corpus)
    out.begin(config)
    work = _workdir(config.output_uri)
    judged_path = os.path.join(work, "judged.jsonl")
    if config.corpus is None:
        judged = judge_all(config, traces_uri, judged_path, work)
    else:  # scores given: selection without a judge call
        judged = load_corpus(config, judged_path, Judged(failures_by_kind=dict.fromkeys(SCALES, 0)))
    result = select_and_publish(config, out, work, judged_path, judged)
    log_summary(result, judged.failures_by_kind)
    out.finish(
        result,
        inputs={
            "traces": traces_uri,
            "judge_templates": ",".join(result.templates),
            **({"cache": judged.cache_uri} if judged.cache_uri else {}),
        }
        | {f"decontaminate_{i}": u for i, u in enumerate(config.decontaminate_uris)},
        outputs={k: v for k, v in single_files(result).items() if v}
        | {"selection": out.path(SELECTION), "report": out.path(REPORT)},
        counts={f"{kind}_shards": len(n) for kind, n in result.shards.items()},
        metrics=flow_metrics(result),
    )
    return result


def single_files(result: CurateResult) -> dict[str, str | None]:
    """Each output's single file (None: written as shards only)."""
    return {
        "scored": result.scored_uri,
        "sft": result.sft_uri,
        "preference": result.preference_uri,
        "judge_failures": result.failures_uri,
    }


def select_and_publish(
    config: CurateConfig, out: StageOutput, work: str, judged_path: str, judged: Judged
) -> CurateResult:
    """What the stage does after judging: select over the judged rows in two passes
    (``columnar.select_file``: every row rewritten with its verdict, SFT examples, pairs), then
    ``write_outputs``; ``judged_path`` and ``work`` are consumed (``bench/bench_curate.py`` times this)."""
    files, stats = select_file(judged_path, config.selection(), work, shard_rows=config.shard_rows)
    os.remove(judged_path)
    return write_outputs(config, out, work, judged, files, stats)


def write_outputs(
    config: CurateConfig, out: StageOutput, work: str, judged: Any, files: Any, stats: Any
) -> CurateResult:
    """Write the selection summary and the report, publish the shards (and single files) from the
    work folder, and return the result."""
    judge_info = {
        "judge_failures": judged.unscored,
        "rejected_template_tokens": judged.rejected,
        "judge_failures_by_kind": judged.failures_by_kind,
        "judge_requests": judged.requests,
        "cache_hits": judged.cache_hits,
        "judge_tokens": judged.tokens,
    }
    info = stats.to_dict() | {"traces": judged.traces} | judge_info
    with open(os.path.join(work, SELECTION), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    with open(os.path.join(work, REPORT), "w", encoding="utf-8") as f:
        f.write(report.render(info, title=f"curate report: {out.uri}"))
    local = {"scored": files.scored, "sft": files.sft, "preference": files.preference}
    names, singles = _publish_outputs(
        out, local | {"judge_failures": judged.failure_shards}, config.single_files, work
    )
    for name in (SELECTION, REPORT):
        _publish(os.path.join(work, name), out.path(name))
    shutil.rmtree(work, ignore_errors=True)
    return CurateResult(
        shards=names,
        scored_uri=singles.get("scored"),
        sft_uri=singles.get("sft"),
        preference_uri=singles.get("preference"),
        failures_uri=singles.get("judge_failures"),
        report_uri=out.path(REPORT),
        traces=judged.traces,
        scored=stats.rows_in,
        kept=stats.kept,
        sft_rows=stats.sft_rows,
        pairs=stats.pairs,
        **judge_info,
        correct=stats.answers["correct"],
        incorrect=stats.answers["incorrect"],
        unverified=stats.answers["unverified"],
        dropped=stats.dropped,
        mean_rv=round(stats.sum_rv / stats.rows_in, 4) if stats.rows_in else None,
        mean_cd=round(stats.sum_cd / stats.rows_in, 4) if stats.rows_in else None,
        judge=annotator(config) if config.corpus is not None else config.judge.display_name,
        templates=templates_used(config),
        answer_checker=answers.checker(),
    )


def log_summary(result: CurateResult, failures_by_kind: dict[str, int]) -> None:
    """What was judged, kept and dropped, for the KFP log."""
    if result.rejected_template_tokens:
        print(
            f"[curate] {result.rejected_template_tokens} traces not judged: their problem, reasoning or answer "
            "holds chat-template control tokens (<|im_end|>, </think>, ...)",
            flush=True,
        )
    if result.judge_failures:
        print(
            f"[curate] {result.judge_failures} traces unscored: judgments that could not be read "
            f"({', '.join(f'{k} {v}' for k, v in failures_by_kind.items() if v)}); "
            f"see {', '.join(result.shards['judge_failures'])}",
            flush=True,
        )
    dropped = ", ".join(f"{k} {v}" for k, v in result.dropped.items() if v)
    print(
        f"[curate] scored {result.scored}/{result.traces}, kept {result.kept}, pairs {result.pairs}, "
        f"correct {result.correct} / incorrect {result.incorrect} / unverified {result.unverified}; "
        f"dropped: {dropped or 'none'}",
        flush=True,
    )
