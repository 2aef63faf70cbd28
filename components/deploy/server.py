"""deploy's local server without vLLM: an OpenAI-compatible chat API over transformers' ``generate``
that streams token by token.

``transformers serve`` (5.17) sends a streamed chat's whole answer in one chunk and lists no model, so
a client's time to first token is the full latency. This server generates in a thread with a
streamer (``token_streamer``) and sends each token's text as it is decoded (Server-Sent Events, the
OpenAI chunk format, ``stream_options.include_usage`` honoured); ``/v1/models`` lists the served name;
a request naming another model is a 404; with ``DISTILFLOW_SERVE_API_KEY`` set, requests must carry
that key as a bearer token. One generation runs at a time (a CPU or one GPU: a smoke test and a few
users, not a production server; vLLM is that).

    python -m distilflow.components.deploy.server --model DIR --served-model-name NAME --port 8000
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations (Request).
import argparse
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

API_KEY_ENV = "DISTILFLOW_SERVE_API_KEY"
"""The variable the server reads its API key from (set by deploy from ``api_key_env``; never argv)."""


def token_streamer(tokenizer: Any) -> Any:
    """A ``TextIteratorStreamer`` that hands out the text of every token as it is generated.

    transformers' streamers hold text back until a space or a newline (whole words); a server that
    streams tokens sends each one. A token that ends inside a multi-byte character (byte-level BPE)
    waits for the token that completes it, so no chunk carries half a character.
    """
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return
            self.on_finalized_text(text[self.print_len :])
            self.print_len = len(text)

    return TokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class Engine:
    """The model, its tokenizer and a lock: one generation at a time."""

    def __init__(self, model_dir: str, served_name: str, device: str = "auto"):
        from distilflow.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(model_dir, device=device)
        self.served_name = served_name
        self.lock = threading.Lock()

    def prompt_ids(self, body: dict[str, Any]) -> Any:
        kwargs = dict(body.get("chat_template_kwargs") or {})
        ids = self.tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True, **kwargs
        )["input_ids"]
        return ids.to(self.model.device)

    def generate_kwargs(self, body: dict[str, Any], ids: Any) -> dict[str, Any]:
        temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 256
        kwargs: dict[str, Any] = {"input_ids": ids, "max_new_tokens": int(max_tokens)}
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=float(body.get("top_p") or 1.0))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def stream(self, body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(text piece, usage so far)`` as the model decodes them; the last item carries the finish."""
        with self.lock:
            ids = self.prompt_ids(body)
            streamer = token_streamer(self.tokenizer)
            kwargs = self.generate_kwargs(body, ids)
            out: dict[str, Any] = {}

            def work() -> None:
                import torch

                with torch.no_grad():
                    out["sequences"] = self.model.generate(**kwargs, streamer=streamer)

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            for piece in streamer:
                if piece:
                    yield piece, {}
            thread.join()
        generated = int(out["sequences"].shape[-1] - ids.shape[-1]) if "sequences" in out else 0
        finish = "length" if generated >= kwargs["max_new_tokens"] else "stop"
        usage = {"prompt_tokens": int(ids.shape[-1]), "completion_tokens": generated}
        yield "", {"usage": usage | {"total_tokens": usage["prompt_tokens"] + generated}, "finish": finish}


def _chunk(cid: str, created: int, model: str, delta: dict, finish: str | None, usage: dict | None) -> str:
    choices = [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    body["choices"] = choices
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def sse(engine: Engine, body: dict[str, Any]) -> Iterator[str]:
    """The OpenAI streaming format: a role chunk, one chunk per decoded piece, the finish, usage, [DONE]."""
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), engine.served_name
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""}, None, None)
    for piece, end in engine.stream(body):
        if piece:
            yield _chunk(cid, created, model, {"content": piece}, None, None)
        else:
            yield _chunk(cid, created, model, {}, end["finish"], None)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _chunk(cid, created, model, {}, None, end["usage"])
    yield "data: [DONE]\n\n"


def complete(engine: Engine, body: dict[str, Any]) -> dict[str, Any]:
    """A whole (non-streamed) chat completion."""
    pieces, end = [], {}
    for piece, last in engine.stream(body):
        pieces.append(piece)
        end = last or end
    message = {"role": "assistant", "content": "".join(pieces)}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": engine.served_name,
        "choices": [{"index": 0, "message": message, "finish_reason": end.get("finish", "stop")}],
        "usage": end.get("usage"),
    }


def _error(status: int, message: str, kind: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def make_app(engine: Engine, api_key: str | None = None) -> Any:
    """The FastAPI app: ``/health``, ``/v1/models``, ``/v1/chat/completions``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    app = FastAPI(title="distilflow local server")

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if api_key and request.url.path.startswith("/v1") and not secrets.compare_digest(given, api_key):
            return _error(401, "invalid API key", "authentication_error")
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": engine.served_name, "object": "model", "created": 0, "owned_by": "distilflow"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        if body.get("model") not in (None, engine.served_name):
            return _error(
                404,
                f"model {body.get('model')!r} is not served here; use {engine.served_name!r}",
                "not_found",
            )
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "messages must be a non-empty list", "invalid_request_error")
        if body.get("stream"):
            return StreamingResponse(sse(engine, body), media_type="text/event-stream")
        return complete(engine, body)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Model folder (config, weights, tokenizer)")
    parser.add_argument("--served-model-name", required=True, help="The id clients name in requests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    engine = Engine(args.model, args.served_model_name, args.device)
    app = make_app(engine, os.environ.get(API_KEY_ENV) or None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
