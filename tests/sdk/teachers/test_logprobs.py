"""Teacher token logprobs: the cached form, the two wire formats they arrive in (OpenAI chat
``logprobs.content`` with vLLM's token ids; vLLM's per-position ``{id: Logprob}`` maps, offline or
as ``prompt_logprobs`` JSON), the vocabulary fingerprint and the tokens of a given answer."""

import math

import numpy as np
import pytest

from distilflow.errors import BackendError
from distilflow.teachers.logprobs import (
    TokenLogprobs,
    from_chat_logprobs,
    from_vllm_positions,
    response_ids,
    vocab_fingerprint,
)


@pytest.mark.unit
def test_json_round_trip_keeps_every_value_and_the_padding():
    found = TokenLogprobs(
        ids=[5, 7],
        logprobs=[-0.1, -2.5],
        top_ids=[[5, 1, 2], [3, 7, 0]],
        top_logprobs=[[-0.1, -3.0, -4.0], [-0.5, -2.5, -math.inf]],
    )
    back = TokenLogprobs.from_json(found.to_json())
    assert back.k == 3 and len(back) == 2
    np.testing.assert_array_equal(back.top_ids, [[5, 1, 2], [3, 7, 0]])
    np.testing.assert_array_equal(back.top_logprobs, found.top_logprobs)
    assert back.top_logprobs[1, 2] == -np.inf and back.logprobs.dtype == np.float32
    with pytest.raises(BackendError, match="do not line up"):
        TokenLogprobs(ids=[1, 2], logprobs=[-1.0], top_ids=[[1], [2]], top_logprobs=[[-1.0], [-2.0]])


@pytest.mark.unit
def test_chat_logprobs_with_token_ids():
    content = [
        {
            "token": "token_id:11",
            "logprob": -0.2,
            "top_logprobs": [
                {"token": "token_id:11", "logprob": -0.2},
                {"token": "token_id:4", "logprob": -1.9},
            ],
        },
        {
            "token": "token_id:9",
            "logprob": -3.0,  # sampled outside the top-2
            "top_logprobs": [
                {"token": "token_id:2", "logprob": -0.4},
                {"token": "token_id:3", "logprob": -1.5},
            ],
        },
    ]
    found = from_chat_logprobs(content, 2, "teacher")
    np.testing.assert_array_equal(found.ids, [11, 9])
    np.testing.assert_allclose(found.logprobs, [-0.2, -3.0])
    np.testing.assert_array_equal(found.top_ids, [[11, 4], [2, 3]])
    np.testing.assert_allclose(found.top_logprobs, [[-0.2, -1.9], [-0.4, -1.5]])


@pytest.mark.unit
def test_tokens_as_text_are_refused_naming_the_fix():
    content = [{"token": " the", "logprob": -0.1, "top_logprobs": [{"token": " the", "logprob": -0.1}]}]
    with pytest.raises(BackendError, match="return_tokens_as_token_ids"):
        from_chat_logprobs(content, 1, "http://x/v1")


@pytest.mark.unit
def test_vllm_positions_take_the_top_k_by_rank_and_the_own_token_apart():
    """vLLM adds the position's own token to its top-k when it is not among them (here token 9, rank
    7); JSON keys are strings."""
    positions = [
        {"4": {"logprob": -1.2, "rank": 2}, "11": {"logprob": -0.3, "rank": 1}},
        {
            "2": {"logprob": -0.4, "rank": 1},
            "9": {"logprob": -3.0, "rank": 7},
            "3": {"logprob": -1.5, "rank": 2},
        },
    ]
    found = from_vllm_positions([11, 9], positions, 2, "teacher")
    np.testing.assert_array_equal(found.ids, [11, 9])
    np.testing.assert_allclose(found.logprobs, [-0.3, -3.0])
    np.testing.assert_array_equal(found.top_ids, [[11, 4], [2, 3]])
    with pytest.raises(BackendError, match="lacks the logprob of its own token"):
        from_vllm_positions([5], positions[:1], 2, "teacher")
    with pytest.raises(BackendError, match="2 tokens but logprobs for 1"):
        from_vllm_positions([11, 9], positions[:1], 2, "teacher")


def test_fingerprint_tells_vocabularies_apart_and_response_ids_follow_the_template(tmp_path, tiny_qwen3):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    same = vocab_fingerprint(AutoTokenizer.from_pretrained(tiny_qwen3))
    assert vocab_fingerprint(tok) == same and same["vocab_size"] == len(tok)
    other = AutoTokenizer.from_pretrained(tiny_qwen3)
    other.add_tokens(["<extra_token>"])
    assert vocab_fingerprint(other)["fingerprint"] != same["fingerprint"]

    chat = [{"role": "user", "content": "What is 3 + 4?"}]
    prompt, answer = response_ids(tok, chat, "add them", "7")
    rendered = tok.decode(prompt + answer)
    assert rendered.endswith("<|im_start|>assistant\n<think>\nadd them\n</think>\n\n7<|im_end|>")
    assert tok.decode(answer).startswith("<think>") and answer[-1] == tok.convert_tokens_to_ids("<|im_end|>")
