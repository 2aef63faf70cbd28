"""The synthetic task family, the simulated teacher and judge, and their OpenAI-compatible server.

Values are computed here independently of ``distilflow.synthetic`` (modular arithmetic written out
again, word counts, shares over many draws); the judge is asked through curate's own prompt builder and
read back through curate's own scoring, the path the benchmark uses.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import urllib.error
import urllib.request

import pytest

from distilflow.synthetic import judge, tasks, teacher
from distilflow.synthetic.server import SyntheticServer

# ---------------------------------------------------------------- tasks


def _solve(start: int, ops, bug: bool = False) -> int:
    """The answer written out again: +, -, * modulo 10; the bug subtracts the smaller from the larger."""
    x = start
    for op, b in ops:
        if op == "+":
            x = (x + b) % 10
        elif op == "*":
            x = (x * b) % 10
        elif bug and x < b:
            x = b - x
        else:
            x = (x - b + 10) % 10
    return x


def test_problems_state_their_steps_and_answers():
    problems = tasks.generate(60, seed=3)
    assert len({p.text for p in problems}) == 60
    assert [p.steps for p in problems[:10]] == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    for p in problems:
        parsed = tasks.parse_problem("Some preamble. " + p.text)
        assert parsed is not None and (parsed.start, parsed.ops) == (p.start, p.ops)
        assert p.record()["answer"] == str(_solve(p.start, p.ops))
        assert p.answer(bug=True) == _solve(p.start, p.ops, bug=True)
    assert tasks.parse_problem("What is 3 + 4?") is None
    assert tasks.parse_problem(problems[0].text.replace("modulo 10", "modulo 7")) is None
    # the smaller-from-larger bug: 2 - 9 wraps to 3 modulo 10; the bug writes 9 - 2 = 7
    assert tasks.apply("-", 2, 9) == 3 and tasks.apply("-", 2, 9, bug=True) == 7
    assert tasks.apply("-", 9, 2, bug=True) == 7  # no borrow needed: the bug changes nothing
    held_out = tasks.generate(30, seed=4, exclude={p.text for p in problems})
    assert not {p.text for p in held_out} & {p.text for p in problems}
    with pytest.raises(ValueError, match="only 270 such problems exist"):
        tasks.generate(2000, seed=0)
    # a narrower family: additions and subtractions only (the learning benchmark's)
    plus_minus = tasks.generate(100, seed=5, ops=("+", "-"))
    assert {op for p in plus_minus for op, _ in p.ops} == {"+", "-"}
    with pytest.raises(ValueError, match="only 180 such problems exist"):
        tasks.generate(1000, seed=0, steps=(1,), ops=("+", "-"))
    with pytest.raises(ValueError, match="must be some of"):
        tasks.generate(10, seed=0, ops=("/",))


def test_chains_compute_the_same_steps_at_growing_verbosity():
    problem = tasks.ChainProblem("p", 2, (("-", 9), ("*", 3), ("+", 4)))  # 2-9 needs the wrap
    words = []
    for level in tasks.LEVELS:
        reasoning, answer = tasks.render_chain(problem, level)
        equations = list(dict.fromkeys(re.findall(r"(\d)([+\-*])(\d)=(\d)", reasoning)))  # checks repeat them
        assert equations == [("2", "-", "9", "3"), ("3", "*", "3", "9"), ("9", "+", "4", "3")]
        assert answer == "The result is \\boxed{3}."
        words.append(len(re.findall(r"\w+", reasoning)))
        buggy, wrong = tasks.render_chain(problem, level, bug=True)
        assert ("2", "-", "9", "7") in re.findall(r"(\d)([+\-*])(\d)=(\d)", buggy)
        assert wrong == f"The result is \\boxed{{{_solve(2, problem.ops, bug=True)}}}."
    assert words == sorted(words) and words[-1] > 4 * words[0]
    terse = tasks.render_chain(problem, "terse")[0]
    assert terse == "1: -9, 2-9=3.\n2: *3, 3*3=9.\n3: +4, 9+4=3."  # every level holds these lines
    for level in tasks.LEVELS:
        assert all(line in tasks.render_chain(problem, level)[0] for line in terse.split("\n"))


# ---------------------------------------------------------------- teacher


def test_teacher_mistakes_are_one_rule_at_the_set_rate():
    problems = tasks.generate(200, seed=5)
    needs_wrap = [p for p in problems if p.buggy()]
    clean = [p for p in problems if not p.buggy()]
    assert needs_wrap and clean
    outcomes, levels = [], []
    for p in needs_wrap:
        for seed in range(8):
            sample = teacher.answer(p.text, seed, bug_rate=0.75)
            boxed = re.findall(r"\\boxed\{(\d)\}", sample.text)[-1]
            assert int(boxed) in (p.answer(), p.answer(bug=True))  # right, or wrong by the one rule
            outcomes.append(int(boxed) == p.answer(bug=True))
            levels.append(sample.level)
    assert 0.70 <= statistics.fmean(outcomes) <= 0.80
    assert set(levels) == set(tasks.LEVELS)
    for p in clean:  # no subtraction below zero: always right
        assert all(f"\\boxed{{{p.answer()}}}" in teacher.answer(p.text, s, 0.75).text for s in range(4))
    first = teacher.answer(needs_wrap[0].text, 3, 0.75)
    assert teacher.answer(needs_wrap[0].text, 3, 0.75) == first  # a seed fixes the sample
    quiet = teacher.answer(needs_wrap[0].text, 3, 0.75, thinking=False)
    assert "<think>" not in quiet.text and "\\boxed" in quiet.text
    assert teacher.answer("Tell me a joke.", 0, 0.75).level is None


# ---------------------------------------------------------------- judge, through curate's prompts


def _judged(problem: tasks.ChainProblem, level: str, bug: bool = False) -> dict[str, float]:
    """Each quantity as curate scores it: its rubric prompt, the judge's top tokens, the expected digit."""
    from distilflow.components.curate.run import expected_score, judge_chats
    from distilflow.records import Trace
    from distilflow.teachers.protocol import read_digit_probs

    reasoning, answer = tasks.render_chain(problem, level, bug)
    trace = Trace(
        id="t", problem_id="p", problem=problem.text, teacher="t", sample=0,
        reasoning=reasoning, content=answer, tokens=1, finish_reason="stop",
    )  # fmt: skip
    found = {}
    for kind, digits in (("rv", "0123456789"), ("cd", "0123456789"), ("logic", "01")):
        text = judge_chats([trace], kind, "logprobs")[0][0]["content"]
        prompt = judge.read_prompt(text)
        assert prompt is not None and prompt.kind == kind and prompt.problem == problem.text
        top = judge.next_token_distribution(prompt, text)
        assert sum(p for t, p in top.items() if t.isdigit()) == pytest.approx(0.92)  # 8% elsewhere
        probs = read_digit_probs(top, digits, 0.5)  # curate's default min_digit_mass
        found[kind] = probs["1"] if kind == "logic" else expected_score(probs)
    return found


