"""distill's white-box artifact: the teacher's top-k logprobs of every answer token, in Parquet.

Every stored value is checked against a forward pass of the teacher computed here with transformers
(not distilflow's backend code), for the in-process teacher, an endpoint (a loopback vLLM stand-in)
and given answers; a killed run resumes without paying twice and leaves no trace without logits; a
shared cache answers a second output; the manifest carries the vocabulary fingerprint and the
sampling settings; an endpoint whose tokens do not decode with the given tokenizer is refused."""

import json
import os

import numpy as np
import pytest

from distilflow.components.distill.config import DistillConfig
from distilflow.components.distill.logits import iter_rows
from distilflow.records import Problem, Trace, read_jsonl, write_jsonl


@pytest.fixture
def problems(tmp_path) -> str:
    rows = [Problem(id=f"p{i}", problem=f"What is {i} + {i + 3}?", answer=str(2 * i + 3)) for i in range(3)]
    path = str(tmp_path / "problems.jsonl")
    write_jsonl(path, rows)
    return path


def distill_config(tmp_path, problems, teacher: dict, name: str = "distill", **extra) -> DistillConfig:
    section = {
        "output_uri": str(tmp_path / name),
        "problems_uri": problems,
        "teacher": {"max_new_tokens": 12, "temperature": 1.0, "seed": 0} | teacher,
        "n": 2,
        "prompt": "native",
        "logits": {"top_k": 5},
    }
    return DistillConfig.from_dict(section | extra)


def forward_topk(model_dir: str, prompt: list[dict], ids: list[int], k: int):
    """The teacher's log-softmax at every answer token, computed here: (own logprobs, top-k ids, values)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    head = tok.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([list(head) + list(ids)])).logits[0]
    lp = torch.log_softmax(logits.float(), dim=-1)[len(head) - 1 : -1]
    top = torch.topk(lp, k)
    own = lp.gather(-1, torch.tensor(ids).view(-1, 1)).view(-1)
    return own.numpy(), top.indices.numpy(), top.values.numpy()


def check_rows(result, teacher_dir: str, traces: list[Trace]) -> list[dict]:
    """Every trace has one row whose values are the teacher's own, and whose tokens are its text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    rows = [r for uri in result.logits.files for r in iter_rows(uri)]
    assert sorted(r["id"] for r in rows) == sorted(t.id for t in traces)
    by_id = {t.id: t for t in traces}
    for row in rows:
        own, top_ids, top_lps = forward_topk(teacher_dir, json.loads(row["prompt"]), row["ids"].tolist(), 5)
        np.testing.assert_allclose(row["logprobs"], own, atol=1e-4)
        np.testing.assert_array_equal(row["top_ids"], top_ids)
        np.testing.assert_allclose(row["top_logprobs"], top_lps, atol=1e-4)
        trace = by_id[row["id"]]
        assert trace.content.strip() in tok.decode(row["ids"].tolist(), skip_special_tokens=True)
    return rows


def test_in_process_teacher_stores_its_top_k_at_every_answer_token(tmp_path, problems, tiny_teacher):
    from transformers import AutoTokenizer

    from distilflow.components.distill.run import run
    from distilflow.teachers.logprobs import vocab_fingerprint

    config = distill_config(
        tmp_path, problems, {"backend": "transformers", "model": tiny_teacher}, shard_size=2
    )
    result = run(config)
    traces = read_jsonl(result.traces_uri, Trace)
    rows = check_rows(result, tiny_teacher, traces)
    assert result.logits_rows == len(traces) == 6
    assert result.logits_tokens == sum(len(r["ids"]) for r in rows) == result.logits.tokens
    assert result.logits.bytes == sum(os.path.getsize(f) for f in result.logits.files)
    assert result.logits_mb_per_million_tokens == pytest.approx(
        result.logits.bytes / result.logits.tokens, rel=1e-3
    )
    with open(os.path.join(config.output_uri, "manifest.json")) as f:
        manifest = json.load(f)
    logits = manifest["result"]["logits"]
    assert (
        logits["tokenizer_fingerprint"]
        == vocab_fingerprint(AutoTokenizer.from_pretrained(tiny_teacher))["fingerprint"]
    )
    assert logits["sampling"][config.teacher.display_name] == {
        "max_new_tokens": 12,
        "temperature": 1.0,
        "top_p": 0.95,
        "seed": 0,
        "chat_template_kwargs": None,
    }
    assert logits["top_k"] == 5 and logits["source"] == "generated"
    assert manifest["counts"]["logits_tokens"] == result.logits_tokens
    assert not os.path.exists(os.path.join(config.output_uri, "parts"))


