"""deploy's local server (``server.py``) in-process: it streams one chunk per generated token, its
streamed text is what ``generate`` produces, ``/v1/models`` lists the served name, and it refuses
another model's name and a missing key."""

from __future__ import annotations

import json

import pytest

SERVED = "student-v1"
KEY = "serve-test-key"


@pytest.fixture(scope="module")
def engine(tiny_qwen3):
    import torch

    from distilflow.components.deploy.server import Engine

    torch.set_num_threads(1)
    return Engine(tiny_qwen3, SERVED, device="cpu")


@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    from distilflow.components.deploy.server import make_app

    with TestClient(make_app(engine, api_key=KEY)) as c:
        yield c


def _events(text: str) -> list[dict | str]:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _reference(engine, messages: list[dict], max_tokens: int) -> tuple[str, int]:
    """What ``generate`` itself answers (greedy), decoded the way the server decodes."""
    import torch

    ids = engine.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        seq = engine.model.generate(input_ids=ids, max_new_tokens=max_tokens, do_sample=False)
    new = seq[0, ids.shape[-1] :]
    return engine.tokenizer.decode(new, skip_special_tokens=True), int(new.shape[-1])


def test_streams_one_chunk_per_token_with_the_text_generate_produces(engine, client):
    messages = [{"role": "user", "content": "Count: one two three"}]
    body = {"model": SERVED, "messages": messages, "max_tokens": 12, "temperature": 0}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    resp = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = _events(resp.text)
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [e["choices"][0]["delta"].get("content") for e in events[1:-1] if e.get("choices")]
    pieces = [p for p in pieces if p]
    usage = next(e["usage"] for e in events[1:-1] if e.get("usage"))
    text, tokens = _reference(engine, messages, 12)
    assert "".join(pieces) == text and usage["completion_tokens"] == tokens
    assert len(pieces) == tokens  # token by token, not word by word or all at once
    finish = [e["choices"][0]["finish_reason"] for e in events[1:-1] if e.get("choices")]
    assert finish[-1] == ("length" if tokens == 12 else "stop")
    whole = client.post(
        "/v1/chat/completions", json={**body, "stream": False}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert whole.json()["choices"][0]["message"]["content"] == text


def test_lists_the_served_name_and_refuses_other_models_and_missing_keys(client):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]] == [SERVED]
    assert client.get("/health").status_code == 200  # health needs no key (the readiness probe)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    other = client.post(
        "/v1/chat/completions",
        headers=auth,
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert other.status_code == 404 and SERVED in other.json()["error"]["message"]


@pytest.mark.unit
def test_the_token_streamer_never_splits_a_character():
    """Byte-level BPE splits "中" into several tokens: the streamer waits for the token completing it."""
    from distilflow.components.deploy.server import token_streamer

    class Bytes:
        """A tokenizer whose tokens are single UTF-8 bytes (as byte-level BPE falls back to)."""

        def decode(self, ids, **_):
            return bytes(ids).decode("utf-8", errors="replace")

    import torch

    streamer = token_streamer(Bytes())
    streamer.next_tokens_are_prompt = False
    for byte in "a中b".encode():
        streamer.put(torch.tensor([byte]))
    streamer.end()
    pieces = [p for p in streamer if p]
    assert pieces == ["a", "中", "b"]
