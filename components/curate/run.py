"""The ``curate`` stage: judge, verify and select chains of thought; build SFT and preference data.

Streams ``<data_uri>/traces.jsonl`` from a finished ``distill`` output. An LLM judge scores every
trace for Reasoning Verbosity (RV, 0-9) and Cognitive Difficulty (CD, 0-9) with OmniThought's
rubrics (Cai et al. 2025, arXiv:2505.10937) and for logical soundness (0/1); final answers are
checked against the reference with ``distilflow.answers``. Selection, mixing, deduplication,
decontamination and preference pairs then run in bounded memory (``select.select_stream``; the
rules are documented there). Writes ``scored.jsonl`` (every judged trace with ``kept`` and
``dropped_by``), ``sft.jsonl`` (kept traces as chats, in curriculum order when asked),
``preference.jsonl`` (best-vs-worst pairs per problem, with CogPO's beta when asked),
``judge_failures.jsonl``, ``selection.json`` (counts, histograms) and ``report.html``. With
``crv: true`` each judged batch goes through CRV refinement first (``crv.py``): verified rewrites
replace the original trace and are scored again. Judge calls are not cached by this stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

from distilflow import answers
from distilflow import uri as uris
from distilflow.components.curate import report
from distilflow.components.curate.config import FORMAT_TEMPLATES, JUDGE_TEMPLATES, CurateConfig
from distilflow.components.curate.select import iter_lines, select_stream
from distilflow.errors import RecordError
from distilflow.outputs import StageOutput, require_complete
from distilflow.progress import Progress
from distilflow.records import Scored, Trace

TRACES = "traces.jsonl"
SCORED, SFT, PREFERENCE, FAILURES = "scored.jsonl", "sft.jsonl", "preference.jsonl", "judge_failures.jsonl"
SELECTION, REPORT = "selection.json", "report.html"
SCALES = {"rv": "0123456789", "cd": "0123456789", "logic": "01"}
SCALE_TEXT = {"rv": "0 to 9", "cd": "0 to 9", "logic": "0 or 1"}
SCORE_RE = re.compile(r"<score>\s*(\d+(?:\.\d+)?)\s*</score>", re.IGNORECASE)


class CurateResult(BaseModel):
    """What a curate run produced (also stored in its manifest)."""

    scored_uri: str = Field(description="JSONL of records.Scored: every judged trace with its kept flag")
    sft_uri: str = Field(description="JSONL of records.SftExample built from kept traces")
    preference_uri: str = Field(description="JSONL of records.PreferencePair")
    failures_uri: str = Field(description="JSONL of judgments that could not be parsed (generate mode)")
    report_uri: str = Field(description="HTML report: counts per filter, RV/CD histograms and heat maps")
    traces: int = Field(description="Traces read")
    scored: int = Field(description="Traces with all three scores")
    kept: int = Field(description="Scored traces selection kept")
    sft_rows: int = Field(description="Rows in sft.jsonl")
    pairs: int = Field(description="Rows in preference.jsonl")
    judge_failures: int = Field(description="Traces left unscored because a judgment could not be parsed")
    correct: int = Field(description="Traces whose answer matches the reference")
    incorrect: int = Field(description="Traces whose answer does not match the reference")
    unverified: int = Field(description="Traces without a reference answer")
    dropped: dict[str, int] = Field(
        description="Scored traces dropped per selection filter (the first that failed)"
    )
    mean_rv: float | None = Field(description="Mean reasoning verbosity of scored traces")
    mean_cd: float | None = Field(description="Mean cognitive difficulty of scored traces")
    judge: str = Field(description="Name of the judge")
    templates: list[str] = Field(description="Versioned judge prompt templates used")
    answer_checker: str = Field(description="math-verify or normalised-string")


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


def score_logprobs(judge: Any, traces: list[Trace]) -> list[dict[str, float]]:
    per_kind = {
        kind: judge.digit_probs(judge_chats(traces, kind, "logprobs"), SCALES[kind]) for kind in SCALES
    }
    return [
        {
            "rv": expected_score(per_kind["rv"][i]),
            "cd": expected_score(per_kind["cd"][i]),
            # P("1") over {"0","1"}: the judge's confidence that the reasoning is sound.
            "logic": per_kind["logic"][i]["1"],
        }
        for i in range(len(traces))
    ]


def parse_score(text: str, kind: str) -> float | None:
    """The last ``<score>N</score>`` in a judgment, if it is on the scale; else None (never a guess)."""
    found = SCORE_RE.findall(text)
    if not found:
        return None
    value = float(found[-1])
    top = len(SCALES[kind]) - 1
    return value if value.is_integer() and 0 <= value <= top else None


def score_generate(judge: Any, traces: list[Trace]) -> tuple[list[dict[str, float] | None], list[dict]]:
    """Scores from written judgments; a trace with any unparseable judgment gets None and a failure row."""
    scores: list[dict[str, float] | None] = [{} for _ in traces]
    failures = []
    for kind in SCALES:
        replies = judge.generate(judge_chats(traces, kind, "generate"), n=1)
        for i, (trace, (reply,)) in enumerate(zip(traces, replies, strict=True)):
            text = (reply.reasoning + "\n" + reply.content).strip()
            value = parse_score(text, kind)
            if value is None:
                failures.append(
                    {
                        "id": trace.id,
                        "kind": kind,
                        "judgment": text[-2000:],
                        "finish_reason": reply.finish_reason,
                    }
                )
                scores[i] = None
            elif scores[i] is not None:
                scores[i][kind] = value / (len(SCALES[kind]) - 1) if kind == "logic" else value
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
            yield Trace.model_validate_json(line)
        except ValueError as exc:
            raise RecordError(f"{uri}:{lineno}: not a valid Trace: {str(exc).splitlines()[-1]}") from None


def count_lines(uri: str) -> int:
    return sum(1 for _ in iter_lines(uri))


def judge_all(config: CurateConfig, traces_uri: str, judged_path: str, failures_path: str) -> tuple[int, int]:
    """Score every trace and check its answer; write Scored rows (kept=False) and failures, streamed.

    Returns (traces read, traces left unscored)."""
    from distilflow.teacher import make_teacher

    total = count_lines(traces_uri)
    print(
        f"[curate] judging {total} traces with {config.judge.display_name} ({config.mode} mode)", flush=True
    )
    progress = Progress("curate", "traces judged", total=total)
    judge = make_teacher(config.judge)
    rewriter = make_teacher(config.crv_rewriter) if config.crv and config.crv_rewriter else judge
    read = failed = 0
    batch: list[Trace] = []
    try:
        with (
            open(judged_path, "w", encoding="utf-8") as out,
            open(failures_path, "w", encoding="utf-8") as bad,
        ):
            for trace in iter_traces(traces_uri):
                batch.append(trace)
                if len(batch) < config.batch_size:
                    continue
                failed += _judge_batch(judge, rewriter, batch, config, out, bad)
                read += len(batch)
                progress.update(len(batch))
                batch = []
            if batch:
                failed += _judge_batch(judge, rewriter, batch, config, out, bad)
                read += len(batch)
                progress.update(len(batch))
    finally:
        judge.close()
        if rewriter is not judge:
            rewriter.close()
    return read, failed


def _score(judge: Any, batch: list[Trace], config: CurateConfig, bad: Any) -> list[dict[str, float] | None]:
    if config.mode == "logprobs":
        return score_logprobs(judge, batch)
    scores, failures = score_generate(judge, batch)
    for failure in failures:
        bad.write(json.dumps(failure, ensure_ascii=False) + "\n")
    return scores


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
    judge: Any, rewriter: Any, batch: list[Trace], config: CurateConfig, out: Any, bad: Any
) -> int:
    scores = _score(judge, batch, config, bad)
    name = config.judge.display_name
    rows = [_scored(t, s, name) for t, s in zip(batch, scores, strict=True) if s is not None]
    if config.crv and rows:
        rows = _refine(judge, rewriter, rows, config, bad)
    for row in rows:
        out.write(row.model_dump_json() + "\n")
    return sum(s is None for s in scores)


def _refine(judge: Any, rewriter: Any, rows: list[Scored], config: CurateConfig, bad: Any) -> list[Scored]:
    """CRV over a judged batch; verified rewrites are scored again (a rewrite that cannot be scored is
    dropped in favour of the original)."""
    from distilflow.components.curate import crv

    refined, changed = crv.refine(rewriter, rows, config)
    if changed:
        traces = [
            Trace.model_validate(refined[i].model_dump(include=set(Trace.model_fields))) for i in changed
        ]
        for i, trace, score in zip(changed, traces, _score(judge, traces, config, bad), strict=True):
            crv_fields = {"crv_level": refined[i].crv_level, "crv_outcome": refined[i].crv_outcome}
            if score is None:
                failed = {
                    "crv_level": refined[i].crv_level,
                    "crv_outcome": "rejected: the rewrite could not be scored",
                }
                refined[i] = rows[i].model_copy(update=failed)
            else:
                refined[i] = _scored(trace, score, config.judge.display_name, **crv_fields)
    return refined


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


def run(config: CurateConfig) -> CurateResult:
    """Judge every trace, verify answers, select rows and write scored, SFT and preference JSONL.

    Refuses a ``data_uri`` without a completion marker. A rerun of a finished output with the
    same config returns the stored result without loading the judge.
    """
    out = StageOutput(config.output_uri, "curate")
    manifest = out.reusable(config)
    if manifest is not None:
        print(f"[curate] {out.uri} is complete for this config; nothing to do", flush=True)
        return CurateResult.model_validate(manifest["result"])
    require_complete(config.data_uri, "curate data_uri")
    traces_uri = uris.join(config.data_uri, TRACES)
    out.begin(config)
    work = _workdir(config.output_uri)
    judged, failures = os.path.join(work, "judged.jsonl"), os.path.join(work, FAILURES)
    n_traces, failed = judge_all(config, traces_uri, judged, failures)
    lines = ((f"{judged}:{n}", line) for n, line in iter_lines(judged))
    files, stats = select_stream(lines, config.selection(), work, os.path.getsize(judged))
    info = stats.to_dict() | {"traces": n_traces, "judge_failures": failed}
    with open(os.path.join(work, SELECTION), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    with open(os.path.join(work, REPORT), "w", encoding="utf-8") as f:
        f.write(report.render(info, title=f"curate report: {out.uri}"))
    local = {SCORED: files.scored, SFT: files.sft, PREFERENCE: files.preference, FAILURES: failures}
    local |= {SELECTION: os.path.join(work, SELECTION), REPORT: os.path.join(work, REPORT)}
    paths = {name: out.path(name) for name in local}
    for name, path in local.items():
        _publish(path, paths[name])
    shutil.rmtree(work, ignore_errors=True)
    result = CurateResult(
        scored_uri=paths[SCORED],
        sft_uri=paths[SFT],
        preference_uri=paths[PREFERENCE],
        failures_uri=paths[FAILURES],
        report_uri=paths[REPORT],
        traces=n_traces,
        scored=stats.rows_in,
        kept=stats.kept,
        sft_rows=stats.sft_rows,
        pairs=stats.pairs,
        judge_failures=failed,
        correct=stats.answers["correct"],
        incorrect=stats.answers["incorrect"],
        unverified=stats.answers["unverified"],
        dropped=stats.dropped,
        mean_rv=round(stats.sum_rv / stats.rows_in, 4) if stats.rows_in else None,
        mean_cd=round(stats.sum_cd / stats.rows_in, 4) if stats.rows_in else None,
        judge=config.judge.display_name,
        templates=[*JUDGE_TEMPLATES.values(), FORMAT_TEMPLATES[config.mode]],
        answer_checker=answers.checker(),
    )
    if failed:
        print(
            f"[curate] {failed} traces unscored: judgments without a parseable <score>; see {paths[FAILURES]}"
        )
    dropped = ", ".join(f"{k} {v}" for k, v in stats.dropped.items() if v)
    print(
        f"[curate] scored {result.scored}/{result.traces}, kept {result.kept}, pairs {result.pairs}, "
        f"correct {result.correct} / incorrect {result.incorrect} / unverified {result.unverified}; "
        f"dropped: {dropped or 'none'}",
        flush=True,
    )
    counts = {
        k: getattr(result, k) for k in ("traces", "scored", "kept", "sft_rows", "pairs", "judge_failures")
    }
    out.finish(
        result=result.model_dump(),
        inputs={"traces": traces_uri, "judge_templates": ",".join(result.templates)}
        | {f"decontaminate_{i}": u for i, u in enumerate(config.decontaminate_uris)},
        outputs={name.split(".")[0]: path for name, path in paths.items()},
        counts=counts
        | {"correct": result.correct, "incorrect": result.incorrect, "unverified": result.unverified}
        | {f"dropped_{k}": v for k, v in stats.dropped.items()},
        metrics={
            "mean_rv": result.mean_rv or 0.0,
            "mean_cd": result.mean_cd or 0.0,
            "keep_rate": result.kept / result.scored if result.scored else 0.0,
            "correct_rate": result.correct / (result.correct + result.incorrect)
            if result.correct + result.incorrect
            else 0.0,
        },
    )
    return result
