"""JSONL records that flow between stages: problem -> trace -> scored -> sft / preference.

Readers validate every line and report ``file:line: what is wrong``; writers are atomic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distilflow import uri as uris
from distilflow.errors import ConfigError, RecordError

MAX_REPORTED = 20
MAX_LINE_BYTES = 16 * 2**20
"""Longest line one record may take: a longer one is a file that is not JSONL (or a record nobody
meant to write), reported without parsing it."""


# Chat-template control tokens: ChatML and Llama-3 style ``<|name|>`` (DeepSeek's full-width
# ``<｜name｜>`` too) and the ``<think>`` tags. Inside a problem or an answer they are not text: a
# tokenizer turns them into the special tokens that delimit turns and thinking blocks, so a row
# holding one would end a turn, open a new one or close the thinking block wherever it appears.
TEMPLATE_TOKEN_RE = re.compile(r"<[|\uff5c][^<>|\uff5c\s]{1,48}[|\uff5c]>|</?think>")


def template_tokens(*texts: str | None) -> list[str]:
    """The distinct chat-template control tokens inside ``texts`` (empty for plain data)."""
    found: dict[str, None] = {}
    for text in texts:
        for token in TEMPLATE_TOKEN_RE.findall(text or ""):
            found.setdefault(token, None)
    return list(found)


class Record(BaseModel):
    """Base of the records: unknown fields refused. Readers (``iter_jsonl``) validate strictly: every
    field has its JSON type (``"problem": 12345`` is an error naming the file, line and field, never the
    text "12345" sent to a teacher)."""

    model_config = ConfigDict(extra="forbid")


class Problem(Record):
    """A problem to distill. Extra keys in user data are ignored (kept out of later records); ids and
    answers are text: write ``"answer": "42"``, not ``42``."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, description="Unique id of the problem")
    problem: str = Field(min_length=1, description="The question text")
    answer: str | None = Field(None, description="Reference final answer, if known")
    domain: str | None = Field(None, description="math, code, science, ...")


class Trace(Record):
    """One teacher answer to one problem: reasoning kept apart from the final answer text."""

    id: str = Field(description="Unique trace id: <problem_id>/<teacher>/<sample>")
    problem_id: str = Field(description="Id of the problem answered")
    problem: str = Field(description="The question text, copied for self-contained rows")
    reference: str | None = Field(None, description="Reference answer from the problem, if any")
    domain: str | None = Field(None, description="Problem domain")
    teacher: str = Field(description="Name of the teacher that wrote it")
    sample: int = Field(ge=0, description="Sample index among the n samples of this problem")
    reasoning: str = Field(description="The chain of thought (empty if the teacher gave none)")
    content: str = Field(description="The answer section after the reasoning")
    tokens: int = Field(ge=0, description="Completion tokens the teacher spent")
    finish_reason: str = Field(description="stop, length, ...")


class Scored(Trace):
    """A trace with judge scores and answer verification."""

    rv: float = Field(ge=0, le=9, description="Reasoning verbosity 0-9 (OmniThought)")
    cd: float = Field(ge=0, le=9, description="Cognitive difficulty 0-9 (OmniThought)")
    logic: float = Field(ge=0, le=1, description="Judge's probability that the reasoning is logically sound")
    correct: bool | None = Field(description="Final answer matches the reference; null without a reference")
    predicted: str | None = Field(None, description="Final answer extracted from the trace")
    judge: str = Field(description="Name of the judge")
    kept: bool = Field(description="Whether selection kept this trace for training")
    dropped_by: str | None = Field(
        None, description="The first selection filter that dropped this trace (curate); null when kept"
    )
    crv_level: str | None = Field(
        None, description="CRV critic's label for the named student size: easy, medium or hard (null: no CRV)"
    )
    crv_outcome: str | None = Field(
        None,
        description="What CRV did: expanded, simplified, unchanged, or rejected: <why> (the original was kept)",
    )


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str
    reasoning_content: str | None = None


class SftExample(Record):
    """A chat for supervised fine-tuning; reasoning sits in ``reasoning_content``."""

    id: str = Field(description="Id of the source trace")
    messages: list[Message] = Field(min_length=2, description="The conversation, ending with the assistant")
    enable_thinking: bool | None = Field(None, description="Qwen3-style thinking mode for this example")
    rv: float | None = Field(None, description="Reasoning verbosity of the trace")
    cd: float | None = Field(None, description="Cognitive difficulty of the problem")
    curriculum_stage: int | None = Field(
        None, description="Curriculum stage (0 = easiest CD bin) when curate wrote a curriculum order"
    )


class PreferencePair(Record):
    """A DPO pair in TRL's conversational format; ``beta`` is CogPO's per-sample beta."""

    id: str = Field(description="Id of the pair")
    prompt: list[Message] = Field(min_length=1, description="Prompt messages")
    chosen: list[Message] = Field(min_length=1, description="Preferred assistant turn")
    rejected: list[Message] = Field(min_length=1, description="Dispreferred assistant turn")
    beta: float | None = Field(None, gt=0, description="Per-sample beta (CogPO); null = stage default")


R = TypeVar("R", bound=BaseModel)


JSON_TYPES = {
    str: "text",
    bool: "true/false",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}
