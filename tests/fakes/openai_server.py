"""A small but real OpenAI-compatible HTTP server for tests: it runs a local model on CPU.

It answers ``GET /v1/models`` and ``POST /v1/chat/completions`` (``n``, ``max_tokens``,
``temperature``, ``top_p``, ``seed``, ``logprobs``/``top_logprobs``, ``chat_template_kwargs``, and
vLLM's ``continue_final_message``/``add_generation_prompt``: a prefilled assistant turn continued,
both true refused as vLLM refuses them) with the model's own output, checks a bearer key when given one, and splits ``<think>`` into
``reasoning_content`` as vLLM's reasoning parsers do. It uses transformers directly, not
distilflow's teacher code, so tests of that code are not checked against themselves.
``transformers serve`` ignores ``n`` and ``logprobs``, which the judge needs.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from tests.fakes.loopback import LoopbackHandler, LoopbackServer


class TinyOpenAIServer(LoopbackServer):
    """Serve ``model_dir`` on 127.0.0.1; ``base_url`` ends in ``/v1``."""

    def __init__(self, model_dir: str, api_key: str | None = None, served_name: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = model_dir
        self.served_name = served_name or model_dir
        self.api_key = api_key
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.requests: list[dict[str, Any]] = []  # what clients sent (headers and bodies), for asserts
        self._lock = threading.Lock()  # one generation at a time: torch on 2 shared cores

    def start(self) -> str:
        return super().start() + "/v1"

    def handler(self) -> type[LoopbackHandler]:
        server = self

        class Handler(LoopbackHandler):
            def _authorised(self) -> bool:
                header = self.headers.get("Authorization", "")
                # Handlers run concurrently: keep this request's own entry, not requests[-1].
                self.entry = {"path": self.path, "authorization": header}
                server.requests.append(self.entry)
                if server.api_key and header != f"Bearer {server.api_key}":
                    self._send(
                        401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}}
                    )
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200, {"object": "list", "data": [{"id": server.served_name, "object": "model"}]}
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                if not self._authorised():
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = self._read_json()
                self.entry["body"] = body
                if body.get("model") != server.served_name:
                    self._send(404, {"error": {"message": f"model {body.get('model')!r} is not served"}})
                    return
                if body.get("continue_final_message") and body.get("add_generation_prompt", True):
                    message = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
                    self._send(400, {"error": {"message": message, "type": "BadRequestError"}})
                    return
                with server._lock:
                    self._send(200, server.complete(body))

        return Handler

    def complete(self, body: dict) -> dict:
        import torch

        tok = self.tokenizer
        text = tok.apply_chat_template(
            body["messages"],
            tokenize=False,
            add_generation_prompt=bool(body.get("add_generation_prompt", True)),
            continue_final_message=bool(body.get("continue_final_message", False)),
            **(body.get("chat_template_kwargs") or {}),
        )
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        prompt_len = ids["input_ids"].shape[1]
        n, max_tokens = int(body.get("n") or 1), int(body.get("max_tokens") or 16)
        if body.get("seed") is not None:
            torch.manual_seed(int(body["seed"]))
        if body.get("logprobs"):
            return self._envelope(
                body, self._logprobs(ids, int(body.get("top_logprobs") or 0)), prompt_len, 1
            )
        temperature = float(body.get("temperature", 1.0))
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": float(body.get("top_p", 1.0))}
            if temperature > 0
            else {"do_sample": False}
        )
        with torch.no_grad():
            out = self.model.generate(
                **ids,
                max_new_tokens=max_tokens,
                num_return_sequences=n,
                pad_token_id=tok.pad_token_id,
                **sampling,
            )
        choices, spent = [], 0
        for i, seq in enumerate(out[:, prompt_len:].tolist()):
            length = next(
                (j for j, t in enumerate(seq) if t in (tok.eos_token_id, tok.pad_token_id)), len(seq)
            )
            spent += length
            reply = tok.decode(seq[:length], skip_special_tokens=True)
            message: dict[str, Any] = {"role": "assistant", "content": reply}
            if "</think>" in reply:
                reasoning, reply = reply.split("</think>", 1)
                message = {
                    "role": "assistant",
                    "content": reply.strip(),
                    "reasoning_content": reasoning.replace("<think>", "").strip(),
                }
            finish = "stop" if length < len(seq) else "length"
            choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": None})
        return self._envelope(body, choices, prompt_len, spent)

    def _logprobs(self, ids: Any, k: int) -> list[dict]:
        import torch

        with torch.no_grad():
            logp = torch.log_softmax(self.model(**ids).logits[0, -1].float(), dim=-1)
        top = torch.topk(logp, max(k, 1))
        entries = [
            {"token": self.tokenizer.decode([int(t)]), "logprob": float(v), "bytes": None}
            for v, t in zip(top.values, top.indices, strict=True)
        ]
        first = dict(entries[0], top_logprobs=entries[:k])
        message = {"role": "assistant", "content": first["token"]}
        return [{"index": 0, "message": message, "finish_reason": "length", "logprobs": {"content": [first]}}]

    def _envelope(self, body: dict, choices: list[dict], prompt_len: int, completion: int) -> dict:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_len,
                "completion_tokens": completion,
                "total_tokens": prompt_len + completion,
            },
        }