def test_judge_scores_are_noisy_estimates_of_verbosity_difficulty_and_soundness():
    problems = tasks.generate(100, seed=6)
    rv = {level: [_judged(p, level)["rv"] for p in problems] for level in tasks.LEVELS}
    means = [statistics.fmean(v) for v in rv.values()]
    assert means == sorted(means) and means[0] < 1.6 and means[-1] > 7.0
    # one bare line a step: 5 words, RV 1 by the calibration; the judge is near it but not exact
    assert statistics.fmean(rv["terse"]) == pytest.approx(1.0, abs=0.3)
    assert 0.2 < statistics.pstdev(rv["brief"]) < 1.0
    cd = {k: [_judged(p, "brief")["cd"] for p in problems if p.steps == k] for k in range(1, 6)}
    for k, values in cd.items():
        assert statistics.fmean(values) == pytest.approx(1 + 1.75 * (k - 1), abs=0.45)
        assert len(set(values)) > 1  # noisy
    buggy = [p for p in problems if p.buggy()]
    sound = statistics.fmean(_judged(p, "brief")["logic"] for p in buggy)
    unsound = statistics.fmean(_judged(p, "brief", bug=True)["logic"] for p in buggy)
    assert sound > 0.8 and unsound < 0.3


def test_rv_calibration_and_soundness_check():
    assert judge.rv_of_words(5) == pytest.approx(1.0) and judge.rv_of_words(30) == pytest.approx(8.0)
    assert judge.rv_of_words(1000) == 9.0 and judge.rv_of_words(0) == 0.0
    assert judge.chain_is_sound("", "3+4=7\n7*2=4", "\\boxed{4}")
    assert not judge.chain_is_sound("", "3+4=7\n7*2=5", "\\boxed{5}")  # 7*2 is 4 modulo 10
    assert not judge.chain_is_sound("", "3+4=7", "\\boxed{8}")  # the answer is not where the chain ended


