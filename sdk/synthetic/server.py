"""The simulated teacher and judge behind an OpenAI-compatible chat API on 127.0.0.1.

``SyntheticServer`` answers ``GET /v1/models`` and ``POST /v1/chat/completions`` like a vLLM server
serving one model: a request whose user message is one of curate's judge rubrics is answered by the
simulated judge (``judge``: one digit, with ``top_logprobs`` when asked; or a written judgment ending
in ``<score>N</score>``), any other by the simulated teacher (``teacher``). The real ``distill`` and
``curate`` stages reach it with ``backend: openai`` exactly as they reach a real endpoint.

Request bodies are checked as vLLM's ``ChatCompletionRequest`` checks them (a wrong model is 404;
missing or ill-typed ``messages``, out-of-range ``temperature``/``top_p``/``max_tokens``/``n``,
``top_logprobs`` without ``logprobs`` or above 20, and ``stream`` are 400 with an OpenAI-style error
body, as are ``continue_final_message`` with ``add_generation_prompt`` or without a final assistant
message); other fields (``seed``, ``chat_template_kwargs``, ...) are accepted, and a trailing assistant
message (a prefill, e.g. ``Score: ``) is allowed: the reply continues it. ``max_tokens`` cuts a reply (finish reason
``length``); tokens are counted as words, single digits and punctuation marks.

    python -m distilflow.synthetic.server --port 8000 [--bug-rate 0.75]

Standard library only: no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from distilflow.synthetic import judge, teacher

MODEL = "synthetic-teacher"
ROLES = {"system", "user", "assistant", "tool", "developer"}
TOKEN_RE = re.compile(r"\d|[^\W\d]+|[^\w\s]|\n")
MAX_TOP_LOGPROBS = 20


class RequestRejected(Exception):
    """A request the server refuses: HTTP status and message."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def _number(body: dict[str, Any], name: str, low: float, high: float, low_open: bool = False) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestRejected(400, f"{name} must be a number, got {value!r}", name)
    if value > high or value < low or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise RequestRejected(400, f"{name} must be in {bound}, got {value}", name)


def _integer(body: dict[str, Any], name: str, low: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RequestRejected(400, f"{name} must be an integer >= {low}, got {value!r}", name)


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def check_body(body: Any, model: str) -> None:
    """Refuse a body vLLM's OpenAI server would refuse (RequestRejected with the status it uses)."""
    if not isinstance(body, dict):
        raise RequestRejected(400, "the request body must be a JSON object")
    if body.get("model") != model:
        raise RequestRejected(404, f"The model `{body.get('model')}` does not exist.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestRejected(400, "messages must be a non-empty list of messages", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestRejected(400, f"messages[{i}] needs a role among {sorted(ROLES)}", "messages")
        content = m.get("content")
        parts_ok = isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        )
        if not (isinstance(content, str) or parts_ok or (content is None and m["role"] == "assistant")):
            raise RequestRejected(400, f"messages[{i}].content must be a string or text parts", "messages")
    if body.get("stream"):
        raise RequestRejected(400, "stream=true is not supported by the simulated server", "stream")
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0, low_open=True)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        _integer(body, name, 1)
    _integer(body, "seed", -(2**63))
    top = body.get("top_logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise RequestRejected(
                400, f"top_logprobs must be an integer in [0, 20], got {top!r}", "top_logprobs"
            )
        if not body.get("logprobs"):
            raise RequestRejected(
                400, "when using `top_logprobs`, `logprobs` must be set to true", "logprobs"
            )
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise RequestRejected(400, "chat_template_kwargs must be an object", "chat_template_kwargs")
    if body.get("continue_final_message"):  # a prefill the reply continues (vLLM's checks)
        if body.get("add_generation_prompt"):
            raise RequestRejected(
                400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            )
        if messages[-1].get("role") != "assistant":
            raise RequestRejected(
                400, "continue_final_message needs the last message to be an assistant prefill", "messages"
            )


def cut(text: str, max_tokens: int | None) -> tuple[str, int, str]:
    """(text cut to ``max_tokens`` tokens, tokens kept, finish reason)."""
    tokens = list(TOKEN_RE.finditer(text))
    if max_tokens is None or len(tokens) <= max_tokens:
        return text, len(tokens), "stop"
    return text[: tokens[max_tokens - 1].end()], max_tokens, "length"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 refuses connections when a client opens dozens at once
    # (curate's judge keeps judge.concurrency requests in flight); vLLM's uvicorn accepts 2048.
    request_queue_size = 1024


