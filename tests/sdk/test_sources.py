"""Sources: Parquet as well as JSONL for every record kind, column mappings and presets of released corpora,
and hf://datasets/... read through huggingface_hub's HfFileSystem from a loopback hub (the fake answers
the endpoints HfFileSystem calls: repository info, tree, paths-info, resolve with ranges)."""

from __future__ import annotations

import json

import pytest

from distilflow import records, sources
from distilflow import uri as uris
from distilflow.errors import RecordError, StorageError
from distilflow.sources import SourceSpec, problem_id, read_records
from tests.corpora import omnithought_rows, parquet_bytes

pytestmark = pytest.mark.unit


def _write(path, rows) -> str:
    path.write_bytes(parquet_bytes(rows))
    return str(path)


def test_parquet_in_distilflows_columns_reads_as_its_jsonl(tmp_path):
    rows = [
        {"id": "a", "problem": "1+1?", "answer": "2", "domain": "math"},
        {"id": "b", "problem": "2+2?", "answer": "4", "domain": None},
    ]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parquet = _write(tmp_path / "p.parquet", rows)
    assert read_records(parquet, records.Problem) == read_records(str(jsonl), records.Problem)
    assert [p.answer for p in read_records(parquet, records.Problem)] == ["2", "4"]
    # strict as JSONL is: a number where text belongs is refused, naming the row and the field
    numbers = _write(tmp_path / "n.parquet", [{**rows[0], "answer": 2}])
    with pytest.raises(RecordError, match=r"n.parquet:row 1: Problem field 'answer': expected text"):
        read_records(numbers, records.Problem)
    mapped = {"uri": numbers, "columns": {"id": "id", "problem": "problem", "answer": "answer"}}
    assert read_records(mapped, records.Problem)[0].answer == "2"  # a mapped column's number becomes text


def test_every_record_kind_reads_from_parquet(tmp_path):
    chat = [{"role": "user", "content": "q", "reasoning_content": None}]
    answer = [{"role": "assistant", "content": "a", "reasoning_content": "think"}]
    sft = _write(tmp_path / "sft.parquet", [{"id": "s1", "messages": chat + answer, "rv": 2.0}])
    pairs = _write(
        tmp_path / "pairs.parquet",
        [
            {
                "id": "p1",
                "prompt": chat,
                "chosen": answer,
                "rejected": [{**answer[0], "content": "b"}],
                "beta": 0.2,
            }
        ],
    )
    (example,) = list(records.iter_output_rows(sft, "sft", records.SftExample))
    assert example.messages[1].reasoning_content == "think" and example.rv == 2.0
    (pair,) = list(records.iter_output_rows(pairs, "preference", records.PreferencePair))
    assert (pair.chosen[0].content, pair.rejected[0].content, pair.beta) == ("a", "b", 0.2)


def test_omnithought_preset_explodes_the_reasoning_list_into_scored_traces(tmp_path):
    rows = omnithought_rows(problems=2)
    path = _write(tmp_path / "omni.parquet", rows)
    scored = read_records({"uri": path, "preset": "omnithought"}, records.Scored)
    assert len(scored) == 6  # 2 questions x 3 chains
    first = scored[0]
    pid = problem_id(rows[0]["question"])
    assert (first.problem_id, first.id, first.sample) == (pid, f"{pid}/DeepSeek-R1/0", 0)
    assert (first.rv, first.cd, first.logic, first.judge) == (2.0, 0.0, 1.0, "QwQ-32B")
    assert first.reasoning == rows[0]["reasoning"][0]["thought"]
    assert first.content == rows[0]["reasoning"][0]["solution"]
    # question 1: its middle chain was judged invalid -> logic 0; its CD is 9
    assert [(s.teacher, s.rv, s.cd, s.logic) for s in scored[3:]] == [
        ("DeepSeek-R1", 2.0, 9.0, 1.0),
        ("QwQ-32B", 5.0, 9.0, 0.0),
        ("DeepSeek-R1", 8.0, 9.0, 1.0),
    ]


