"""deploy, target local, with vLLM's OpenAI server: a readable served name, token-by-token
streaming, thinking on and off; the smoke test and endpoint.json use the served name."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.vllm_cpu


def test_deploy_local_vllm_serves_a_clean_name_and_records_it(deployed, judge_model):
    config, result, out = deployed
    name = os.path.basename(judge_model)  # the model folder's name: no path, no scheme
    assert "/" not in name and result["served_model"] == name
    assert result["backend"] == "vllm" and result["target"] == "local"
    assert result["stopped"] is False and result["pid"] and result["endpoint_url"].endswith("/v1")
    info = json.loads((out / "endpoint.json").read_text())
    assert info["served_model"] == name and info["model"] == judge_model and info["backend"] == "vllm"
    smoke = info["smoke"]
    assert smoke["listed_models"] == [name]
    assert 0 < smoke["completion_tokens"] <= config["max_tokens"]
    # The tiny Qwen3's template honours enable_thinking: the smoke test chatted with it on and off.
    assert set(smoke["thinking"]) == {"on", "off"}
    assert all(0 < m["completion_tokens"] <= config["max_tokens"] for m in smoke["thinking"].values())
    stream = smoke["stream"]
    assert stream["tokens_from_usage"] and stream["chunks"] > 1
    assert stream["time_to_first_token_s"] < stream["latency_s"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["result"]["served_model"] == name and (out / "_COMPLETE").exists()


def test_local_vllm_server_streams_token_by_token_and_switches_thinking(deployed):
    """Against the kept server: /v1/models lists only the served name; a streamed chat arrives in
    about one chunk per generated token; thinking off puts the empty think block in the prompt."""
    import openai

    _config, result, _out = deployed
    client = openai.OpenAI(base_url=result["endpoint_url"], api_key="EMPTY", timeout=120, max_retries=0)
    try:
        assert [m.id for m in client.models.list().data] == [result["served_model"]]
        chat = [{"role": "user", "content": "Count from one to ten."}]
        stream = client.chat.completions.create(
            model=result["served_model"],
            messages=chat,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        pieces, usage = [], None
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                delta = choice.delta
                text = (delta.content or "") + (getattr(delta, "reasoning_content", None) or "")
                text += getattr(delta, "reasoning", None) or ""
                if text:
                    pieces.append(text)
        assert usage is not None and usage.completion_tokens == 16
        assert len(pieces) >= 12, f"16 tokens arrived in {len(pieces)} chunks"
        prompts = {}
        for on in (True, False):
            reply = client.chat.completions.create(
                model=result["served_model"],
                messages=chat,
                max_tokens=1,
                extra_body={"chat_template_kwargs": {"enable_thinking": on}},
            )
            prompts[on] = reply.usage.prompt_tokens
        assert prompts[False] > prompts[True]  # "<think>\n\n</think>\n\n" added with thinking off
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=_config["model"], messages=chat, max_tokens=1)
    finally:
        client.close()
