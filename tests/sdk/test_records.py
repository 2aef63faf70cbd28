"""JSONL records: every bad line reported as ``file:line: what``, round trips, and s3:// reads."""

from __future__ import annotations

import json

import pytest

from distilflow.errors import RecordError
from distilflow.records import (
    MAX_REPORTED,
    Message,
    PreferencePair,
    Problem,
    Scored,
    SftExample,
    Trace,
    dumps,
    iter_jsonl,
    read_jsonl,
    write_jsonl,
)

TRACE = {
    "id": "p1/t/0",
    "problem_id": "p1",
    "problem": "What is 3 + 4?",
    "reference": "7",
    "domain": "math",
    "teacher": "t",
    "sample": 0,
    "reasoning": "3 plus 4 is 7.",
    "content": "\\boxed{7}",
    "tokens": 12,
    "finish_reason": "stop",
}
SCORED = {
    **TRACE,
    "rv": 3.0,
    "cd": 2.5,
    "logic": 0.9,
    "correct": True,
    "predicted": "7",
    "judge": "j",
    "kept": True,
}
SFT = {
    "id": "p1/t/0",
    "messages": [
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "\\boxed{7}", "reasoning_content": "3 plus 4 is 7."},
    ],
    "enable_thinking": True,
    "rv": 3.0,
    "cd": 2.5,
}
PAIR = {
    "id": "pair-1",
    "prompt": [{"role": "user", "content": "What is 3 + 4?"}],
    "chosen": [{"role": "assistant", "content": "7"}],
    "rejected": [{"role": "assistant", "content": "8"}],
    "beta": 0.2,
}
PROBLEM = {"id": "p1", "problem": "What is 3 + 4?", "answer": "7", "domain": "math"}

SAMPLES = [(Problem, PROBLEM), (Trace, TRACE), (Scored, SCORED), (SftExample, SFT), (PreferencePair, PAIR)]


def write_lines(tmp_path, lines: list[str | bytes], name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return str(path)


def errors_of(uri: str, model) -> list[str]:
    with pytest.raises(RecordError) as info:
        read_jsonl(uri, model)
    return [line.strip() for line in str(info.value).splitlines()[1:]]


# --- good files ------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("model", "sample"), SAMPLES, ids=lambda x: getattr(x, "__name__", ""))
def test_round_trip(tmp_path, model, sample):
    rows = [model.model_validate(sample)]
    second = dict(sample, id=sample["id"] + "-b")
    rows.append(model.model_validate(second))
    path = str(tmp_path / "rows.jsonl")
    assert write_jsonl(path, rows) == 2
    back = read_jsonl(path, model)
    assert back == rows
    assert [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == [
        r.model_dump(mode="json") for r in rows
    ]


@pytest.mark.unit
def test_round_trip_keeps_nulls_and_unicode(tmp_path):
    row = Scored.model_validate(
        {**SCORED, "correct": None, "predicted": None, "reasoning": "π ≈ 3.14 — 思考"}
    )
    path = str(tmp_path / "s.jsonl")
    write_jsonl(path, [row])
    text = (tmp_path / "s.jsonl").read_text(encoding="utf-8")
    assert "思考" in text and '"correct": null' in text  # written as UTF-8, nulls explicit
    assert read_jsonl(path, Scored) == [row]


@pytest.mark.unit
def test_blank_lines_skipped_and_crlf_accepted(tmp_path):
    body = (json.dumps(PROBLEM) + "\r\n\n   \n" + json.dumps({**PROBLEM, "id": "p2"}) + "\n\n").encode()
    path = tmp_path / "p.jsonl"
    path.write_bytes(body)
    assert [p.id for p in read_jsonl(str(path), Problem)] == ["p1", "p2"]


@pytest.mark.unit
def test_utf8_bom_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(PROBLEM).encode() + b"\n")
    assert [p.id for p in read_jsonl(str(path), Problem)] == ["p1"]


@pytest.mark.unit
def test_problem_ignores_extra_keys_and_refuses_numbers_for_text(tmp_path):
    path = write_lines(
        tmp_path, [json.dumps({"id": "1", "problem": "1+41?", "answer": "42", "source": "gsm8k"})]
    )
    (p,) = read_jsonl(path, Problem)
    assert (p.id, p.answer, p.domain) == ("1", "42", None)
    assert "source" not in p.model_dump()
    # a number where text is expected is not coerced to "42" and sent on: it names the line and field
    path = write_lines(tmp_path, [json.dumps(PROBLEM), json.dumps({"id": "2", "problem": "x", "answer": 42})])
    with pytest.raises(RecordError) as err:
        read_jsonl(path, Problem)
    assert str(err.value).splitlines()[1].strip() == (
        f"{path}:2: Problem field 'answer': expected text (a JSON string), got a number"
    )


@pytest.mark.unit
def test_write_dicts_and_empty(tmp_path):
    path = str(tmp_path / "d.jsonl")
    assert write_jsonl(path, [PROBLEM]) == 1
    assert read_jsonl(path, Problem)[0].problem == PROBLEM["problem"]
    assert dumps([]) == ""
    assert write_jsonl(path, []) == 0
    assert read_jsonl(path, Problem, allow_empty=True) == []


@pytest.mark.unit
def test_duplicate_ids_allowed_when_asked(tmp_path):
    path = write_lines(tmp_path, [json.dumps(PROBLEM), json.dumps(PROBLEM)])
    assert len(read_jsonl(path, Problem, unique_ids=False)) == 2


# --- bad files -------------------------------------------------------------------------------


@pytest.mark.unit
def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(RecordError, match=rf"{path}: no records; the file is empty"):
        read_jsonl(str(path), Problem)


@pytest.mark.unit
def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match=r"nope\.jsonl: file not found"):
        read_jsonl(str(tmp_path / "nope.jsonl"), Problem)