def test_scores_on_another_scale_are_refused_unless_mapped(tmp_path):
    rows = omnithought_rows(problems=1)
    rows[0]["reasoning"][2]["Reasoning_Verbosity"]["level"] = 10  # a 1-10 scale
    path = _write(tmp_path / "ten.parquet", rows)
    layout = {"uri": path, "preset": "omnithought", "score_ranges": {"rv": [0, 9]}}
    with pytest.raises(
        RecordError, match=r"ten\.parquet:row 1: rv=10 is outside the source's declared range"
    ):
        read_records(layout, records.Scored)
    custom = {"uri": path, "columns": {**sources.PRESETS["omnithought"]["columns"]}, "explode": "reasoning"}
    with pytest.raises(RecordError, match=r"rv=10 is outside distilflow's rv scale 0-9.*score_ranges"):
        read_records(custom, records.Scored)
    mapped = read_records({**custom, "score_ranges": {"rv": [1, 10]}}, records.Scored)
    # linear from [1, 10] onto [0, 9]: 2 -> 1, 5 -> 4, 10 -> 9
    assert [s.rv for s in mapped] == pytest.approx([1.0, 4.0, 9.0])


def test_a_mapping_that_cannot_fill_a_record_is_refused_before_reading(tmp_path):
    path = _write(tmp_path / "x.parquet", [{"question": "q", "sol": "s"}])
    with pytest.raises(RecordError, match=r"no column gives Trace field\(s\) \['problem', 'teacher'\]"):
        read_records({"uri": path, "columns": {"content": "sol"}}, records.Trace)
    with pytest.raises(RecordError, match=r"columns maps \['nonsense'\], which Problem has no field for"):
        read_records({"uri": path, "columns": {"problem": "question", "nonsense": "sol"}}, records.Problem)
    with pytest.raises(RecordError, match=r"x\.parquet: no column 'prompt' \(the file has question, sol\)"):
        read_records({"uri": path, "columns": {"problem": "prompt"}}, records.Problem)


