"""Records from data in another layout: JSONL or Parquet files (local, object storage or
``hf://datasets/...``) whose columns are mapped onto distilflow's records.

A source is a URI (a file in distilflow's own record format, JSONL or Parquet, read as it is) or a
``SourceSpec`` mapping: ``uri`` (a file, a folder or a glob such as ``.../data/train-*.parquet``),
``columns`` (distilflow field -> source column; a dotted path reaches into structs and lists:
``conversations.0.value``), ``constants`` (fields every row shares, e.g. ``teacher``), ``explode``
(a list column whose elements become one record each: OmniThought keeps every chain of thought of a
question in its ``reasoning`` list), ``score_ranges`` (the scale a corpus scores RV/CD/logic on,
mapped linearly onto distilflow's: RV and CD 0-9, logic 0-1; a score outside distilflow's scale is
refused unless mapped) and ``preset`` (the layout of a released corpus, see ``PRESETS``).

Derived when a layout has no such column: a problem's id is ``p-`` and the first 12 hex digits of
the sha256 of its text (stable across files and shards); a trace's ``sample`` is its index in the
exploded list (else 0) and its id ``<problem_id>/<teacher>/<sample>``; ``tokens`` 0 (unknown),
``finish_reason`` ``stop``. A ``response`` column holding a whole reply is split into ``reasoning``
and ``content`` at its ``<think>...</think>`` block (``distilflow.teachers.protocol.split_reasoning``).
Every row is validated; errors name the file and the line (JSONL) or row (Parquet). Rows in
distilflow's own columns are validated strictly, JSONL or Parquet alike (a number where text belongs
is refused); through a mapping a number lands as text (a corpus's numeric answer column, say).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterator
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, model_validator

from distilflow import uri as uris
from distilflow.config import UNION_TAG, BaseConfig
from distilflow.errors import RecordError
from distilflow.secrets import EnvName
from distilflow.uri import Uri

R = TypeVar("R", bound=BaseModel)

PRESETS: dict[str, dict[str, Any]] = {
    # alibaba-pai/OmniThought (Cai et al. 2025, arXiv:2505.10937; dataset card): one row per
    # `question`; its `reasoning` list holds the chains of thought, each with `thought`, `solution`,
    # `full_response`, `teacher`, `thought_correctness_verify` (the judge's verdict on the reasoning's
    # validity) and `Reasoning_Verbosity` / `Cognitive_Difficulty` structs {level 0-9, judge}.
    "omnithought": {
        "explode": "reasoning",
        "columns": {
            "problem": "question",
            "reasoning": "reasoning.thought",
            "content": "reasoning.solution",
            "teacher": "reasoning.teacher",
            "rv": "reasoning.Reasoning_Verbosity.level",
            "cd": "reasoning.Cognitive_Difficulty.level",
            "logic": "reasoning.thought_correctness_verify",
            "judge": "reasoning.Cognitive_Difficulty.judge",
        },
        "score_ranges": {"rv": [0, 9], "cd": [0, 9], "logic": [0, 1]},
    },
    # open-thoughts/OpenThoughts-114k, config `metadata` (dataset card): `problem`, `deepseek_reasoning`,
    # `deepseek_solution`, `ground_truth_solution`, `domain`, `source`; answers by DeepSeek-R1.
    "openthoughts": {
        "columns": {
            "problem": "problem",
            "reasoning": "deepseek_reasoning",
            "content": "deepseek_solution",
            "reference": "ground_truth_solution",
            "answer": "ground_truth_solution",
            "domain": "domain",
        },
        "constants": {"teacher": "deepseek-r1"},
    },
    # open-thoughts/OpenThoughts3-1.2M (dataset card): `difficulty`, `source`, `domain` and
    # `conversations` [{from: human, value}, {from: gpt, value: "<think>...</think>answer"}]; by QwQ-32B.
    "openthoughts3": {
        "columns": {
            "problem": "conversations.0.value",
            "response": "conversations.1.value",
            "domain": "domain",
        },
        "constants": {"teacher": "qwq-32b"},
    },
    # AI-MO/NuminaMath-1.5 (dataset card): `problem`, `solution`, `answer`, `problem_type`,
    # `question_type`, `problem_is_valid`, `solution_is_valid`, `source`, `synthetic`.
    "numinamath": {
        "columns": {"problem": "problem", "answer": "answer", "reference": "answer", "content": "solution"},
        "constants": {"domain": "math", "teacher": "numinamath"},
    },
}
"""Column layouts of released corpora (sources named beside each). ``columns`` entries a record kind has
no field for are skipped (a preset serves problems and traces alike)."""

SCALES = {"rv": 9.0, "cd": 9.0, "logic": 1.0}
"""Top of distilflow's scale of each score (RV and CD 0-9, logic 0-1; OmniThought's scales)."""

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
PSEUDO_COLUMNS = ("response",)
MAX_REPORTED = 20
BATCH_ROWS = 1024


class SourceSpec(BaseConfig):
    """Where records come from and how the source's columns map onto distilflow's record fields."""

    uri: Uri = Field(description="A file, a folder (every .jsonl/.parquet in it) or a glob (train-*.parquet)")
    format: Literal["auto", "jsonl", "parquet"] = Field(
        "auto", description="auto: from each file's suffix (.jsonl/.json/.ndjson or .parquet/.pq)"
    )
    preset: Literal["omnithought", "openthoughts", "openthoughts3", "numinamath"] | None = Field(
        None,
        description="The layout of a released corpus (sources.PRESETS); columns and constants given here win",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="distilflow field -> source column (dotted paths reach into structs and lists); "
        "'response' names a whole reply to split into reasoning and content at its <think> block",
    )
    constants: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Fields every record shares, e.g. {teacher: deepseek-r1}"
    )
    explode: str | None = Field(
        None,
        description="A list column whose elements become one record each (columns reach them by its name)",
    )
    score_ranges: dict[Literal["rv", "cd", "logic"], list[float]] = Field(
        default_factory=dict,
        description="The [low, high] scale the source scores rv/cd/logic on, mapped linearly onto RV/CD 0-9 and "
        "logic 0-1; a score outside distilflow's scale without a range here is refused",
    )
    token_env: EnvName | None = Field(
        None, description="hf:// only: the environment variable holding the hub token (default HF_TOKEN)"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") not in PRESETS:
            return data
        preset = PRESETS[data["preset"]]
        merged = dict(data)
        for key in ("columns", "constants", "score_ranges"):
            merged[key] = {**preset.get(key, {}), **(data.get(key) or {})}
        if "explode" in preset and data.get("explode") is None:
            merged["explode"] = preset["explode"]
        return merged

    @model_validator(mode="after")
    def _check(self) -> SourceSpec:
        bad = {k: v for k, v in self.score_ranges.items() if len(v) != 2 or v[0] >= v[1]}
        if bad:
            raise ValueError(f"score_ranges {bad}: each needs [low, high] with low < high, e.g. rv: [1, 10]")
        return self

    def mapped(self) -> bool:
        """Whether anything is mapped (else the file is read as distilflow's own records)."""
        return bool(self.columns or self.constants or self.explode or self.score_ranges)


def _source_kind(value: Any) -> str:
    return f"{UNION_TAG}mapping" if isinstance(value, (dict, SourceSpec)) else f"{UNION_TAG}uri"


Source = Annotated[
    Annotated[Uri, Tag(f"{UNION_TAG}uri")] | Annotated[SourceSpec, Tag(f"{UNION_TAG}mapping")],
    Discriminator(_source_kind),
]
"""A config field holding a source: a URI of distilflow records, or a ``SourceSpec`` mapping (a dict).
Only the member the value's kind picks is tried, so an error names one problem at the field's path."""


def as_spec(source: str | SourceSpec | dict[str, Any]) -> SourceSpec:
    if isinstance(source, SourceSpec):
        return source
    if isinstance(source, dict):
        return SourceSpec.model_validate(source)
    return SourceSpec(uri=source)


def describe(source: str | SourceSpec | dict[str, Any]) -> str:
    """How messages name a source: its URI, and its preset or mapping."""
    spec = as_spec(source)
    if spec.preset:
        return f"{spec.uri} ({spec.preset} layout)"
    return f"{spec.uri} (mapped columns)" if spec.mapped() else spec.uri


def file_format(uri: str, fmt: str = "auto") -> str:
    """``jsonl`` or ``parquet`` for one file."""
    if fmt != "auto":
        return fmt
    suffix = os.path.splitext(uri.rstrip("/"))[1].lower()
    if suffix not in SUFFIXES:
        raise RecordError(
            f"{uri}: cannot tell the format from the suffix {suffix or '(none)'!r}; name a .jsonl or .parquet "
            "file, or set format: jsonl|parquet"
        )
    return SUFFIXES[suffix]


def expand(spec: SourceSpec) -> list[str]:
    """The files of a source: the file itself, every record file of a folder, or a glob's matches (sorted)."""
    uri = spec.uri
    scheme = uris.scheme(uri)
    if not any(ch in uri for ch in "*?[") and os.path.splitext(uri.rstrip("/"))[1].lower() in SUFFIXES:
        return [uri]
    fs, path = uris.filesystem(uri, spec.token_env)
    folder = False
    try:
        if any(ch in uri for ch in "*?["):
            found = fs.glob(path)
        elif fs.isdir(path):
            folder = True
            found = [p for p in fs.find(path) if os.path.splitext(p)[1].lower() in SUFFIXES]
        else:
            return [uri]
    except FileNotFoundError as exc:
        raise RecordError(f"{uri}: not found ({exc})") from None
    if not found and folder:
        raise RecordError(
            f"{uri} is a folder with no .jsonl or .parquet file in it; give a JSONL file (one JSON object per "
            "line), a Parquet file, or a folder or glob of them"
        )
    if not found:
        raise RecordError(f"{uri}: matches no .jsonl or .parquet file")
    prefix = "" if scheme == "file" else f"{scheme}://"
    return [prefix + p for p in sorted(found)]


def _get(row: Any, path: str) -> Any:
    """The value at a dotted path (dict keys, list indexes); KeyError when a step is missing."""
    value = row
    for step in path.split("."):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        else:
            raise KeyError(step)
    return value


def _top_columns(spec: SourceSpec) -> list[str]:
    """The top-level columns the mapping reads (Parquet reads only those)."""
    wanted = {path.split(".", 1)[0] for path in spec.columns.values()}
    return sorted(wanted | ({spec.explode} if spec.explode else set()))


def _iter_jsonl_rows(uri: str, spec: SourceSpec) -> Iterator[tuple[str, Any]]:
    import json

    data = _read(uri, spec)
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield f"{uri}:{lineno}", json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield f"{uri}:{lineno}", RecordError(f"{uri}:{lineno}: not a JSON line ({exc})")


def _read(uri: str, spec: SourceSpec) -> bytes:
    fs, path = uris.filesystem(uri, spec.token_env)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise RecordError(f"{uri}: file not found") from None


def _iter_parquet_rows(uri: str, spec: SourceSpec) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    fs, path = uris.filesystem(uri, spec.token_env)
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError:
        raise RecordError(f"{uri}: file not found") from None
    with handle:
        try:
            parquet = pq.ParquetFile(handle)
        except Exception as exc:  # pyarrow's ArrowInvalid: not a Parquet file
            raise RecordError(f"{uri}: not a Parquet file ({exc})") from None
        names = parquet.schema_arrow.names
        wanted = _top_columns(spec) if spec.mapped() else None
        missing = [c for c in wanted or [] if c not in names]
        if missing:
            raise RecordError(
                f"{uri}: no column {', '.join(map(repr, missing))} (the file has {', '.join(names)}); fix the "
                "source's columns mapping or preset"
            )
        row = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            for record in batch.to_pylist():
                row += 1
                yield f"{uri}:row {row}", record


def iter_raw(uri: str, spec: SourceSpec) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` of one file: ``where`` is ``file:line`` (JSONL) or ``file:row N`` (Parquet)."""
    if file_format(uri, spec.format) == "parquet":
        return _iter_parquet_rows(uri, spec)
    return _iter_jsonl_rows(uri, spec)


def check_mapping(spec: SourceSpec, model: type[BaseModel]) -> None:
    """Refuse, before reading, a mapping that cannot fill ``model``'s required fields."""
    fields = model.model_fields
    given = {k for k in spec.columns if k in fields or k in PSEUDO_COLUMNS} | set(spec.constants)
    if "response" in spec.columns:
        given |= {"reasoning", "content"}
    unknown = sorted(set(spec.constants) - set(fields))
    if unknown and spec.preset is None:
        raise RecordError(
            f"{spec.uri}: constants {unknown} are no {model.__name__} field; fields: {', '.join(fields)}"
        )
    if spec.preset is None:
        stray = sorted(k for k in spec.columns if k not in fields and k not in PSEUDO_COLUMNS)
        if stray:
            raise RecordError(
                f"{spec.uri}: columns maps {stray}, which {model.__name__} has no field for; fields: {', '.join(fields)}"
            )
    required = {name for name, info in fields.items() if info.is_required()}
    missing = sorted(required - given - _derivable(model, given))
    if missing:
        raise RecordError(
            f"{describe(spec)}: no column gives {model.__name__} field(s) {missing}; map them, e.g. "
            f"columns: {{{missing[0]}: <column>}} (or constants: {{{missing[0]}: <value>}})"
        )


def _derivable(model: type[BaseModel], given: set[str]) -> set[str]:
    fields = model.model_fields
    derived = {"id"} if "problem" in given and "id" in fields else set()
    if "problem_id" in fields:  # its id comes from the problem, the teacher and the sample
        derived |= {"id", "problem_id", "sample", "tokens", "finish_reason", "reasoning", "content"}
    if "kept" in fields:
        derived |= {"kept", "correct", "judge"}
    return derived


def problem_id(text: str) -> str:
    """The id a problem without one gets: stable for the same text in any file or shard."""
    return "p-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _score(name: str, value: Any, spec: SourceSpec) -> Any:
    """A score on distilflow's scale: a source range mapped linearly; outside the scale unmapped is refused."""
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        return value  # the record's validation names the bad value
    top = SCALES[name]
    if name in spec.score_ranges:
        low, high = spec.score_ranges[name]
        if not low <= value <= high:
            raise ValueError(f"{name}={value} is outside the source's declared range [{low}, {high}]")
        return round((value - low) / (high - low) * top, 6)
    if not 0 <= value <= top:
        raise ValueError(
            f"{name}={value} is outside distilflow's {name} scale 0-{top:g}: this source scores on another scale; "
            f"map it with score_ranges: {{{name}: [LOW, HIGH]}}"
        )
    return float(value)


def _fields(raw: Any, spec: SourceSpec, model: type[BaseModel], sample: int | None) -> dict[str, Any]:
    """A record's fields from one (exploded) source row, before validation."""
    from distilflow.teachers.protocol import split_reasoning

    fields = model.model_fields
    if not spec.columns and isinstance(raw, dict):  # distilflow's own columns, in a Parquet file say
        out: dict[str, Any] = {k: v for k, v in raw.items() if k in fields}
    else:
        out = {}
    out |= {k: v for k, v in spec.constants.items() if k in fields}
    for name, path in spec.columns.items():
        if name not in fields and name not in PSEUDO_COLUMNS:
            continue
        try:
            value = _get(raw, path)
        except KeyError:
            if name in fields and fields[name].is_required():
                raise ValueError(f"column {path!r} (for {name}) is missing") from None
            continue
        if name == "response":
            reasoning, content = split_reasoning(str(value or ""))
            out.setdefault("reasoning", reasoning)
            out.setdefault("content", content)
        else:
            out[name] = value
    for name in SCALES:
        if name in out and name in fields:
            out[name] = _score(name, out[name], spec)
    if spec.mapped():  # a mapped column's number becomes text; distilflow's own columns stay strict
        for name, value in list(out.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and _is_text(fields[name]):
                out[name] = str(value)
    return _defaults(out, model, sample)


def _is_text(info: Any) -> bool:
    return "str" in repr(info.annotation) and "int" not in repr(info.annotation)


def _defaults(out: dict[str, Any], model: type[BaseModel], sample: int | None) -> dict[str, Any]:
    fields = model.model_fields
    text = out.get("problem")
    if "problem_id" in fields:
        out.setdefault("problem_id", problem_id(str(text)) if text is not None else None)
        out.setdefault("sample", sample or 0)
        out.setdefault("reasoning", "")
        out.setdefault("content", "")
        out.setdefault("tokens", 0)
        out.setdefault("finish_reason", "stop")
        out.setdefault("id", f"{out['problem_id']}/{out.get('teacher')}/{out['sample']}")
    elif "id" in fields and text is not None:
        out.setdefault("id", problem_id(str(text)))
    if "kept" in fields:
        out.setdefault("kept", False)
        out.setdefault("correct", None)
        out.setdefault("judge", "annotated")
    return out


def _exploded(raw: Any, spec: SourceSpec) -> Iterator[tuple[Any, int | None]]:
    if not spec.explode:
        yield raw, None
        return
    items = raw.get(spec.explode) if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"column {spec.explode!r} (explode) is not a list")
    for i, item in enumerate(items):
        yield {**raw, spec.explode: item}, i


def _mapped_records(spec: SourceSpec, model: type[R], errors: list[str]) -> Iterator[R]:
    """Records of a mapped source or of Parquet files; distilflow's own columns are validated strictly,
    as its JSONL is (``records.iter_jsonl``): no number taken as text."""
    from distilflow.records import describe as describe_error

    strict = not spec.mapped()
    for uri in expand(spec):
        for where, raw in iter_raw(uri, spec):
            if isinstance(raw, Exception):
                errors.append(str(raw))
                continue
            try:
                for row, sample in _exploded(raw, spec):
                    yield model.model_validate(_fields(row, spec, model, sample), strict=strict)
            except ValidationError as exc:
                errors.append(f"{where}: {model.__name__} {describe_error(exc)}")
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
            if len(errors) >= MAX_REPORTED:
                return


def iter_records(
    source: str | SourceSpec | dict[str, Any], model: type[R], unique_ids: bool = True
) -> Iterator[R]:
    """Validated ``model`` records of a source, streamed; RecordError lists the bad rows as ``file:line``
    / ``file:row N`` (after the rows before them were yielded: a stage fails before it finishes)."""
    from distilflow import records

    spec = as_spec(source)
    files = expand(spec)
    if not spec.mapped() and all(file_format(f, spec.format) == "jsonl" for f in files):
        for uri in files:
            yield from records.iter_jsonl(uri, model, unique_ids=unique_ids)
        return
    if spec.mapped():
        check_mapping(spec, model)
    errors: list[str] = []
    seen: set[str] = set()
    for record in _mapped_records(spec, model, errors):
        rid = getattr(record, "id", None)
        if unique_ids and rid is not None:
            if rid in seen:
                errors.append(
                    f"{describe(spec)}: duplicate id {rid!r}; ids must be unique (map an id column)"
                )
                continue
            seen.add(rid)
        yield record
    if errors:
        more = " (stopped there)" if len(errors) >= MAX_REPORTED else ""
        raise RecordError(f"{len(errors)} bad row(s){more}:\n  " + "\n  ".join(errors[:MAX_REPORTED]))


def read_records(
    source: str | SourceSpec | dict[str, Any],
    model: type[R],
    unique_ids: bool = True,
    allow_empty: bool = False,
) -> list[R]:
    """All records of a source (``iter_records``); no records at all is an error unless ``allow_empty``."""
    rows = list(iter_records(source, model, unique_ids=unique_ids))
    if not rows and not allow_empty:
        raise RecordError(f"{describe(source)}: no records; the source is empty")
    return rows


def source_uri(source: str | SourceSpec | dict[str, Any]) -> str:
    """The URI of a source (for manifests and messages)."""
    return as_spec(source).uri


def is_record_file(uri: str) -> bool:
    """Whether ``uri`` names one record file (by suffix), rather than a stage output folder."""
    return posixpath.splitext(uri.rstrip("/"))[1].lower() in SUFFIXES