# ---------------------------------------------------------------- server


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_refuses_what_vllm_refuses():
    with SyntheticServer() as server:
        url = server.base_url
        ok = {"model": "synthetic-teacher", "messages": [{"role": "user", "content": "hi"}]}
        cases = {
            404: {**ok, "model": "gpt-4"},
            400: [
                {**ok, "messages": []},
                {**ok, "messages": [{"role": "robot", "content": "hi"}]},
                {**ok, "messages": [{"role": "user", "content": 3}]},
                {**ok, "temperature": 2.5},
                {**ok, "top_p": 0},
                {**ok, "max_tokens": 0},
                {**ok, "n": "2"},
                {**ok, "top_logprobs": 5},  # without logprobs
                {**ok, "logprobs": True, "top_logprobs": 21},
                {**ok, "stream": True},
                {**ok, "chat_template_kwargs": "off"},
                {**ok, "continue_final_message": True},  # nothing to continue: the last turn is the user's
                {
                    **ok,
                    "messages": [*ok["messages"], {"role": "assistant", "content": "Score: "}],
                    "continue_final_message": True,
                    "add_generation_prompt": True,
                },
            ],
        }
        status, reply = _post(url, cases[404])
        assert status == 404 and "does not exist" in reply["error"]["message"]
        for body in cases[400]:
            status, reply = _post(url, body)
            assert status == 400 and reply["error"]["type"] == "BadRequestError", body
        with urllib.request.urlopen(url + "/models") as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "synthetic-teacher"
        # extra fields are accepted, as vLLM accepts them
        status, reply = _post(url, {**ok, "seed": 1, "repetition_penalty": 1.1, "max_tokens": 5})
        assert status == 200 and reply["choices"][0]["finish_reason"] == "length"
        assert reply["usage"]["completion_tokens"] == 5
        assert server.counts["teacher"] == 1  # refused requests reach neither role


def test_server_judges_with_top_logprobs_a_prefill_and_thinking_off():
    problem = tasks.generate(3, seed=7)[2]
    reasoning, answer = tasks.render_chain(problem, "detailed")
    from distilflow.components.curate.run import judge_chats
    from distilflow.records import Trace

    trace = Trace(
        id="t", problem_id="p", problem=problem.text, teacher="t", sample=0,
        reasoning=reasoning, content=answer, tokens=1, finish_reason="stop",
    )  # fmt: skip
    chat = judge_chats([trace], "cd", "logprobs")[0]
    with SyntheticServer() as server:
        body = {
            "model": "synthetic-teacher",
            "messages": chat,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 20,
        }
        status, reply = _post(server.base_url, body)
        assert status == 200
        (first,) = reply["choices"][0]["logprobs"]["content"]
        top = {t["token"]: t["logprob"] for t in first["top_logprobs"]}
        assert len(top) == 16 and first["token"] == max(top, key=top.get)
        assert reply["choices"][0]["message"]["content"] == first["token"]
        # thinking off and an assistant prefill (what a judge safe with reasoning models may send)
        variant = {
            **body,
            "messages": [*chat, {"role": "assistant", "content": "Score: "}],
            "chat_template_kwargs": {"enable_thinking": False},
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
        status, again = _post(server.base_url, variant)
        assert status == 200
        assert again["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["token"].isdigit()
        written = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")} | {
            "max_tokens": 200
        }
        # the body curate's logprobs judge sends (teachers.protocol.judge_body: prefill, thinking off)
        from distilflow.teachers.config import TeacherConfig
        from distilflow.teachers.protocol import judge_body

        config = TeacherConfig(backend="openai", base_url=server.base_url, model="synthetic-teacher")
        sent = judge_body(config, chat)
        assert sent["continue_final_message"] and sent["messages"][-1]["role"] == "assistant"
        status, production = _post(server.base_url, sent)
        assert status == 200, production
        top = production["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        assert sum(math.exp(t["logprob"]) for t in top if t["token"].isdigit()) == pytest.approx(0.92)
        status, judgment = _post(server.base_url, written)
        assert re.search(r"<score>\d</score>$", judgment["choices"][0]["message"]["content"])
        assert server.counts["judge"] == 4


def test_curate_judge_client_reads_the_server_like_an_endpoint(tmp_path):
    """The production endpoint client (OpenAITeacher.digit_probs) against the server: CD of a 5-step
    problem read back from the top logprobs near 8.0, logic of a buggy chain low."""
    from distilflow.components.curate.run import expected_score, judge_chats
    from distilflow.records import Trace
    from distilflow.teachers.config import TeacherConfig
    from distilflow.teachers.openai import OpenAITeacher

    problem = next(p for p in tasks.generate(50, seed=8) if p.steps == 5 and p.buggy())
    reasoning, answer = tasks.render_chain(problem, "brief", bug=True)
    trace = Trace(
        id="t", problem_id="p", problem=problem.text, teacher="t", sample=0,
        reasoning=reasoning, content=answer, tokens=1, finish_reason="stop",
    )  # fmt: skip
    with SyntheticServer() as server:
        client = OpenAITeacher(
            TeacherConfig(backend="openai", base_url=server.base_url, model="synthetic-teacher")
        )
        cd, logic = client.digit_probs(
            [judge_chats([trace], "cd", "logprobs")[0], judge_chats([trace], "logic", "logprobs")[0]],
            "0123456789",
        )
    assert expected_score(cd) == pytest.approx(8.0, abs=1.0)
    assert logic["1"] / (logic["0"] + logic["1"]) < 0.35
