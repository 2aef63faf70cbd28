"""The ``curate`` stage: judge, verify and select chains of thought; build SFT and preference data.

Reads ``<data_uri>/traces.jsonl`` from a finished ``distill`` output. An LLM judge scores every
trace for Reasoning Verbosity (RV, 0-9) and Cognitive Difficulty (CD, 0-9) with OmniThought's
rubrics (Cai et al. 2025, arXiv:2505.10937) and for logical soundness (0/1); final answers are
checked against the reference with ``distilflow.answers``. Writes ``scored.jsonl`` (every judged
trace with its ``kept`` flag), ``sft.jsonl`` (kept traces as chats), ``preference.jsonl``
(best-vs-worst pairs per problem) and ``judge_failures.jsonl``. It does not rewrite traces
(CogPO's critic/expand/simplify loop), mix by CD bins or set per-pair beta yet.
"""

from __future__ import annotations

import collections
import re
import statistics
from typing import Any

from pydantic import BaseModel, Field

from distilflow import answers
from distilflow import uri as uris
from distilflow.components.curate.config import FORMAT_TEMPLATES, JUDGE_TEMPLATES, CurateConfig
from distilflow.outputs import StageOutput, require_complete
from distilflow.progress import Progress
from distilflow.records import Message, PreferencePair, Scored, SftExample, Trace, read_jsonl, write_jsonl

TRACES = "traces.jsonl"
SCORED, SFT, PREFERENCE, FAILURES = "scored.jsonl", "sft.jsonl", "preference.jsonl", "judge_failures.jsonl"
SCALES = {"rv": "0123456789", "cd": "0123456789", "logic": "01"}
SCALE_TEXT = {"rv": "0 to 9", "cd": "0 to 9", "logic": "0 or 1"}
SCORE_RE = re.compile(r"<score>\s*(\d+(?:\.\d+)?)\s*</score>", re.IGNORECASE)
# Rank of an answer check when choosing preference pairs: verified right > unverified > wrong.
CORRECT_RANK = {True: 2, None: 1, False: 0}


class CurateResult(BaseModel):
    """What a curate run produced (also stored in its manifest)."""

    scored_uri: str = Field(description="JSONL of records.Scored: every judged trace with its kept flag")
    sft_uri: str = Field(description="JSONL of records.SftExample built from kept traces")
    preference_uri: str = Field(description="JSONL of records.PreferencePair")
    failures_uri: str = Field(description="JSONL of judgments that could not be parsed (generate mode)")
    traces: int = Field(description="Traces read")
    scored: int = Field(description="Traces with all three scores")
    kept: int = Field(description="Scored traces selection kept")
    sft_rows: int = Field(description="Rows in sft.jsonl")
    pairs: int = Field(description="Rows in preference.jsonl")
    judge_failures: int = Field(description="Traces left unscored because a judgment could not be parsed")
    correct: int = Field(description="Traces whose answer matches the reference")
    incorrect: int = Field(description="Traces whose answer does not match the reference")
    unverified: int = Field(description="Traces without a reference answer")
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


def selected(row: Scored, c: CurateConfig) -> bool:
    """Selection: RV and CD within their ranges, logic at least min_logic, and the answer policy."""
    if not (c.rv_min <= row.rv <= c.rv_max and c.cd_min <= row.cd <= c.cd_max and row.logic >= c.min_logic):
        return False
    if row.correct is None:
        return c.keep_unverified
    return row.correct or not c.require_correct


def prompt_messages(row: Trace, c: CurateConfig) -> list[Message]:
    system = [Message(role="system", content=c.system_prompt)] if c.system_prompt else []
    return system + [Message(role="user", content=row.problem)]


def assistant(row: Trace) -> Message:
    return Message(role="assistant", content=row.content, reasoning_content=row.reasoning or None)


def sft_example(row: Scored, c: CurateConfig) -> SftExample:
    return SftExample(
        id=row.id,
        messages=[*prompt_messages(row, c), assistant(row)],
        enable_thinking=c.enable_thinking,
        rv=row.rv,
        cd=row.cd,
    )


def preference_pairs(rows: list[Scored], c: CurateConfig) -> list[PreferencePair]:
    """Per problem with >= 2 scored traces: the best against the worst by (answer check, logic,
    closeness of RV to the target for the problem's CD); none when the two tie on that key."""
    groups: dict[str, list[Scored]] = collections.defaultdict(list)
    for row in rows:
        groups[row.problem_id].append(row)
    pairs = []
    for pid, group in groups.items():
        if len(group) < 2:
            continue
        cd = statistics.fmean(r.cd for r in group)
        target = min(max(c.rv_target_offset + c.rv_target_scale * cd, 0.0), 9.0)

        def key(r: Scored, target: float = target) -> tuple:
            return (CORRECT_RANK[r.correct], round(r.logic, 6), -round(abs(r.rv - target), 6))

        best, worst = max(group, key=key), min(group, key=key)
        if key(best) == key(worst):
            continue
        pairs.append(
            PreferencePair(
                id=f"{pid}/pair",
                prompt=prompt_messages(best, c),
                chosen=[assistant(best)],
                rejected=[assistant(worst)],
            )
        )
    return pairs