def test_openthoughts3_conversations_split_at_the_think_block(tmp_path):
    reply = "<think>\nadd them\n</think>\n\nIt is \\boxed{4}."
    conversations = [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": reply}]
    path = _write(
        tmp_path / "ot3.parquet", [{"difficulty": 3, "domain": "math", "conversations": conversations}]
    )
    (trace,) = read_records({"uri": path, "preset": "openthoughts3"}, records.Trace)
    assert (trace.problem, trace.reasoning, trace.content) == ("2+2?", "add them", "It is \\boxed{4}.")
    assert (trace.teacher, trace.domain, trace.finish_reason) == ("qwq-32b", "math", "stop")


def test_numinamath_rows_become_problems_with_stable_ids(tmp_path):
    rows = [
        {
            "problem": "Find x.",
            "solution": "x=3",
            "answer": "3",
            "problem_type": "Algebra",
            "source": "olympiads",
        },
        {"problem": "Find y.", "solution": "y=5", "answer": "5", "problem_type": "Algebra", "source": "amc"},
    ]
    path = _write(tmp_path / "numina.parquet", rows)
    problems = read_records({"uri": path, "preset": "numinamath"}, records.Problem)
    assert [(p.id, p.answer, p.domain) for p in problems] == [
        (problem_id("Find x."), "3", "math"),
        (problem_id("Find y."), "5", "math"),
    ]


def test_a_glob_reads_every_shard_in_order(tmp_path):
    rows = omnithought_rows(problems=4)
    for i in range(2):
        _write(tmp_path / f"train-{i:05d}-of-00002.parquet", rows[2 * i : 2 * i + 2])
    spec = {"uri": str(tmp_path / "train-*.parquet"), "preset": "omnithought"}
    problems = [s.problem for s in read_records(spec, records.Scored)][::3]
    assert problems == [r["question"] for r in rows]


def test_hf_uris_are_checked_and_read_only():
    assert uris.check_uri("hf://datasets/alibaba-pai/OmniThought@refs%2Fconvert%2Fparquet/a.parquet")
    with pytest.raises(ValueError, match=r"hf://datasets/ORG/NAME\[@REVISION\]/PATH"):
        uris.check_uri("hf://alibaba-pai/OmniThought/a.parquet")  # models are not a data source
    with pytest.raises(StorageError, match=r"reads from hf:// but never writes there"):
        uris.write_text("hf://datasets/org/name/out.jsonl", "x")


def test_hf_dataset_through_a_mirror_with_a_token_at_a_pinned_revision(hf_hub, monkeypatch):
    rows = omnithought_rows(problems=3)
    hf_hub.token = "hf_secret"
    hf_hub.add("alibaba-pai/OmniThought", {"data/train-00000-of-00001.parquet": parquet_bytes(rows[:1])})
    hf_hub.add(
        "alibaba-pai/OmniThought", {"data/train-00000-of-00001.parquet": parquet_bytes(rows)}, revision="v2"
    )
    monkeypatch.setenv("MY_HUB_TOKEN", "hf_secret")
    spec = {
        "uri": "hf://datasets/alibaba-pai/OmniThought@v2/data/*.parquet",
        "preset": "omnithought",
        "token_env": "MY_HUB_TOKEN",
    }
    scored = read_records(spec, records.Scored)
    assert len(scored) == 9 and scored[-1].problem == rows[2]["question"]  # v2, not main (one question)
    assert len(read_records({**spec, "uri": spec["uri"].replace("@v2", "")}, records.Scored)) == 3
    asked = {r["path"] for r in hf_hub.requests}
    assert "/datasets/alibaba-pai/OmniThought/resolve/v2/data/train-00000-of-00001.parquet" in asked
    assert {r["authorization"] for r in hf_hub.requests if r["path"].startswith("/api/datasets")} == {
        "Bearer hf_secret"
    }
    monkeypatch.setenv("MY_HUB_TOKEN", "hf_wrong_one")
    with pytest.raises(RecordError, match=r"not found") as refused:
        read_records({**spec, "uri": spec["uri"].replace("*", "x")}, records.Scored)
    assert "hf_wrong_one" not in str(refused.value) and "hf_secret" not in str(refused.value)
    assert hf_hub.requests[-1]["authorization"] == "Bearer hf_wrong_one"  # the variable is read per call


def test_hf_problems_jsonl_reads_as_a_local_one(hf_hub):
    lines = [{"id": "h1", "problem": "1+2?", "answer": "3"}, {"id": "h2", "problem": "2+3?", "answer": "5"}]
    hf_hub.add("org/probs", {"problems.jsonl": ("\n".join(json.dumps(x) for x in lines) + "\n").encode()})
    problems = read_records("hf://datasets/org/probs/problems.jsonl", records.Problem)
    assert [(p.id, p.answer) for p in problems] == [("h1", "3"), ("h2", "5")]
    with pytest.raises(
        FileNotFoundError, match=r"hf://datasets/org/probs@nope/problems.jsonl: revision not found at"
    ):
        uris.read_bytes("hf://datasets/org/probs@nope/problems.jsonl")


def test_source_spec_rejects_a_bad_range():
    with pytest.raises(ValueError, match=r"low < high"):
        SourceSpec(uri="x.parquet", score_ranges={"rv": [9, 0]})


def test_a_token_pasted_as_token_env_is_refused_unseen():
    token = "hf_" + "aZ3" * 10
    with pytest.raises(ValueError, match=r"token_env\n.*looks like a Hugging Face token") as refused:
        SourceSpec(uri="hf://datasets/org/name/x.parquet", token_env=token)
    assert token not in str(refused.value)


def test_a_source_field_names_one_problem_at_the_path_the_user_wrote():
    from distilflow.components.rl.config import RlConfig
    from distilflow.errors import ConfigError

    base = {"output_uri": "/o", "model": "/m"}
    with pytest.raises(ConfigError) as refused:
        RlConfig.load({**base, "problems_uri": {"uri": "p.parquet", "token_env": "MY TOKEN"}})
    assert str(refused.value).startswith("1 problem(s) in config:")
    assert "RlConfig.problems_uri.token_env: must be the name of an environment variable" in str(
        refused.value
    )
    with pytest.raises(
        ConfigError, match=r"1 problem\(s\).*\n.*RlConfig.problems_uri: Input should be a valid string"
    ):
        RlConfig.load({**base, "problems_uri": 12})
    assert RlConfig.load({**base, "problems_uri": {"uri": "p.parquet"}}).problems_uri == SourceSpec(
        uri="p.parquet"
    )


def test_a_folder_or_glob_without_record_files_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(
        RecordError, match=r"is a folder with no .jsonl or .parquet file in it; give a JSONL file"
    ):
        read_records(str(tmp_path), records.Problem)
    with pytest.raises(RecordError, match=r"\*.parquet: matches no .jsonl or .parquet file"):
        read_records(str(tmp_path / "*.parquet"), records.Problem)
