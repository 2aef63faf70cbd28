"""A loopback stand-in for vLLM's OpenAI-compatible server (v0.31) where white-box distillation uses it:
token logprobs. It runs a real local model on CPU with transformers (not distilflow's teacher code).

- ``POST /v1/chat/completions`` with ``logprobs``/``top_logprobs`` and vLLM's
  ``return_tokens_as_token_ids`` (tokens as ``token_id:N``): samples an answer and returns, for every
  generated token (the stop token included, as vLLM does), its logprob and the top ``top_logprobs``,
  from the raw distribution (vLLM's default ``logprobs_mode="raw_logprobs"``: temperature 1, before
  top-p);
- ``POST /v1/completions`` with a token-id ``prompt`` and vLLM's ``prompt_logprobs``: ``choices[0].
  prompt_logprobs`` holds ``None`` for the first token, then per position a map ``{id: {logprob, rank,
  decoded_token}}`` of the top ``prompt_logprobs`` plus the position's own token with its rank.

Bodies are validated as vLLM's ``ChatCompletionRequest``/``CompletionRequest`` validators do (integer
``top_logprobs``/``prompt_logprobs``, ``-1`` or >= 0, ``top_logprobs`` only with ``logprobs: true``, at
most ``max_logprobs`` (20), no ``prompt_logprobs`` with ``stream``); a refusal is a 400 with vLLM's
error shape. ``requests`` keeps every body for asserts.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from tests.fakes.loopback import LoopbackHandler, LoopbackServer

MAX_LOGPROBS = 20  # vLLM's ModelConfig.max_logprobs default


class VllmLogprobsServer(LoopbackServer):
    """Serve ``model_dir`` on 127.0.0.1 under ``served_name``; ``base_url`` ends in ``/v1``."""

    def __init__(self, model_dir: str, served_name: str = "teacher"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.served_name = served_name
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def start(self) -> str:
        return super().start() + "/v1"

    def handler(self) -> type[LoopbackHandler]:
        server = self

        class Handler(LoopbackHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200, {"object": "list", "data": [{"id": server.served_name, "object": "model"}]}
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = self._read_json()
                path = self.path.rstrip("/")
                server.requests.append({"path": path, "body": body})
                routes = {"/v1/chat/completions": server.chat, "/v1/completions": server.completion}
                if path not in routes:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                error = server.invalid(body, chat=path.endswith("chat/completions"))
                if error:
                    self._send(400, {"error": {"message": error, "type": "BadRequestError", "code": 400}})
                    return
                if body.get("model") != server.served_name:
                    self._send(
                        404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
                    )
                    return
                with server._lock:
                    self._send(200, routes[path](body))

        return Handler

    @staticmethod
    def invalid(body: Any, chat: bool) -> str | None:
        """vLLM's refusal message for a body its request validators reject, else None."""
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        names = ("prompt_logprobs", "top_logprobs") if chat else ("prompt_logprobs", "logprobs")
        for name in names:
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"`{name}` must be an integer."
            if value is not None and value < 0 and value != -1:
                return f"`{name}` must be a positive value or -1."
            if value is not None and value > MAX_LOGPROBS:
                return f"Requested {name} of {value}, which is greater than max allowed: {MAX_LOGPROBS}"
        if body.get("prompt_logprobs") is not None and body.get("stream"):
            return "`prompt_logprobs` are not available when `stream=True`."
        top = body.get("top_logprobs")
        if chat and top is not None and (top == -1 or top > 0) and not body.get("logprobs"):
            return "when using `top_logprobs`, `logprobs` must be set to true."
        if not chat and not isinstance(body.get("prompt"), (str, list)):
            return "prompt must be a string or a list of token ids"
        return None

    def _token(self, token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else self.tokenizer.decode([token_id])

    def _entries(self, log_probs: Any, k: int, as_ids: bool) -> list[dict[str, Any]]:
        import torch

        top = torch.topk(log_probs, k)
        return [
            {"token": self._token(int(i), as_ids), "logprob": float(v), "bytes": None}
            for v, i in zip(top.values, top.indices, strict=True)
        ]

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        import torch

        tok = self.tokenizer
        prompt = tok.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )["input_ids"]
        if body.get("seed") is not None:
            torch.manual_seed(int(body["seed"]))
        temperature = float(body.get("temperature", 1.0))
        sampling = {"do_sample": True, "temperature": temperature, "top_p": float(body.get("top_p", 1.0))}
        with torch.no_grad():
            out = self.model.generate(
                prompt,
                max_new_tokens=int(body.get("max_tokens") or 16),
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **(sampling if temperature > 0 else {"do_sample": False}),
            )
        ids = out[0, prompt.shape[1] :].tolist()
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id) + 1]
        finish = "stop" if ids and ids[-1] == tok.eos_token_id else "length"
        message = {"role": "assistant", "content": tok.decode(ids, skip_special_tokens=True)}
        logprobs = None
        if body.get("logprobs"):
            with torch.no_grad():
                full = torch.tensor([prompt[0].tolist() + ids])
                raw = torch.log_softmax(self.model(full).logits[0].float(), dim=-1)
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            k = int(body.get("top_logprobs") or 0)
            content = []
            for j, token in enumerate(ids):
                row = raw[prompt.shape[1] - 1 + j]
                entry = {"token": self._token(token, as_ids), "logprob": float(row[token]), "bytes": None}
                content.append(entry | {"top_logprobs": self._entries(row, k, as_ids) if k else []})
            logprobs = {"content": content}
        choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}
        return self._envelope("chat.completion", body, [choice], prompt.shape[1], len(ids))

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        import torch

        tok = self.tokenizer
        prompt = body["prompt"] if isinstance(body["prompt"], list) else tok(body["prompt"])["input_ids"]
        with torch.no_grad():
            raw = torch.log_softmax(self.model(torch.tensor([prompt])).logits[0].float(), dim=-1)
        positions: list[Any] = [None]
        k = body.get("prompt_logprobs")
        if k is not None:
            for j in range(1, len(prompt)):
                row, own = raw[j - 1], prompt[j]
                top = torch.topk(row, max(int(k), 1))
                found = {
                    str(int(i)): {"logprob": float(v), "rank": r + 1, "decoded_token": tok.decode([int(i)])}
                    for r, (v, i) in enumerate(zip(top.values, top.indices, strict=True))
                }
                rank = int((row > row[own]).sum()) + 1
                found.setdefault(
                    str(own), {"logprob": float(row[own]), "rank": rank, "decoded_token": tok.decode([own])}
                )
                positions.append(found)
        following = int(torch.argmax(raw[-1]))
        choice = {
            "index": 0,
            "text": tok.decode([following]),
            "logprobs": None,
            "finish_reason": "length",
            "prompt_logprobs": positions if k is not None else None,
        }
        return self._envelope("text_completion", body, [choice], len(prompt), 1)

    def _envelope(self, kind: str, body: dict, choices: list, prompt: int, completion: int) -> dict[str, Any]:
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}",
            "object": kind,
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
