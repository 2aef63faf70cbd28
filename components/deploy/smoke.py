"""The smoke test every deploy target ends with: models, a chat, a streamed chat, thinking on/off.

It talks to any OpenAI-compatible endpoint with the ``openai`` client and fails with the server's
own error. The key is passed in memory; nothing here prints or returns it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from distilflow import uri as uris
from distilflow.errors import BackendError

TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json")


def chat_template(model: str) -> str | None:
    """The model's chat template text (``chat_template.jinja`` or ``tokenizer_config.json``), or None."""
    for name in TEMPLATE_FILES:
        path = uris.join(model, name)
        try:
            text = uris.read_text(path)
        except (FileNotFoundError, OSError):
            continue
        if name.endswith(".json"):
            template = json.loads(text).get("chat_template")
            if isinstance(template, list):  # several named templates
                template = " ".join(t.get("template", "") for t in template)
            return template or None
        return text
    return None


def supports_thinking(model: str) -> bool:
    """Whether the model's chat template switches thinking with ``enable_thinking`` (Qwen3-style)."""
    template = chat_template(model)
    return bool(template) and "enable_thinking" in template


def _call(what: str, base_url: str, fn: Any) -> Any:
    import openai

    try:
        return fn()
    except openai.APIStatusError as exc:
        body = exc.response.text[:2000] if exc.response is not None else ""
        raise BackendError(
            f"{base_url}: {what} got HTTP {exc.status_code}: {exc.message} {body}".strip()
        ) from None
    except openai.APIConnectionError as exc:
        raise BackendError(f"{base_url}: {what} could not reach the server ({exc})") from None


def _chat(client: Any, base_url: str, model: str, prompt: str, max_tokens: int, extra: dict | None) -> dict:
    started = time.monotonic()
    resp = _call(
        "chat completion",
        base_url,
        lambda: client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body=extra,
        ),
    )
    latency = time.monotonic() - started
    if not resp.choices:
        raise BackendError(f"{base_url}: the chat completion for {model!r} returned no choices")
    message = resp.choices[0].message
    tokens = resp.usage.completion_tokens if resp.usage else 0
    reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
    return {
        "response": message.content or "",
        "reasoning": reasoning or "",
        "finish_reason": resp.choices[0].finish_reason,
        "latency_s": round(latency, 4),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / latency, 3) if latency > 0 else 0.0,
    }


def _stream(client: Any, base_url: str, model: str, prompt: str, max_tokens: int) -> dict:
    def consume() -> dict:
        started = time.monotonic()
        first = None
        events, chunks, text, usage, finish = 0, 0, [], None, None
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                events += 1
                delta = choice.delta
                # A reasoning parser streams the thinking apart, as reasoning_content (SGLang, older
                # vLLM) or reasoning (vLLM 0.31); both are generated tokens.
                thought = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                piece = (delta.content or "") + (thought or "")
                if piece:
                    first = first if first is not None else time.monotonic() - started
                    chunks += 1
                    text.append(delta.content or "")
                finish = choice.finish_reason or finish
        latency = time.monotonic() - started
        tokens = usage.completion_tokens if usage else chunks
        return {
            "response": "".join(text),
            "finish_reason": finish,
            "events": events,
            "chunks": chunks,
            "time_to_first_token_s": round(first, 4) if first is not None else None,
            "latency_s": round(latency, 4),
            "completion_tokens": tokens,
            "tokens_from_usage": usage is not None,
            "tokens_per_s": round(tokens / latency, 3) if latency > 0 else 0.0,
        }

    result = _call("streamed chat completion", base_url, consume)
    # A weak model may stop at once (no text); a stream that never finishes is the server's fault.
    if result["events"] == 0 or result["finish_reason"] is None:
        raise BackendError(
            f"{base_url}: the streamed chat completion for {model!r} ended without a finish_reason "
            f"after {result['events']} chunks"
        )
    return result


def smoke_test(
    base_url: str,
    served_model: str,
    prompt: str,
    max_tokens: int,
    key: str | None,
    thinking: bool,
    timeout_s: float = 120,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """List models, one chat completion, one streamed; with ``thinking`` also one each with
    ``enable_thinking`` on and off. Returns latency, tokens and tokens/s of each."""
    import openai

    client = openai.OpenAI(
        base_url=base_url, api_key=key or "EMPTY", timeout=timeout_s, max_retries=0, default_headers=headers
    )
    try:
        listed = [m.id for m in _call("listing models", base_url, lambda: client.models.list().data)]
        # Servers that list no model (`transformers serve` lists only cached hub models) are not held to it.
        if listed and served_model not in listed:
            raise BackendError(
                f"{base_url}: serves {listed}, not {served_model!r}; set deploy.served_model_name to one of them"
            )
        chat = _chat(client, base_url, served_model, prompt, max_tokens, None)
        stream = _stream(client, base_url, served_model, prompt, max_tokens)
        modes = {}
        if thinking:
            for on in (True, False):
                extra = {"chat_template_kwargs": {"enable_thinking": on}}
                modes["on" if on else "off"] = _chat(
                    client, base_url, served_model, prompt, max_tokens, extra
                )
    finally:
        client.close()
    return {
        "listed_models": listed,
        "prompt": prompt,
        **chat,
        "stream": stream,
        "thinking": modes,
    }