@pytest.mark.unit
def test_each_kind_of_bad_line_is_reported_with_file_and_line(tmp_path):
    lines: list[str | bytes] = [
        json.dumps(PROBLEM),  # 1 ok
        '{"id": "p2", "problem": ',  # 2 invalid JSON
        "[1, 2]",  # 3 not an object
        json.dumps({"id": "p4"}),  # 4 missing field
        json.dumps({"id": "p5", "problem": ["not", "text"]}),  # 5 wrong type
        b'{"id": "p6", "problem": "caf\xe9"}',  # 6 latin-1 byte
        json.dumps(PROBLEM),  # 7 duplicate id
        "",  # 8 blank: skipped, but counted
        json.dumps({"id": "", "problem": "x"}),  # 9 empty id
    ]
    path = write_lines(tmp_path, lines)
    errs = errors_of(path, Problem)
    assert len(errs) == 7
    assert errs[0].startswith(f"{path}:2: invalid JSON at column")
    assert errs[1] == f"{path}:3: expected a JSON object, got list"
    assert errs[2] == f"{path}:4: Problem field 'problem': Field required"
    assert errs[3] == f"{path}:5: Problem field 'problem': expected text (a JSON string), got a list"
    assert errs[4].startswith(f"{path}:6: not UTF-8") and "re-encode the file as UTF-8" in errs[4]
    assert errs[5] == f"{path}:7: duplicate id 'p1'; ids must be unique"
    assert errs[6].startswith(f"{path}:9: Problem field 'id': String should have at least 1 character")


@pytest.mark.unit
def test_error_header_counts_bad_lines(tmp_path):
    path = write_lines(tmp_path, ["nope", json.dumps(PROBLEM), "[]"])
    with pytest.raises(RecordError) as info:
        read_jsonl(path, Problem)
    assert str(info.value).startswith("2 bad line(s):")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("model", "sample"), [s for s in SAMPLES if s[0] is not Problem], ids=lambda x: getattr(x, "__name__", "")
)
def test_unknown_field_rejected(tmp_path, model, sample):
    path = write_lines(tmp_path, [json.dumps(sample), json.dumps({**sample, "id": "x2", "surprise": 1})])
    assert errors_of(path, model) == [f"{path}:2: {model.__name__} field 'surprise': unknown field"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("model", "sample", "field"),
    [
        (Trace, TRACE, "tokens"),
        (Scored, SCORED, "rv"),
        (SftExample, SFT, "messages"),
        (PreferencePair, PAIR, "chosen"),
    ],
    ids=["Trace", "Scored", "SftExample", "PreferencePair"],
)
def test_missing_required_field(tmp_path, model, sample, field):
    bad = {k: v for k, v in sample.items() if k != field}
    path = write_lines(tmp_path, [json.dumps(bad)])
    assert errors_of(path, model) == [f"{path}:1: {model.__name__} field {field!r}: Field required"]