EXPECTED = {
    "string_type": "text (a JSON string)",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "model_type": "an object",
    "dict_type": "an object",
}


def json_type(value: Any) -> str:
    """How a JSON reader would name the type of ``value``: text, a number, null, ..."""
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)


def describe(exc: ValidationError) -> str:
    """Each problem of a record as ``field 'name': expected text (a JSON string), got a number``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "record"
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] in EXPECTED:
            msg = f"expected {EXPECTED[err['type']]}, got {json_type(err.get('input'))}"
        else:
            msg = err["msg"]
        parts.append(f"field {loc!r}: {msg}")
    return "; ".join(parts)


def iter_jsonl(uri: str, model: type[R], unique_ids: bool = True) -> Iterator[R]:
    """Yield validated records from a JSONL file; raise RecordError listing bad lines as ``file:line``."""
    try:
        data = uris.read_bytes(uri)
    except FileNotFoundError:
        raise RecordError(f"{uri}: file not found") from None
    except IsADirectoryError:
        raise RecordError(
            f"{uri} is a folder; give the JSONL file inside it (one JSON object per line)"
        ) from None
    errors: list[str] = []
    seen: set[str] = set()
    good: list[R] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if len(raw) > MAX_LINE_BYTES:
            errors.append(
                f"{uri}:{lineno}: line is {len(raw)} bytes, over the {MAX_LINE_BYTES} bytes one record may "
                "take; shorten or split that record (is the file JSONL, one object per line?)"
            )
            continue
        if not raw.strip():
            continue
        try:
            # a byte-order mark (editors on Windows write one) is not part of the first record
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            errors.append(f"{uri}:{lineno}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{uri}:{lineno}: invalid JSON at column {exc.colno}: {exc.msg}")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{uri}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        try:
            rec = model.model_validate(obj, strict=True)
        except ValidationError as exc:
            errors.append(f"{uri}:{lineno}: {model.__name__} {describe(exc)}")
            continue
        rid = getattr(rec, "id", None)
        if unique_ids and rid is not None:
            if rid in seen:
                errors.append(f"{uri}:{lineno}: duplicate id {rid!r}; ids must be unique")
                continue
            seen.add(rid)
        good.append(rec)
    if errors:
        more = f"\n  ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise RecordError(f"{len(errors)} bad line(s):\n  " + "\n  ".join(errors[:MAX_REPORTED]) + more)
    yield from good


def read_jsonl(uri: str, model: type[R], unique_ids: bool = True, allow_empty: bool = False) -> list[R]:
    """Read and validate a whole JSONL file (see ``iter_jsonl``); an empty file is an error by default."""
    rows = list(iter_jsonl(uri, model, unique_ids=unique_ids))
    if not rows and not allow_empty:
        raise RecordError(f"{uri}: no records; the file is empty")
    return rows


def dumps(records: Iterable[BaseModel | dict[str, Any]]) -> str:
    lines = []
    for rec in records:
        obj = rec.model_dump(mode="json", exclude_none=False) if isinstance(rec, BaseModel) else rec
        lines.append(json.dumps(obj, ensure_ascii=False))
    return "\n".join(lines) + ("\n" if lines else "")


def write_jsonl(uri: str, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write records atomically; return how many were written."""
    recs = list(records)
    uris.write_text(uri, dumps(recs))
    return len(recs)


def output_shards(stage_uri: str, kind: str) -> list[str]:
    """The JSONL files, in order, that hold output ``kind`` (e.g. ``sft``) of a finished stage output.

    A ``.jsonl`` or ``.parquet`` URI is its own single file. Otherwise the folder's completion marker is required
    and the shards its manifest lists under ``result.shards[kind]`` are returned, or else (an output
    written before shards, or by hand) its ``<kind>.jsonl``.
    """
    from distilflow.outputs import require_complete
    from distilflow.sources import is_record_file

    if is_record_file(stage_uri):
        return [stage_uri]
    manifest = require_complete(stage_uri, f"{kind} data")
    names = ((manifest.get("result") or {}).get("shards") or {}).get(kind)
    if names is not None:
        return [uris.join(stage_uri, name) for name in names]
    single = uris.join(stage_uri, f"{kind}.jsonl")
    if not uris.exists(single):
        raise ConfigError(
            f"{stage_uri}: a finished {manifest.get('stage', 'stage')} output with neither {kind} shards in its "
            f"manifest nor {kind}.jsonl; point at the output of the stage that writes {kind} rows"
        )
    return [single]


def iter_output_rows(stage_uri: str, kind: str, model: type[R], unique_ids: bool = True) -> Iterator[R]:
    """Validated ``model`` rows of output ``kind`` of a stage (``output_shards``), one shard in memory
    at a time; ids are unique across shards unless ``unique_ids`` is False. A ``.parquet`` file of
    distilflow's columns reads as its JSONL would (``distilflow.sources``)."""
    from distilflow.sources import iter_records

    seen: set[str] = set()
    for uri in output_shards(stage_uri, kind):
        for rec in iter_records(uri, model, unique_ids=unique_ids):
            rid = getattr(rec, "id", None)
            if unique_ids and rid is not None:
                if rid in seen:
                    raise RecordError(
                        f"{uri}: duplicate id {rid!r} (also in an earlier shard); ids must be unique"
                    )
                seen.add(rid)
            yield rec