def test_a_killed_run_resumes_and_a_shared_cache_answers_another_output(
    tmp_path, problems, tiny_teacher, monkeypatch
):
    """The teacher dies on its second batch: the first batch's traces and logits are kept; the rerun
    generates only the rest. A second output on the same cache generates nothing."""
    from distilflow.components.distill.run import run
    from distilflow.teachers.transformers import TransformersTeacher

    calls: list[int] = []
    kill = {"on_call": 2}
    real = TransformersTeacher.generate

    def counted(self, chats, n=1, logprobs=0):
        calls.append(len(chats))
        if len(calls) == kill["on_call"]:
            raise RuntimeError("killed")
        return real(self, chats, n=n, logprobs=logprobs)

    monkeypatch.setattr(TransformersTeacher, "generate", counted)
    cache = str(tmp_path / "cache")
    teacher = {"backend": "transformers", "model": tiny_teacher}
    config = distill_config(tmp_path, problems, teacher, shard_size=1, batch_size=2, cache_uri=cache)
    with pytest.raises(RuntimeError, match="killed"):
        run(config)
    calls.clear()
    kill["on_call"] = 0
    result = run(config)
    assert result.resumed == 4 and calls == [1]  # 2 problems x 2 samples kept; only the third problem asked
    check_rows(result, tiny_teacher, read_jsonl(result.traces_uri, Trace))

    calls.clear()
    again = run(distill_config(tmp_path, problems, teacher, name="again", cache_uri=cache))
    assert calls == [] and again.cache_hits == 6
    first = {r["id"]: r for f in result.logits.files for r in iter_rows(f)}
    for row in (r for f in again.logits.files for r in iter_rows(f)):
        np.testing.assert_array_equal(row["top_logprobs"], first[row["id"]]["top_logprobs"])


def test_endpoint_teacher_returns_token_ids_with_their_top_k(tmp_path, problems, tiny_teacher):
    from distilflow.components.distill.run import run
    from tests.fakes.vllm_server import VllmLogprobsServer

    server = VllmLogprobsServer(tiny_teacher, served_name="teacher")
    url = server.start()
    try:
        teacher = {"backend": "openai", "base_url": url, "model": "teacher", "tokenizer": tiny_teacher}
        result = run(distill_config(tmp_path, problems, teacher))
    finally:
        server.stop()
    check_rows(result, tiny_teacher, read_jsonl(result.traces_uri, Trace))
    bodies = [r["body"] for r in server.requests if r["path"].endswith("chat/completions")]
    assert len(bodies) == 6
    assert all(
        b["logprobs"] is True and b["top_logprobs"] == 5 and b["return_tokens_as_token_ids"] for b in bodies
    )


def test_an_endpoint_tokenizer_that_is_not_the_served_one_is_refused(tmp_path, problems, tiny_teacher):
    from distilflow.components.distill.run import run
    from distilflow.errors import BackendError
    from distilflow.tiny import train_tokenizer
    from tests.fakes.vllm_server import VllmLogprobsServer

    other = str(tmp_path / "other-tokenizer")
    train_tokenizer(other, vocab_size=300)
    server = VllmLogprobsServer(tiny_teacher, served_name="teacher")
    url = server.start()
    try:
        teacher = {"backend": "openai", "base_url": url, "model": "teacher", "tokenizer": other}
        with pytest.raises(BackendError, match="not the served model's tokenizer"):
            run(distill_config(tmp_path, problems, teacher))
    finally:
        server.stop()


