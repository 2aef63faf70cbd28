"""The curate stage: a real (tiny) judge scores hand-written traces; answers, selection and pairs are checked."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from distilflow import uri as uris
from distilflow.components.curate.config import CurateConfig
from distilflow.components.curate.run import parse_score, run
from distilflow.components.distill.config import DistillConfig
from distilflow.errors import ConfigError, IncompleteOutputError
from distilflow.outputs import MANIFEST, MARKER, StageOutput
from distilflow.records import PreferencePair, Scored, SftExample, Trace, read_jsonl, write_jsonl
from distilflow.teachers.transformers import TransformersTeacher

# (problem id, sample, problem, reference, reasoning, answer section, correct?)
TRACES = [
    ("p1", 0, "What is 3 + 4?", "7", "3 plus 4 is 7.", "The answer is \\boxed{7}.", True),
    ("p1", 1, "What is 3 + 4?", "7", "3 plus 4 is 8.", "The answer is \\boxed{8}.", False),
    ("p2", 0, "What is 6 * 7?", "42", "6 times 7 is 42.", "\\boxed{42}", True),
    ("p2", 1, "What is 6 * 7?", "42", "Six sevens: 7, 14, 21, 28, 35, 42.", "So it is \\boxed{42}", True),
    ("p3", 0, "Pick a prime below 6.", None, "2, 3 and 5 are primes.", "\\boxed{5}", None),
    ("p4", 0, "What is 1 / 2 as a fraction?", "\\frac{1}{2}", "Half.", "\\boxed{0.5}", True),
    ("p4", 1, "What is 1 / 2 as a fraction?", "\\frac{1}{2}", "Not sure.", "I cannot tell.", False),
]
EXPECTED = {f"{pid}/t/{s}": ok for pid, s, *_, ok in TRACES}


def write_distill_output(folder: str, complete: bool = True) -> str:
    """A distill output folder holding the hand-written traces (with its marker when ``complete``)."""
    rows = [
        Trace(
            id=f"{pid}/t/{s}",
            problem_id=pid,
            problem=problem,
            reference=ref,
            domain="math",
            teacher="t",
            sample=s,
            reasoning=reasoning,
            content=content,
            tokens=10,
            finish_reason="stop",
        )
        for pid, s, problem, ref, reasoning, content, _ in TRACES
    ]
    config = DistillConfig.from_dict(
        {
            "output_uri": folder,
            "problems_uri": "unused.jsonl",
            "teacher": {"backend": "transformers", "model": "t"},
        }
    )
    out = StageOutput(folder, "distill")
    out.begin(config)
    write_jsonl(out.path("traces.jsonl"), rows)
    if complete:
        out.finish(result={"traces": len(rows)})
    return folder


@pytest.fixture(scope="module")
def distill_dir(tmp_path_factory) -> str:
    return write_distill_output(str(tmp_path_factory.mktemp("run") / "distill"))


def curate_config(out: str, data: str, judge: str, **overrides) -> CurateConfig:
    judge_cfg = {
        "backend": "transformers",
        "model": judge,
        "max_new_tokens": 8,
        "temperature": 0,
        "batch_size": 4,
        "min_digit_mass": 0,  # a random tiny judge's digits carry scraps: read them anyway (plumbing tests)
    }
    return CurateConfig.from_dict(
        {"output_uri": out, "data_uri": data, "judge": judge_cfg, "min_logic": 0} | overrides
    )


def read_output(folder: str, kind: str, model) -> list:
    """Every ``model`` row of output ``kind`` of a curate output, from the shards its manifest lists."""
    from distilflow.records import iter_output_rows

    return list(iter_output_rows(folder, kind, model))


def read_failures(folder: str) -> list[dict]:
    """The judge_failures rows of a curate output (plain JSON objects), from its shards."""
    from distilflow.records import output_shards

    return [
        json.loads(line)
        for uri in output_shards(folder, "judge_failures")
        for line in uris.read_text(uri).splitlines()
    ]


def test_curate_scores_verifies_selects_and_pairs(tmp_path, distill_dir, tiny_qwen3):
    out = str(tmp_path / "curate")
    config = curate_config(out, distill_dir, tiny_qwen3, system_prompt="Think first.", enable_thinking=True)
    result = run(config)
    # shards only by default: no whole <kind>.jsonl beside them
    assert result.scored_uri is result.sft_uri is result.preference_uri is result.failures_uri is None
    assert not any(os.path.exists(os.path.join(out, f"{kind}.jsonl")) for kind in result.shards)
    scored = read_output(out, "scored", Scored)
    assert result.traces == result.scored == len(scored) == len(TRACES) and result.judge_failures == 0
    for row in scored:
        assert 0 <= row.rv <= 9 and 0 <= row.cd <= 9 and 0 <= row.logic <= 1
        assert row.judge == os.path.basename(tiny_qwen3)
    assert {r.id: r.correct for r in scored} == EXPECTED
    assert next(r for r in scored if r.id == "p4/t/0").predicted == "0.5"
    # Default policy: wrong answers dropped, unverified kept (logic threshold 0 here).
    kept = {r.id for r in scored if r.kept}
    assert kept == {rid for rid, ok in EXPECTED.items() if ok is not False}
    assert (result.correct, result.incorrect, result.unverified) == (4, 2, 1)
    assert result.mean_rv == pytest.approx(statistics.fmean(r.rv for r in scored), abs=1e-3)

    sft = read_output(out, "sft", SftExample)
    assert {e.id for e in sft} == kept and result.sft_rows == len(sft)
    by_id = {r.id: r for r in scored}
    for example in sft:
        system, user, assistant = example.messages
        assert (system.role, system.content) == ("system", "Think first.")
        assert user.content == by_id[example.id].problem
        assert (
            assistant.reasoning_content == by_id[example.id].reasoning
            and assistant.content == by_id[example.id].content
        )
        assert example.enable_thinking is True and example.rv == by_id[example.id].rv

    pairs = {p.id: p for p in read_output(out, "preference", PreferencePair)}
    assert result.pairs == len(pairs) and {"p1/pair", "p4/pair"} <= set(pairs) and "p3/pair" not in pairs
    assert pairs["p1/pair"].chosen[0].content.endswith("\\boxed{7}.")
    assert pairs["p1/pair"].rejected[0].content.endswith("\\boxed{8}.")
    assert (
        pairs["p4/pair"].chosen[0].content == "\\boxed{0.5}"
        and pairs["p4/pair"].rejected[0].content == "I cannot tell."
    )
    assert pairs["p1/pair"].prompt[-1].content == "What is 3 + 4?" and pairs["p1/pair"].beta is None

    manifest = json.loads(uris.read_text(os.path.join(out, MANIFEST)))
    assert (
        manifest["inputs"]["judge_templates"]
        == "judge_rv_v1,judge_cd_v1,judge_logic_v1,judge_format_logprobs_v1"
    )
    assert os.path.exists(os.path.join(out, MARKER))

    # The scores come from the judge: a narrower RV range keeps exactly the rows inside it.
    cut = statistics.median(r.rv for r in scored)
    narrow = curate_config(
        str(tmp_path / "narrow"),
        distill_dir,
        tiny_qwen3,
        rv_max=cut,
        require_correct=False,
        keep_unverified=False,
    )
    run(narrow)
    again = {r.id: r for r in read_output(str(tmp_path / "narrow"), "scored", Scored)}
    assert {i: (r.rv, r.cd) for i, r in again.items()} == {r.id: (r.rv, r.cd) for r in scored}
    assert {i for i, r in again.items() if r.kept} == {
        r.id for r in scored if r.rv <= cut and r.correct is not None
    }

    # A rerun of the finished output does not load the judge.
    def no_judge(*args, **kwargs):
        raise AssertionError("the judge was loaded for a finished output")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TransformersTeacher, "__init__", no_judge)
        assert run(config) == result


def test_curate_refuses_data_without_marker(tmp_path, tiny_qwen3):
    data = write_distill_output(str(tmp_path / "distill"), complete=False)
    with pytest.raises(IncompleteOutputError, match="_COMPLETE"):
        run(curate_config(str(tmp_path / "curate"), data, tiny_qwen3))
    assert not os.path.exists(tmp_path / "curate" / MARKER)


def test_curate_generate_mode_counts_unparseable_judgments(tmp_path, distill_dir, tiny_qwen3):
    # A random-weight judge writes no <score> tag: every trace is reported, none is given a score.
    out = str(tmp_path / "curate")
    result = run(curate_config(out, distill_dir, tiny_qwen3, mode="generate"))
    assert result.judge_failures == len(TRACES) and result.scored == 0 and result.kept == 0
    assert read_output(out, "scored", Scored) == []
    failures = read_failures(out)
    assert {f["id"] for f in failures} == set(EXPECTED) and {f["kind"] for f in failures} == {
        "rv",
        "cd",
        "logic",
    }
    assert "judge_format_generate_v1" in result.templates


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("Detailed steps.\n<score>7</score>", "rv", 7.0),
        ("<score>3</score> then reconsidered <SCORE> 6 </SCORE>", "cd", 6.0),
        ("Score: 7", "rv", None),
        ("<score>12</score>", "rv", None),
        ("<score>4.5</score>", "rv", None),
        ("<score>1</score>", "logic", 1.0),
        ("<score>3</score>", "logic", None),
    ],
)
def test_parse_score(text, kind, expected):
    assert parse_score(text, kind) == expected


@pytest.mark.unit
def test_curate_config_rejects_inverted_ranges():
    with pytest.raises(ConfigError, match=r"rv_min=6.0 is above rv_max=2.0"):
        CurateConfig.from_dict(
            {
                "output_uri": "o",
                "data_uri": "d",
                "judge": {"backend": "transformers", "model": "m"},
                "rv_min": 6,
                "rv_max": 2,
            }
        )


def test_distill_and_curate_components_chain(tmp_path, problems_file, tiny_qwen3):
    from kfp import dsl

    from distilflow.components.curate.component import curate
    from distilflow.components.distill.component import distill

    teacher = {"backend": "transformers", "model": tiny_qwen3, "max_new_tokens": 4, "temperature": 0}
    config = {
        "distill": {"problems_uri": problems_file, "teacher": teacher, "n": 1, "limit": 2},
        "curate": {"judge": teacher | {"min_digit_mass": 0}, "require_correct": False, "min_logic": 0},
    }
    root = str(tmp_path / "run")
    traces = dsl.Dataset(name="traces", uri=str(tmp_path / "kfp" / "traces"), metadata={})
    kfp_dir = tmp_path / "kfp"
    kfp_dir.mkdir()

    def outputs(stage: str) -> dict:
        return {
            "metrics": dsl.Metrics(name="metrics", uri=str(kfp_dir / f"{stage}-metrics"), metadata={}),
            "report": dsl.HTML(name="report", uri=str(kfp_dir / f"{stage}-report.html"), metadata={}),
        }

    distill.python_func(config=config, output_uri=root, traces=traces, **outputs("distill"))
    assert traces.metadata["uri"] == os.path.join(root, "distill") and traces.metadata["traces"] == 2
    curated = dsl.Dataset(name="curated", uri=str(tmp_path / "kfp" / "curated"), metadata={})
    extra = outputs("curate")
    curate.python_func(config=config, output_uri=root, traces=traces, curated=curated, **extra)
    assert extra["metrics"].metadata["rows_in"] == 2 and "dropped_duplicate" in extra["metrics"].metadata
    with open(extra["report"].path, encoding="utf-8") as f:
        assert "<svg" in f.read()
    assert curated.metadata["uri"] == os.path.join(root, "curate")
    assert len(read_output(os.path.join(root, "curate"), "scored", Scored)) == 2
    assert os.path.exists(os.path.join(root, "curate", MARKER))


def test_curate_selection_options_report_and_curriculum(tmp_path, distill_dir, tiny_qwen3):
    from distilflow.records import Problem

    evals = str(tmp_path / "eval.jsonl")
    write_jsonl(evals, [Problem(id="e1", problem="what is 3+4?")])  # p1, once normalised
    config = curate_config(
        str(tmp_path / "curate"),
        distill_dir,
        tiny_qwen3,
        preset="7b",
        curriculum=True,
        require_correct=False,
        decontaminate_uris=[evals],
        pair_beta=0.1,
    )
    result = run(config)
    out = str(tmp_path / "curate")
    scored = {r.id: r for r in read_output(out, "scored", Scored)}
    assert {i for i, r in scored.items() if r.dropped_by == "contaminated"} == {"p1/t/0", "p1/t/1"}
    assert result.dropped["contaminated"] == 2 and result.kept == len(TRACES) - 2
    assert all(r.kept == (r.dropped_by is None) for r in scored.values())
    sft = read_output(out, "sft", SftExample)
    stages = [e.curriculum_stage for e in sft]
    assert len(sft) == result.kept and stages == sorted(stages)
    assert all(e.curriculum_stage == (0 if e.cd < 3 else 1 if e.cd < 6 else 2) for e in sft)
    pairs = read_output(out, "preference", PreferencePair)
    assert "p1/pair" not in {p.id for p in pairs} and all(p.beta and p.beta >= 0.1 for p in pairs)
    manifest = json.loads(uris.read_text(os.path.join(str(tmp_path / "curate"), MANIFEST)))
    assert manifest["counts"]["dropped_contaminated"] == 2 and manifest["inputs"]["decontaminate_0"] == evals
    page = uris.read_text(result.report_uri)
    assert page.count("<svg") == 6 and "contaminated" in page
    selection = json.loads(uris.read_text(os.path.join(str(tmp_path / "curate"), "selection.json")))
    assert selection["traces"] == len(TRACES) and selection["dropped"]["contaminated"] == 2
    assert not os.path.exists(tmp_path / "curate" / "_work")


class ScriptedTeacher:
    """A teacher double whose replies depend on the prompt: critic levels and rewrites per problem."""

    def __init__(self, levels: dict[str, str], rewrites: dict[str, str]):
        self.levels, self.rewrites, self.prompts = levels, rewrites, []

    def generate(self, chats, n=1):
        from distilflow.teachers.protocol import Completion

        replies = []
        for chat in chats:
            text = chat[-1]["content"]
            self.prompts.append(text)
            problem = next(p for p in self.levels if f"[Problem]\n{p}\n" in text)
            reply = (
                f"<level>{self.levels[problem]}</level>"
                if "Judge how hard" in text
                else self.rewrites[problem]
            )
            replies.append([Completion(reasoning="", content=reply, tokens=7, finish_reason="stop")])
        return replies


def test_crv_keeps_verified_rewrites_and_rejects_changed_answers():
    from distilflow.components.curate import crv

    def row(pid, problem, reasoning, content, predicted, correct, cd=4.0):
        return Scored(
            id=f"{pid}/t/0", problem_id=pid, problem=problem, reference="7" if correct is not None else None,
            domain="math", teacher="t", sample=0, reasoning=reasoning, content=content, tokens=3,
            finish_reason="stop", rv=3, cd=cd, logic=1, correct=correct, predicted=predicted, judge="j", kept=False,
        )  # fmt: skip

    rows = [
        row("e", "Add 3 and 4.", "3+4=7", "\\boxed{7}", "7", True),
        row("h", "Sum 3 and 4.", "long detour 3+4=7", "\\boxed{7}", "7", True),
        row("m", "Plus 3 and 4.", "3+4=7", "\\boxed{7}", "7", True),
        row("x", "Total of 3 and 4.", "3+4=7", "\\boxed{7}", "7", True),
        row("w", "Three and four.", "3+4=8", "\\boxed{8}", "8", False),
    ]
    teacher = ScriptedTeacher(
        levels={"Add 3 and 4.": "easy", "Sum 3 and 4.": "hard", "Plus 3 and 4.": "medium",
                "Total of 3 and 4.": "unsure", "Three and four.": "easy"},
        rewrites={"Add 3 and 4.": "<think>Start from 3. Adding 4 gives 7.</think>So \\boxed{7}.",
                  "Sum 3 and 4.": "<think>3+4=8</think>\\boxed{8}"},
    )  # fmt: skip
    config = CurateConfig.model_validate(
        {"output_uri": "o", "data_uri": "d", "judge": {"backend": "transformers", "model": "m"}, "crv": True}
    )
    out, changed = crv.refine(teacher, rows, config)
    by = {r.problem_id: r for r in out}
    assert changed == [0]
    assert (by["e"].crv_level, by["e"].crv_outcome) == ("easy", "expanded")
    assert by["e"].reasoning == "Start from 3. Adding 4 gives 7." and by["e"].content == "So \\boxed{7}."
    assert by["h"].crv_level == "hard" and by["h"].crv_outcome == "rejected: answer changed: '7' -> '8'"
    assert by["h"].reasoning == "long detour 3+4=7" and by["h"].content == "\\boxed{7}"  # original kept
    assert (by["m"].crv_level, by["m"].crv_outcome) == ("medium", "unchanged")
    assert by["x"].crv_level is None and by["x"].crv_outcome == "rejected: the critic gave no <level>"
    assert by["w"].crv_outcome == "skipped: wrong answer" and by["w"].reasoning == "3+4=8"
    assert all("1.5b parameters" in p for p in teacher.prompts)
    # the wrong trace cost no call; the medium and unparseable ones no rewrite
    assert len(teacher.prompts) == 4 + 2


def test_crv_rewrites_are_scored_again(tmp_path, tiny_qwen3):
    from distilflow.components.curate.run import _refine
    from distilflow.teachers.cache import TeacherCache
    from distilflow.teachers.cached import CachedTeacher
    from distilflow.teachers.config import TeacherConfig

    config = curate_config("o", "d", tiny_qwen3, crv=True)
    base = Scored(
        id="e/t/0", problem_id="e", problem="Add 3 and 4.", reference="7", domain="math", teacher="t",
        sample=0, reasoning="7", content="\\boxed{7}", tokens=3, finish_reason="stop", rv=0.0, cd=0.0,
        logic=1, correct=True, predicted="7", judge="j", kept=False,
    )  # fmt: skip
    rewriter = ScriptedTeacher(
        {"Add 3 and 4.": "easy"}, {"Add 3 and 4.": "<think>3, then 4 more: 7.</think>\\boxed{7}"}
    )
    judge = CachedTeacher(
        TeacherConfig(backend="transformers", model=tiny_qwen3, batch_size=4, min_digit_mass=0),
        TeacherCache(str(tmp_path / "c")),
    )
    try:
        (row,), failures = _refine(judge, rewriter, [base], config)
    finally:
        judge.close()
    assert failures == []
    assert (row.crv_level, row.crv_outcome, row.reasoning) == ("easy", "expanded", "3, then 4 more: 7.")
    assert row.correct is True and row.predicted == "7" and row.judge == os.path.basename(tiny_qwen3)
    # scored again by the judge: a random tiny model's expected digit is not exactly 0
    assert 0 < row.rv <= 9 and 0 < row.cd <= 9


def test_curate_crv_on_tiny_model_records_every_decision(tmp_path, distill_dir, tiny_qwen3):
    # CD critic split at 4.5: every trace is easy or hard; the random tiny model's rewrites never
    # keep the answer, so verification must reject every one and keep the original trace.
    config = curate_config(
        str(tmp_path / "curate"), distill_dir, tiny_qwen3, crv=True, crv_critic="cd",
        crv_easy_below=4.5, crv_hard_above=4.5, require_correct=False,
    )  # fmt: skip
    run(config)
    scored = read_output(str(tmp_path / "curate"), "scored", Scored)
    original = {f"{pid}/t/{s}": (reasoning, content) for pid, s, _, _, reasoning, content, _ in TRACES}
    assert len(scored) == len(TRACES)
    for r in scored:
        if r.correct is False:
            assert r.crv_outcome == "skipped: wrong answer" and r.crv_level is None
        else:
            assert r.crv_level == ("easy" if r.cd < 4.5 else "hard"), r
            assert r.crv_outcome.startswith("rejected: "), r.crv_outcome
        assert (r.reasoning, r.content) == original[r.id]


# ---------------------------------------------------------------- shards, judge cache, resume, report


def count_cache_entries(folder: str) -> int:
    return sum(name.endswith(".json") for _, _, names in os.walk(folder) for name in names)


def test_curate_writes_shards_listed_in_the_manifest_and_resumes_from_the_cache(
    tmp_path, distill_dir, tiny_qwen3
):
    from distilflow.records import output_shards

    out = str(tmp_path / "curate")
    result = run(
        curate_config(out, distill_dir, tiny_qwen3, shard_rows=3, single_files=True, require_correct=False)
    )
    manifest = json.loads(uris.read_text(os.path.join(out, MANIFEST)))
    assert manifest["result"]["shards"] == result.shards
    assert result.shards["scored"] == [
        f"scored-0000{i}-of-00003.jsonl" for i in range(3)
    ]  # 7 rows, 3 a shard
    assert result.shards["judge_failures"] == []  # no unreadable judgment, no shard
    assert manifest["counts"]["scored_shards"] == 3 and manifest["inputs"]["cache"] == os.path.join(
        out, "cache"
    )
    for kind, names in result.shards.items():
        assert output_shards(out, kind) == [os.path.join(out, n) for n in names]
        assert all(len(uris.read_text(os.path.join(out, n)).splitlines()) <= 3 for n in names)
    # single_files: the shards hold, in order, exactly what the whole files beside them hold
    first = read_output(out, "scored", Scored)
    assert result.scored_uri == os.path.join(out, "scored.jsonl")
    assert first == read_jsonl(result.scored_uri, Scored)
    assert read_output(out, "sft", SftExample) == read_jsonl(result.sft_uri, SftExample)
    assert len(read_output(out, "preference", PreferencePair)) == result.pairs
    # judge cost and the manifest's metrics (what KFP logs): 3 one-token judgments per trace, rows
    # in/out per filter
    assert (result.judge_requests, result.judge_tokens, result.cache_hits) == (21, 21, 0)
    assert manifest["counts"]["judge_tokens"] == 21 and manifest["counts"]["dropped_duplicate"] == 0
    metrics = manifest["metrics"]
    assert metrics["duplicate_in"] == metrics["contaminated_out"] == len(TRACES)
    assert metrics["domain_quota_out"] == metrics["rows_out"] == result.kept

    # Another layout of the same judgments (the default: shards only): every answer comes from the
    # cache, so the judge is never loaded; the earlier shards and single files do not survive.
    def no_judge(*args, **kwargs):
        raise AssertionError("the judge was loaded although the cache holds every judgment")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TransformersTeacher, "__init__", no_judge)
        again = run(curate_config(out, distill_dir, tiny_qwen3, shard_rows=5, require_correct=False))
    assert (again.judge_requests, again.cache_hits) == (0, 21)
    assert again.scored_uri is None and again.shards["scored"] == [
        "scored-00000-of-00002.jsonl",
        "scored-00001-of-00002.jsonl",
    ]
    names = set(os.listdir(out))
    assert (
        "scored.jsonl" not in names
        and "sft.jsonl" not in names
        and "scored-00000-of-00003.jsonl" not in names
    )
    assert read_output(out, "scored", Scored) == first


def scripted_score(prompt: str) -> int | None:
    """The score the scripted server writes for a generate-mode judgment prompt (None: no tag)."""
    import hashlib

    if "Pick a prime" in prompt:
        return None
    top = 1 if "0 or 1" in prompt else 9
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % (top + 1)


class JudgeServer:
    """tests/fakes/openai_server.py's tiny model behind HTTP: its own logprobs for logprobs requests, scripted
    written judgments (``scripted_score``) otherwise; after ``fail_after`` answers every request gets a
    malformed reply (a failure with max_retries=0); ``delay_s`` per request (one at a time)."""

    def __init__(self, model_dir: str):
        import time

        from tests.fakes.openai_server import TinyOpenAIServer

        outer = self

        class Server(TinyOpenAIServer):
            def complete(self, body: dict) -> dict:
                time.sleep(outer.delay_s)
                if outer.fail_after is not None and outer.answered >= outer.fail_after:
                    return {"error": "injected failure"}
                outer.answered += 1
                if body.get("logprobs"):
                    # the tiny model's whole next-token distribution (its top 20 may hold no digit), with
                    # the digits taken out for the prime problem: a judgment that cannot be read
                    reply = super().complete(body | {"top_logprobs": len(self.tokenizer)})
                    if "Pick a prime" in body["messages"][0]["content"]:
                        first = reply["choices"][0]["logprobs"]["content"][0]
                        first["top_logprobs"] = [
                            t for t in first["top_logprobs"] if not t["token"].strip().isdigit()
                        ]
                    return reply
                score = scripted_score(body["messages"][-1]["content"])
                text = "The steps are clear." + (f" <score>{score}</score>" if score is not None else "")
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                return self._envelope(body, [choice], 10, len(text.split()))

        self.server = Server(model_dir, served_name="judge")
        self.fail_after: int | None = None
        self.delay_s = 0.0
        self.answered = 0

    def posts(self) -> int:
        return sum(r["path"].endswith("/chat/completions") for r in self.server.requests)


@pytest.fixture(scope="module")
def judge_server(tiny_qwen3):
    server = JudgeServer(tiny_qwen3)
    base_url = server.server.start()
    yield server, base_url
    server.server.stop()


def endpoint_config(out: str, data: str, base_url: str, **overrides) -> CurateConfig:
    judge = {"backend": "openai", "base_url": base_url, "model": "judge", "concurrency": 2, "max_retries": 0}
    judge["min_digit_mass"] = 0  # the tiny model's digits carry scraps: read them anyway (plumbing tests)
    judge |= overrides.pop("judge", {})
    fields = {"output_uri": out, "data_uri": data, "judge": judge, "min_logic": 0, "batch_size": 4}
    return CurateConfig.from_dict(fields | overrides)


def test_curate_scores_through_an_openai_endpoint_in_both_modes(tmp_path, distill_dir, judge_server):
    from distilflow.components.curate.run import judge_chats

    server, base_url = judge_server
    server.fail_after, server.delay_s = None, 0.0
    traces = {t.id: t for t in read_jsonl(os.path.join(distill_dir, "traces.jsonl"), Trace)}

    # logprobs: one token per score, the expected digit under the server's top logprobs
    server.server.requests.clear()
    result = run(endpoint_config(str(tmp_path / "lp"), distill_dir, base_url))
    bodies = [r["body"] for r in server.server.requests if "body" in r]
    assert len(bodies) == 3 * len(TRACES) and result.judge_tokens == 3 * len(TRACES)
    assert all(b["max_tokens"] == 1 and b["logprobs"] and b["top_logprobs"] == 20 for b in bodies)
    assert result.judge_failures == 1 and result.judge_failures_by_kind == {"rv": 1, "cd": 1, "logic": 1}
    failures = read_failures(str(tmp_path / "lp"))
    assert {f["id"] for f in failures} == {"p3/t/0"}
    assert all(
        f["reason"].startswith("the score digits (") and " carry 0.00 " in f["reason"] for f in failures
    )
    scored = read_output(str(tmp_path / "lp"), "scored", Scored)
    assert len(scored) == result.scored == len(TRACES) - 1
    assert all(
        0 < r.rv < 9 and 0 < r.cd < 9 and 0 < r.logic < 1 for r in scored
    )  # expectations, not argmaxes

    # generate: the <score> written by the server is parsed; the prime problem's replies have none
    result = run(endpoint_config(str(tmp_path / "gen"), distill_dir, base_url, mode="generate"))
    assert result.judge_failures == 1 and result.judge_failures_by_kind == {"rv": 1, "cd": 1, "logic": 1}
    for row in read_output(str(tmp_path / "gen"), "scored", Scored):
        expected = [
            scripted_score(judge_chats([traces[row.id]], kind, "generate")[0][-1]["content"])
            for kind in ("rv", "cd", "logic")
        ]
        assert [row.rv, row.cd, row.logic] == expected
    failures = read_failures(str(tmp_path / "gen"))
    assert {(f["id"], f["kind"]) for f in failures} == {("p3/t/0", k) for k in ("rv", "cd", "logic")}
    assert all(f["reason"].startswith("no <score>") and "steps are clear" in f["judgment"] for f in failures)


def many_traces_output(folder: str, problems: int = 10, samples: int = 3) -> str:
    rows = [
        Trace(
            id=f"q{p}/t/{s}", problem_id=f"q{p}", problem=f"What is {p} + {s}?", reference=str(p + s),
            domain="math", teacher="t", sample=s, reasoning=f"{p} plus {s} " * (s + 1),
            content=f"The answer is \\boxed{{{p + s + (s == 2)}}}.", tokens=5, finish_reason="stop",
        )
        for p in range(problems)
        for s in range(samples)
    ]  # fmt: skip
    out = StageOutput(folder, "distill")
    write_jsonl(out.path("traces.jsonl"), rows)
    out.finish(result={"traces": len(rows)})
    return folder


def same_outputs(a: str, b: str) -> None:
    for kind, model in (("scored", Scored), ("sft", SftExample), ("preference", PreferencePair)):
        assert read_output(a, kind, model) == read_output(b, kind, model), kind
    selections = [json.loads(uris.read_text(os.path.join(f, "selection.json"))) for f in (a, b)]
    for s in selections:
        for k in ("judge_requests", "cache_hits", "judge_tokens"):
            s.pop(k)
    assert selections[0] == selections[1]


def test_curate_resumes_a_failed_judging_run_without_resending_answered_judgments(tmp_path, judge_server):
    from distilflow.errors import BackendError

    server, base_url = judge_server
    data = many_traces_output(str(tmp_path / "distill"), problems=4)  # 12 traces, 36 judgments
    out = str(tmp_path / "curate")
    server.fail_after, server.delay_s, server.answered = 13, 0.0, 0
    with pytest.raises(BackendError, match="rerun to resume"):  # the server keeps failing: a short final pass
        run(endpoint_config(out, data, base_url, judge={"retry_budget_s": 1}))
    assert not os.path.exists(os.path.join(out, MARKER))
    # every answer the server gave arrived and is cached, although two were in flight at the failure
    assert count_cache_entries(os.path.join(out, "cache")) == 13

    server.fail_after = None
    before = server.posts()
    resumed = run(endpoint_config(out, data, base_url))
    assert server.posts() - before == 36 - 13 == resumed.judge_requests and resumed.cache_hits == 13

    before = server.posts()
    whole = run(endpoint_config(str(tmp_path / "whole"), data, base_url))
    assert server.posts() - before == 36 and whole.kept == resumed.kept
    same_outputs(out, str(tmp_path / "whole"))


def test_curate_killed_mid_judging_resumes_from_the_cache(tmp_path, judge_server):
    import signal
    import subprocess
    import sys
    import time

    server, base_url = judge_server
    data = many_traces_output(str(tmp_path / "distill"))  # 30 traces, 90 judgments
    out = str(tmp_path / "curate")
    config = endpoint_config(out, data, base_url, mode="generate", judge={"concurrency": 4})
    server.fail_after, server.delay_s, server.answered = None, 0.02, 0
    script = "import sys\nfrom distilflow.components.curate.config import CurateConfig\n"
    script += "from distilflow.components.curate.run import run\nrun(CurateConfig.model_validate_json(sys.argv[1]))\n"
    proc = subprocess.Popen([sys.executable, "-c", script, config.model_dump_json()])
    try:
        deadline = time.monotonic() + 120
        while server.answered < 30 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 30 <= server.answered < 90
    assert not os.path.exists(os.path.join(out, MARKER))
    cached = count_cache_entries(os.path.join(out, "cache"))
    assert server.answered - 4 <= cached <= server.answered  # at most the requests in flight are lost

    server.delay_s = 0.0
    before = server.posts()
    resumed = run(config)
    assert server.posts() - before == 90 - cached == resumed.judge_requests

    whole = str(tmp_path / "whole")
    run(endpoint_config(whole, data, base_url, mode="generate", judge={"concurrency": 4}))
    same_outputs(out, whole)


def test_curate_report_renders_in_headless_chromium(tmp_path, distill_dir, tiny_qwen3):
    from html.parser import HTMLParser

    from tests.browser import render_dom

    result = run(
        curate_config(str(tmp_path / "curate"), distill_dir, tiny_qwen3, require_correct=False, preset="7b")
    )
    dom = render_dom(result.report_uri)

    class Charts(HTMLParser):
        """Per svg id: its rect elements (class, title); per table id: its rows' cells."""

        def __init__(self):
            super().__init__()
            self.svgs, self.tables, self.svg, self.table, self.rect, self.row = {}, {}, None, None, None, None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "svg":
                self.svg = self.svgs.setdefault(a.get("id"), [])
            elif tag == "rect" and self.svg is not None:
                self.rect = [a.get("class"), ""]
                self.svg.append(self.rect)
            elif tag == "table":
                self.table = self.tables.setdefault(a.get("id"), [])
            elif tag == "tr" and self.table is not None:
                self.row = []
                self.table.append(self.row)

        def handle_endtag(self, tag):
            if tag == "svg":
                self.svg = None
            elif tag == "rect":
                self.rect = None
            elif tag == "table":
                self.table = None

        def handle_data(self, data):
            if self.rect is not None:
                self.rect[1] += data
            elif self.table is not None and self.row is not None and data.strip():
                self.row.append(data.strip())

    page = Charts()
    page.feed(dom)
    scored = read_output(str(tmp_path / "curate"), "scored", Scored)
    for when, rows in (("before", scored), ("after", [r for r in scored if r.kept])):
        for axis in ("rv", "cd"):
            bars = page.svgs[f"hist-{axis}-{when}"]
            assert [c for c, _ in bars] == ["bar"] * 10
            counts = [int(title.split(": ")[1]) for _, title in bars]
            assert counts == [sum(min(int(getattr(r, axis)), 9) == i for r in rows) for i in range(10)]
        cells = page.svgs[f"heat-{when}"]
        assert len(cells) == 100 and {c for c, _ in cells} == {"cell"}
        assert sum(int(title.rsplit(": ", 1)[1]) for _, title in cells) == len(rows)
    kept_ids = {r.id for r in scored if r.kept}
    sample_ids = {row[0] for row in page.tables["samples-kept"][1:]}
    assert sample_ids and sample_ids <= kept_ids
    flow = {row[0]: row[1:] for row in page.tables["filters"][1:]}
    assert flow["contaminated"][0] == str(len(TRACES)) and flow["domain_quota"][-1] == str(result.kept)