def _clip(value: float, top: float) -> float:
    # Expected values can overshoot the scale by a rounding error; records validate the range.
    return round(min(max(value, 0.0), top), 4)


def run(config: CurateConfig) -> CurateResult:
    """Judge every trace, verify answers, select rows and write scored, SFT and preference JSONL.

    Refuses a ``data_uri`` without a completion marker. A rerun of a finished output with the
    same config returns the stored result without loading the judge.
    """
    from distilflow.teacher import make_teacher

    out = StageOutput(config.output_uri, "curate")
    manifest = out.reusable(config)
    if manifest is not None:
        print(f"[curate] {out.uri} is complete for this config; nothing to do", flush=True)
        return CurateResult.model_validate(manifest["result"])
    require_complete(config.data_uri, "curate data_uri")
    traces_uri = uris.join(config.data_uri, TRACES)
    traces = read_jsonl(traces_uri, Trace)
    out.begin(config)
    judge_name = config.judge.display_name
    print(f"[curate] judging {len(traces)} traces with {judge_name} ({config.mode} mode)", flush=True)
    scores: list[dict[str, float] | None] = []
    failures: list[dict] = []
    progress = Progress("curate", "traces judged", total=len(traces))
    judge = make_teacher(config.judge)
    try:
        for start in range(0, len(traces), config.batch_size):
            batch = traces[start : start + config.batch_size]
            if config.mode == "logprobs":
                scores.extend(score_logprobs(judge, batch))
            else:
                got, failed = score_generate(judge, batch)
                scores.extend(got)
                failures.extend(failed)
            progress.update(len(batch))
    finally:
        judge.close()
    rows = []
    for trace, score in zip(traces, scores, strict=True):
        if score is None:
            continue
        correct, predicted = check_answer(trace)
        row = Scored(
            **trace.model_dump(),
            rv=_clip(score["rv"], 9),
            cd=_clip(score["cd"], 9),
            logic=_clip(score["logic"], 1),
            correct=correct,
            predicted=predicted,
            judge=judge_name,
            kept=False,
        )
        row.kept = selected(row, config)
        rows.append(row)
    sft = [sft_example(r, config) for r in rows if r.kept]
    pairs = preference_pairs(rows, config)
    paths = {name: out.path(name) for name in (SCORED, SFT, PREFERENCE, FAILURES)}
    write_jsonl(paths[SCORED], rows)
    write_jsonl(paths[SFT], sft)
    write_jsonl(paths[PREFERENCE], pairs)
    write_jsonl(paths[FAILURES], failures)
    checks = collections.Counter(r.correct for r in rows)
    failed_traces = sum(s is None for s in scores)
    result = CurateResult(
        scored_uri=paths[SCORED],
        sft_uri=paths[SFT],
        preference_uri=paths[PREFERENCE],
        failures_uri=paths[FAILURES],
        traces=len(traces),
        scored=len(rows),
        kept=len(sft),
        sft_rows=len(sft),
        pairs=len(pairs),
        judge_failures=failed_traces,
        correct=checks[True],
        incorrect=checks[False],
        unverified=checks[None],
        mean_rv=round(statistics.fmean(r.rv for r in rows), 4) if rows else None,
        mean_cd=round(statistics.fmean(r.cd for r in rows), 4) if rows else None,
        judge=judge_name,
        templates=[*JUDGE_TEMPLATES.values(), FORMAT_TEMPLATES[config.mode]],
        answer_checker=answers.checker(),
    )
    if failed_traces:
        print(
            f"[curate] {failed_traces} traces unscored: judgments without a parseable <score>; see {paths[FAILURES]}",
            flush=True,
        )
    print(
        f"[curate] scored {result.scored}/{result.traces}, kept {result.kept}, pairs {result.pairs}, "
        f"correct {result.correct} / incorrect {result.incorrect} / unverified {result.unverified}",
        flush=True,
    )
    counts = {
        k: getattr(result, k) for k in ("traces", "scored", "kept", "sft_rows", "pairs", "judge_failures")
    }
    out.finish(
        result=result.model_dump(),
        inputs={"traces": traces_uri, "judge_templates": ",".join(result.templates)},
        outputs={
            "scored": paths[SCORED],
            "sft": paths[SFT],
            "preference": paths[PREFERENCE],
            "failures": paths[FAILURES],
        },
        counts=counts
        | {"correct": result.correct, "incorrect": result.incorrect, "unverified": result.unverified},
        metrics={
            "mean_rv": result.mean_rv or 0.0,
            "mean_cd": result.mean_cd or 0.0,
            "keep_rate": result.kept / result.scored if result.scored else 0.0,
        },
    )
    return result