def test_given_answers_are_scored_as_the_teacher_renders_them(tmp_path, problems, tiny_teacher):
    """logits.answers_uri: answers written elsewhere (here by hand) get the teacher's top-k over the
    tokens its chat template gives them: <think> reasoning, content, end of turn."""
    from transformers import AutoTokenizer

    from distilflow.components.distill.run import run

    given = [
        Trace(
            id=f"p{i}/writer/0",
            problem_id=f"p{i}",
            problem=f"What is {i} + {i + 3}?",
            teacher="writer",
            sample=0,
            reasoning=f"{i} plus {i + 3}",
            content=f"The answer is {2 * i + 3}.",
            tokens=9,
            finish_reason="stop",
        )
        for i in range(2)
    ]
    answers = str(tmp_path / "given.jsonl")
    write_jsonl(answers, given)
    teacher = {"backend": "transformers", "model": tiny_teacher}
    config = distill_config(tmp_path, problems, teacher, n=1, logits={"top_k": 5, "answers_uri": answers})
    result = run(config)
    assert result.traces == 2 and result.logits.source == "scored"
    rows = check_rows(result, tiny_teacher, given)
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    for row, trace in zip(sorted(rows, key=lambda r: r["id"]), given, strict=True):
        text = f"<think>\n{trace.reasoning}\n</think>\n\n{trace.content}<|im_end|>"
        assert row["ids"].tolist() == tok(text, add_special_tokens=False)["input_ids"]


def test_fanned_out_shards_merge_their_logits_in_float16(tmp_path, problems, tiny_teacher):
    from distilflow.components.distill.run import merge, run, shard_uri

    root = str(tmp_path / "distill")
    teacher = {"backend": "transformers", "model": tiny_teacher}
    full = run(distill_config(tmp_path, problems, teacher, name="full"))
    for i in range(2):
        section = {"num_shards": 2, "shard_index": i, "cache_uri": str(tmp_path / "full" / "cache")}
        config = distill_config(
            tmp_path, problems, teacher, **section, logits={"top_k": 5, "dtype": "float16"}
        )
        run(config.model_copy(update={"output_uri": shard_uri(root, i)}))
    merged = merge(root, [shard_uri(root, i) for i in range(2)])
    assert merged.logits_rows == 6 and len(merged.logits.files) == 2 and merged.logits.dtype == "float16"
    from distilflow.components.distill.logits import read_table

    assert str(read_table(merged.logits.files[0]).schema.field("top_logprobs").type.value_type) == "halffloat"
    exact = {r["id"]: r for f in full.logits.files for r in iter_rows(f)}
    for row in (r for f in merged.logits.files for r in iter_rows(f)):
        np.testing.assert_allclose(row["top_logprobs"], exact[row["id"]]["top_logprobs"], atol=1e-2)


def test_a_text_only_output_asked_again_with_logits_gets_them_for_every_trace(
    tmp_path, problems, tiny_teacher
):
    """Logits change what is asked: a text-only run's shards and cached answers are not taken for a
    run with logits (its answers would have none); every trace of the rerun has its row."""
    from distilflow.components.distill.run import run

    teacher = {"backend": "transformers", "model": tiny_teacher}
    text = distill_config(tmp_path, problems, teacher, logits=None, shard_size=2)
    assert run(text).logits is None
    result = run(distill_config(tmp_path, problems, teacher, shard_size=2))
    assert result.resumed == 0 and result.logits_rows == 6
    check_rows(result, tiny_teacher, read_jsonl(result.traces_uri, Trace))


@pytest.mark.unit
def test_assembly_refuses_a_trace_without_logits(tmp_path):
    from distilflow.components.distill.logits import assemble, write_part
    from distilflow.errors import DistilflowError

    row = {
        "id": "p1/t/0",
        "problem_id": "p1",
        "sample": 0,
        "teacher": "t",
        "prompt": "[]",
        "ids": np.array([5, 6], dtype=np.int32),
        "logprobs": np.array([-0.1, -0.2], dtype=np.float32),
        "top_ids": np.array([5, 1, 6, 2], dtype=np.int32),
        "top_logprobs": np.array([-0.1, -3.0, -0.2, -2.0], dtype=np.float32),
        "k": 2,
    }
    part = str(tmp_path / "parts" / "logits-00000.parquet")
    write_part(part, [row, row | {"id": "p1/t/1"}], 2, "float32")
    files, rows, tokens, _ = assemble([part], str(tmp_path / "logits"), ["p1/t/1"])
    assert (len(files), rows, tokens) == (1, 1, 2)  # only the wanted trace, once
    with pytest.raises(DistilflowError, match="1 traces have no logits.*p2/t/0"):
        assemble([part], str(tmp_path / "logits2"), ["p1/t/0", "p2/t/0"])