@pytest.mark.unit
def test_output_shards_fall_back_to_single_files_and_check_ids_across_shards(tmp_path):
    from distilflow.records import iter_output_rows, output_shards
    from tests.conftest import curate_output

    def example(i: int) -> SftExample:
        return SftExample.model_validate(
            {
                "id": f"e{i}",
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            }
        )

    # an output written before shards (or by hand): its <kind>.jsonl
    legacy = curate_output(str(tmp_path / "legacy"), "sft.jsonl", [example(0), example(1)])
    assert output_shards(legacy, "sft") == [os.path.join(legacy, "sft.jsonl")]
    assert [e.id for e in iter_output_rows(legacy, "sft", SftExample)] == ["e0", "e1"]
    assert output_shards(os.path.join(legacy, "sft.jsonl"), "sft") == [os.path.join(legacy, "sft.jsonl")]
    with pytest.raises(ConfigError, match="neither preference shards"):
        output_shards(legacy, "preference")
    # shards listed in the manifest, read in order; an id repeated in a later shard is refused
    out = StageOutput(str(tmp_path / "sharded"), "curate")
    write_jsonl(out.path("sft-00000-of-00002.jsonl"), [example(0), example(1)])
    write_jsonl(out.path("sft-00001-of-00002.jsonl"), [example(2), example(1)])
    out.finish(result={"shards": {"sft": ["sft-00000-of-00002.jsonl", "sft-00001-of-00002.jsonl"]}})
    with pytest.raises(Exception, match="duplicate id 'e1' \\(also in an earlier shard\\)"):
        list(iter_output_rows(out.uri, "sft", SftExample))
    assert [e.id for e in iter_output_rows(out.uri, "sft", SftExample, unique_ids=False)] == [
        "e0",
        "e1",
        "e2",
        "e1",
    ]
    with pytest.raises(IncompleteOutputError):
        output_shards(str(tmp_path / "nothing"), "sft")


def test_curate_shards_and_cache_on_object_storage(tmp_path, distill_dir, tiny_qwen3, s3_bucket):
    from distilflow.records import output_shards

    out = f"s3://{s3_bucket}/run/curate"
    first = run(
        curate_config(out, distill_dir, tiny_qwen3, shard_rows=3, single_files=True, require_correct=False)
    )
    assert first.judge_requests == 21 and uris.exists(f"{out}/scored-00002-of-00003.jsonl")
    rows = read_output(out, "scored", Scored)
    assert [r.id for r in rows] == [r.id for r in read_jsonl(f"{out}/scored.jsonl", Scored)]
    # a new layout from the cache in the bucket: the old shards and single files are gone
    again = run(curate_config(out, distill_dir, tiny_qwen3, shard_rows=4, require_correct=False))
    assert (again.judge_requests, again.cache_hits) == (0, 21)
    assert output_shards(out, "scored") == [f"{out}/scored-0000{i}-of-00002.jsonl" for i in range(2)]
    assert not uris.exists(f"{out}/scored-00002-of-00003.jsonl") and not uris.exists(f"{out}/scored.jsonl")
    assert read_output(out, "scored", Scored) == rows