class SyntheticServer:
    """The simulated teacher and judge serving ``model`` on 127.0.0.1 (a free port unless ``port``).

    ``bug_rate`` is the share of the teacher's samples that carry the subtraction bug; ``noise`` how
    far the judge is from the truth. ``counts`` tallies requests by role (``teacher``, ``judge``) and
    the teacher's samples by outcome (``buggy``: the bug changed the answer). As a context manager it
    starts on entry and stops on exit; ``base_url`` ends in ``/v1``.
    """

    def __init__(
        self,
        model: str = MODEL,
        bug_rate: float = 0.75,
        noise: judge.Noise = judge.Noise(),
        port: int = 0,
    ):
        if not 0.0 <= bug_rate <= 1.0:
            raise ValueError(f"bug_rate={bug_rate} must be within 0-1")
        self.model, self.bug_rate, self.noise, self.port = model, bug_rate, noise, port
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ answering

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat completion for a checked ``body``."""
        messages = body["messages"]
        question = next((message_text(m) for m in reversed(messages) if m["role"] == "user"), "")
        prompt = judge.read_prompt(question)
        n = body.get("n") or 1
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if prompt is not None:
            self._count("judge")
            choices = [self._judge_choice(i, prompt, question, body) for i in range(n)]
        else:
            self._count("teacher")
            thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking") is not False
            seed = body.get("seed")
            choices = []
            for i in range(n):
                sample = teacher.answer(question, None if seed is None else seed + i, self.bug_rate, thinking)
                self._count("buggy" if sample.bug else "sound")
                choices.append(self._text_choice(i, sample.text, max_tokens, bool(body.get("logprobs"))))
        prompt_tokens = sum(len(TOKEN_RE.findall(message_text(m))) for m in messages)
        completion_tokens = sum(c.pop("_tokens") for c in choices)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _judge_choice(self, index: int, prompt: judge.JudgePrompt, question: str, body: dict) -> dict:
        if not body.get("logprobs"):
            text = judge.written_judgment(prompt, question, self.noise)
            return self._text_choice(index, text, body.get("max_tokens"), False)
        probs = judge.next_token_distribution(prompt, question, self.noise)
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])
        entries = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in ranked]
        first = dict(entries[0], top_logprobs=entries[: body.get("top_logprobs") or 0])
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        return {
            "index": index,
            "message": {"role": "assistant", "content": first["token"]},
            "logprobs": {"content": [first]},
            "finish_reason": "length" if max_tokens == 1 else "stop",
            "_tokens": 1,
        }

    @staticmethod
    def _text_choice(index: int, text: str, max_tokens: int | None, logprobs: bool) -> dict:
        text, tokens, finish = cut(text, max_tokens)
        lp = None
        if logprobs:  # a sampled reply: each token was the sampler's pick (log-probability 0)
            pieces = [m.group() for m in TOKEN_RE.finditer(text)]
            lp = {
                "content": [
                    {"token": p, "logprob": 0.0, "bytes": list(p.encode()), "top_logprobs": []}
                    for p in pieces
                ]
            }
        message = {"role": "assistant", "content": text}
        return {
            "index": index,
            "message": message,
            "logprobs": lp,
            "finish_reason": finish,
            "_tokens": tokens,
        }

    # ------------------------------------------------------------------ HTTP

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, param: str | None = None) -> None:
                kind = {404: "NotFoundError"}.get(status, "BadRequestError")
                self._send(
                    status, {"error": {"message": message, "type": kind, "param": param, "code": status}}
                )

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    model = {"id": server.model, "object": "model", "owned_by": "distilflow.synthetic"}
                    self._send(200, {"object": "list", "data": [model]})
                else:
                    self._error(404, f"no route GET {self.path}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._error(404, f"no route POST {self.path}")
                    return
                try:
                    body = json.loads(raw)
                    check_body(body, server.model)
                except json.JSONDecodeError as exc:
                    self._error(400, f"the request body is not JSON: {exc}")
                    return
                except RequestRejected as exc:
                    self._error(exc.status, str(exc), exc.param)
                    return
                self._send(200, server.complete(body))

        return Handler

    def start(self) -> str:
        """Serve in a daemon thread; return ``base_url``."""
        httpd = _HTTPServer(("127.0.0.1", self.port), self.handler())
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="synthetic-server", daemon=True).start()
        return self.base_url

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("SyntheticServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> SyntheticServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--bug-rate", type=float, default=0.75)
    args = parser.parse_args(argv)
    server = SyntheticServer(args.model, args.bug_rate, port=args.port)
    print(f"serving {args.model} at {server.start()} (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
