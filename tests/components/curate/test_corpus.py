"""curate from a pre-annotated corpus (OmniThought's layout on a loopback hub): selection on the released
RV/CD/logic scores, no distill output and no judge call; scores on another scale refused unless mapped."""

from __future__ import annotations

import json

import pytest

from distilflow import records
from distilflow.components.curate.config import CurateConfig
from distilflow.components.curate.run import run
from distilflow.errors import ConfigError, RecordError
from distilflow.outputs import MARKER
from distilflow.sources import problem_id
from tests.corpora import omnithought_rows, parquet_bytes

CORPUS = "hf://datasets/alibaba-pai/OmniThought/data/train-*.parquet"


def _expected_mix(rows: list[dict], edges: list[float], targets: list[float]) -> dict[str, float]:
    """The ThoughtX mix by hand: per question, of the chains judged logically valid, the one whose RV is
    closest to its CD bin's target (ties: the first)."""
    kept = {}
    for row in rows:
        chains = [c for c in row["reasoning"] if c["thought_correctness_verify"]]
        cd = chains[0]["Cognitive_Difficulty"]["level"]
        b = next(i for i in range(len(targets)) if cd < edges[i + 1] or i == len(targets) - 1)
        best = min(chains, key=lambda c: abs(c["Reasoning_Verbosity"]["level"] - targets[b]))
        kept[problem_id(row["question"])] = float(best["Reasoning_Verbosity"]["level"])
    return kept


def test_curate_selects_from_a_scored_corpus_on_the_hub_without_a_judge(tmp_path, hf_hub):
    rows = omnithought_rows(problems=6)
    hf_hub.add(
        "alibaba-pai/OmniThought",
        {
            "data/train-00000-of-00002.parquet": parquet_bytes(rows[:3]),
            "data/train-00001-of-00002.parquet": parquet_bytes(rows[3:]),
        },
    )
    config = CurateConfig.from_dict(
        {
            "output_uri": str(tmp_path / "curate"),
            "corpus": {"uri": CORPUS, "preset": "omnithought"},
            "preset": "1.5b",
        }
    )
    result = run(config)
    assert (result.traces, result.scored, result.judge_requests, result.templates) == (18, 18, 0, [])
    assert result.judge.startswith("annotated: hf://datasets/alibaba-pai/OmniThought")
    assert result.dropped["logic"] == 3  # the invalid middle chain of the three odd questions
    sft = list(records.iter_output_rows(config.output_uri, "sft", records.SftExample))
    got = {example.id.rsplit("/", 2)[0]: example.rv for example in sft}
    assert got == _expected_mix(rows, [0, 3, 6, 9], [2.0, 3.0, 4.0])
    scored = {s.id: s for s in records.iter_output_rows(config.output_uri, "scored", records.Scored)}
    assert len(scored) == 18 and all(s.correct is None for s in scored.values())  # no reference: unverified
    manifest = json.loads((tmp_path / "curate" / "manifest.json").read_text())
    assert manifest["inputs"]["traces"] == CORPUS and "cache" not in manifest["inputs"]


def test_curate_checks_answers_of_a_corpus_with_references(tmp_path):
    rows = [
        {"problem": "2+2?", "reasoning": "add", "content": "\\boxed{4}", "reference": "4", "teacher": "t"},
        {"problem": "3+3?", "reasoning": "add", "content": "\\boxed{7}", "reference": "6", "teacher": "t"},
    ]
    rows = [{**r, "rv": 3, "cd": 2, "logic": 0.9} for r in rows]
    path = tmp_path / "scored.parquet"
    path.write_bytes(parquet_bytes(rows))
    config = CurateConfig.from_dict({"output_uri": str(tmp_path / "out"), "corpus": str(path)})
    result = run(config)
    assert (result.correct, result.incorrect, result.kept) == (1, 1, 1)


def test_curate_refuses_a_corpus_on_another_scale_and_finishes_nothing(tmp_path):
    rows = omnithought_rows(problems=2)
    rows[1]["reasoning"][0]["Cognitive_Difficulty"]["level"] = 10
    path = tmp_path / "ten.parquet"
    path.write_bytes(parquet_bytes(rows))
    columns = {"uri": str(path), "preset": "omnithought", "score_ranges": {}}
    config = CurateConfig.from_dict({"output_uri": str(tmp_path / "out"), "corpus": columns})
    config.corpus.score_ranges.clear()  # the preset's 0-9 declaration removed: distilflow's scale applies
    with pytest.raises(RecordError, match=r"ten\.parquet:row 2: cd=10 is outside distilflow's cd scale 0-9"):
        run(config)
    assert not (tmp_path / "out" / MARKER).exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    "section, says",
    [
        ({}, "or corpus .traces already scored., got neither"),
        ({"data_uri": "d", "corpus": "c.parquet"}, "got both"),
        ({"data_uri": "d"}, "data_uri needs a judge"),
        ({"corpus": "c.parquet", "crv": True}, "crv=true rewrites and re-judges traces"),
    ],
)
def test_curate_config_needs_one_input(section, says):
    with pytest.raises(ConfigError, match=says):
        CurateConfig.from_dict({"output_uri": "o", **section})


@pytest.mark.unit
def test_validate_lists_a_corpus_and_checks_its_mapping(tmp_path):
    from distilflow.components.validate.run import _check_corpus

    path = tmp_path / "c.parquet"
    path.write_bytes(parquet_bytes(omnithought_rows(problems=1)))
    checked: list[str] = []
    assert _check_corpus("curate.corpus", {"uri": str(path), "preset": "omnithought"}, checked) == []
    assert checked == [f"curate.corpus: 1 file(s) of scored traces in {path} (omnithought layout)"]
    (missing,) = _check_corpus("curate.corpus", str(tmp_path / "none.parquet"), [])
    assert missing.endswith("none.parquet: no such file")
    (unmapped,) = _check_corpus("curate.corpus", {"uri": str(path), "columns": {"problem": "question"}}, [])
    assert "no column gives Scored field(s) ['cd', 'logic', 'rv', 'teacher']" in unmapped