@pytest.mark.unit
def test_wrong_types_and_ranges(tmp_path):
    path = write_lines(
        tmp_path,
        [
            json.dumps({**SCORED, "id": "a", "tokens": "many"}),
            json.dumps({**SCORED, "id": "b", "rv": 12}),
            json.dumps({**SCORED, "id": "c", "correct": "maybe"}),
        ],
    )
    errs = errors_of(path, Scored)
    assert errs[0] == f"{path}:1: Scored field 'tokens': expected a whole number, got text"
    assert errs[1].startswith(f"{path}:2: Scored field 'rv': Input should be less than or equal to 9")
    assert errs[2] == f"{path}:3: Scored field 'correct': expected true or false, got text"


@pytest.mark.unit
def test_nested_message_errors_name_the_position(tmp_path):
    bad_role = {**SFT, "messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}
    path = write_lines(tmp_path, [json.dumps(bad_role), json.dumps({**PAIR, "beta": 0})])
    with pytest.raises(RecordError) as info:
        read_jsonl(path, SftExample)
    assert (
        f"{path}:1: SftExample field 'messages.1.role': Input should be 'system', 'user' or 'assistant'"
        in str(info.value)
    )
    errs = errors_of(path, PreferencePair)
    assert errs[-1].startswith(f"{path}:2: PreferencePair field 'beta': Input should be greater than 0")


@pytest.mark.unit
def test_several_errors_on_one_line_are_joined(tmp_path):
    path = write_lines(tmp_path, [json.dumps({"id": "x", "problem_id": "p"})])
    (err,) = errors_of(path, Trace)
    assert err.startswith(f"{path}:1: Trace ")
    for field in ("problem", "teacher", "sample", "reasoning", "content", "tokens", "finish_reason"):
        assert f"field {field!r}: Field required" in err


@pytest.mark.unit
def test_more_than_max_errors_are_truncated_with_a_count(tmp_path):
    total = MAX_REPORTED + 7
    path = write_lines(tmp_path, ["not json"] * total)
    with pytest.raises(RecordError) as info:
        read_jsonl(path, Problem)
    msg = str(info.value)
    assert msg.startswith(f"{total} bad line(s):")
    reported = [line for line in msg.splitlines() if line.strip().startswith(f"{path}:")]
    assert len(reported) == MAX_REPORTED
    assert reported[-1].strip().startswith(f"{path}:{MAX_REPORTED}:")
    assert msg.splitlines()[-1].strip() == "... and 7 more"


@pytest.mark.unit
def test_iter_jsonl_raises_before_yielding_anything(tmp_path):
    path = write_lines(tmp_path, [json.dumps(PROBLEM), "oops"])
    it = iter_jsonl(path, Problem)
    with pytest.raises(RecordError, match=":2: invalid JSON"):
        next(it)


@pytest.mark.unit
def test_message_model():
    m = Message(role="assistant", content="7", reasoning_content="because")
    assert m.model_dump() == {"role": "assistant", "content": "7", "reasoning_content": "because"}


# --- object storage --------------------------------------------------------------------------


def test_read_and_write_s3(s3_bucket):
    uri = f"s3://{s3_bucket}/prefix/traces.jsonl"
    rows = [Trace.model_validate(TRACE), Trace.model_validate({**TRACE, "id": "p1/t/1", "sample": 1})]
    assert write_jsonl(uri, rows) == 2
    assert read_jsonl(uri, Trace) == rows


def test_s3_errors_name_the_uri(s3_bucket):
    from distilflow import uri as uris

    uri = f"s3://{s3_bucket}/prefix/bad.jsonl"
    uris.write_text(uri, json.dumps(TRACE) + "\n{broken\n")
    with pytest.raises(RecordError, match=rf"{uri}:2: invalid JSON"):
        read_jsonl(uri, Trace)
    with pytest.raises(RecordError, match=rf"s3://{s3_bucket}/prefix/none\.jsonl: file not found"):
        read_jsonl(f"s3://{s3_bucket}/prefix/none.jsonl", Trace)


def _wrong_value(annotation) -> tuple[object, str]:
    """A JSON value of the wrong type for a field, and how the error names what it got: text fields get
    a number, numbers and booleans get text or a number (lax pydantic would coerce "3", "0.5" and 1)."""
    import typing

    text = str(annotation)
    if typing.get_origin(annotation) is list or text.startswith("list["):
        return "text", "text"
    if "bool" in text:
        return 1, "a number"
    if "int" in text or "float" in text:
        return "3", "text"
    return 12345, "a number"


def _field_paths(model, prefix: str = "") -> list[tuple[str, object]]:
    """``(dotted path, annotation)`` of every field of ``model`` and of the messages inside it."""
    paths = []
    for name, info in model.model_fields.items():
        paths.append((f"{prefix}{name}", info.annotation))
        if "Message" in str(info.annotation):
            paths.extend(_field_paths(Message, f"{prefix}{name}.0."))
    return paths


def _set(row: dict, path: str, value: object) -> dict:
    row = json.loads(json.dumps(row))
    node, parts = row, path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    node[parts[-1]] = value
    return row


@pytest.mark.unit
@pytest.mark.parametrize("model,sample", SAMPLES, ids=lambda x: getattr(x, "__name__", ""))
def test_every_field_of_every_record_kind_refuses_a_wrong_type(tmp_path, model, sample):
    """Each field of each record kind the stages read, given a value of the wrong JSON type, is an error
    naming the file, the line and the field, and what was expected and got."""
    paths = _field_paths(model)
    assert len(paths) >= 4
    for path, annotation in paths:
        value, got = _wrong_value(annotation)
        lines = [json.dumps(sample), json.dumps(_set(sample, path, value))]
        uri = write_lines(tmp_path, lines, name=f"{model.__name__}.jsonl")
        with pytest.raises(RecordError) as err:
            read_jsonl(uri, model, unique_ids=False)
        (line,) = [x.strip() for x in str(err.value).splitlines()[1:]]
        assert line.startswith(f"{uri}:2: {model.__name__} field '{path}': "), (path, line)
        if "Literal" not in str(annotation):
            assert line.endswith(f"got {got}"), (path, line)


@pytest.mark.unit
def test_every_field_of_an_evaluation_problem_refuses_a_wrong_type(tmp_path):
    """Your own evaluation file (benchmark ``jsonl``) is read as strictly, through ``load_benchmark``."""
    from distilflow.components.evaluate.benchmarks import EvalProblem, load_benchmark
    from distilflow.components.evaluate.config import BenchmarkConfig, EvaluateConfig

    good = {"id": "e1", "problem": "1+1?", "answer": "2", "domain": "math", "difficulty": "easy"}
    good |= {
        "choices": ["2", "3"],
        "tests": [{"input": "", "output": "2", "kind": "stdin"}],
        "func_name": "f",
    }
    config = EvaluateConfig.from_dict({"output_uri": str(tmp_path / "out"), "benchmarks": ["math500"]})
    for name, info in EvalProblem.model_fields.items():
        value, got = _wrong_value(info.annotation)
        uri = write_lines(tmp_path, [json.dumps(good), json.dumps({**good, "id": "e2", name: value})])
        with pytest.raises(RecordError) as err:
            load_benchmark(BenchmarkConfig(name="jsonl", source=uri), config)
        message = str(err.value)
        assert uri in message and "row 2:" in message and f"field '{name}': " in message, (name, message)
        assert f"got {got}" in message, (name, message)
