"""A rule-based pairwise judge behind a real OpenAI-compatible HTTP endpoint on 127.0.0.1, for tests.

It reads the two answers of a pairwise-comparison prompt ("Answer 1:" ... "Answer 2:" ...), checks each
one's last ``\\boxed{}`` against the sum asked for in "What is A + B?", and gives the probability that
answer 1 is better as ``0.5 + 0.4 * (right1 - right2) + position_bias``, clipped to [0.01, 0.99]. A
positive ``position_bias`` is a judge that favours whatever it reads first, the bias that judging each
pair in both orders must cancel. It answers ``logprobs`` requests with the top log-probabilities of the
tokens "1" and "2", and other requests with a short text ending in ``<choice>N</choice>``. It shares no
code with distilflow, so the judging code is not checked against itself.
"""

from __future__ import annotations

import math
import re
import threading
import time

from tests.fakes.loopback import LoopbackHandler, LoopbackServer

SUM_RE = re.compile(r"What is (\d+) \+ (\d+)\?")
BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")


def first_probability(prompt: str, position_bias: float) -> float:
    """P(answer 1 is better) for one comparison prompt."""
    found = SUM_RE.search(prompt)
    target = str(int(found.group(1)) + int(found.group(2))) if found else None
    first = prompt.split("Answer 1:", 1)[1].split("Answer 2:", 1)[0]
    second = prompt.split("Answer 2:", 1)[1]

    def right(answer: str) -> int:
        boxed = BOXED_RE.findall(answer)
        return int(bool(boxed) and boxed[-1].strip() == target)

    p = 0.5 + 0.4 * (right(first) - right(second)) + position_bias
    return min(max(p, 0.01), 0.99)


class PairwiseJudgeServer(LoopbackServer):
    """Serve the rule-based judge as model ``served_name``; ``base_url`` ends in ``/v1``."""

    def __init__(self, position_bias: float = 0.0, served_name: str = "pairwise-judge"):
        self.position_bias = position_bias
        self.served_name = served_name
        self.prompts: list[str] = []  # the comparison prompts received, in order, for asserts
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
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = self._read_json()
                if body.get("model") != server.served_name:
                    self._send(404, {"error": {"message": f"model {body.get('model')!r} is not served"}})
                    return
                # the last user turn (a judge's reply may be prefilled as a final assistant turn)
                prompt = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
                with server._lock:
                    server.prompts.append(prompt)
                self._send(200, server.reply(body, first_probability(prompt, server.position_bias)))

        return Handler

    def reply(self, body: dict, p_first: float) -> dict:
        if body.get("logprobs"):
            top = [
                {"token": "1", "logprob": math.log(p_first), "bytes": None},
                {"token": "2", "logprob": math.log(1 - p_first), "bytes": None},
            ]
            top.sort(key=lambda t: -t["logprob"])
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": top[0]["token"]},
                "finish_reason": "length",
                "logprobs": {"content": [dict(top[0], top_logprobs=top)]},
            }
        else:
            n = 1 if p_first >= 0.5 else 2
            text = f"Answer {n} states the right sum. <choice>{n}</choice>"
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return {
            "id": f"chatcmpl-{int(time.time() * 1e6)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }
