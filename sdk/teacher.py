"""The teacher/judge contract and its backends.

A teacher answers chats (``generate``) and, for judging, gives the next-token probability of
each candidate score digit (``digit_probs``, OmniThought-style expected scores). Two backends:

* ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, DashScope,
  PAI-EAS, ``transformers serve``). The API key is read from the environment variable named by
  ``api_key_env``; the key itself never enters a config, a log or a manifest.
* ``transformers``: the model runs in-process (CPU or one GPU) from a local folder or a URI.
"""

from __future__ import annotations

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

    backend: Literal["openai", "transformers"] = Field(
        "openai", description="openai: an OpenAI-compatible endpoint; transformers: load the model in-process"
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
    max_retries: int = Field(3, ge=0, description="Retries on transient errors (openai backend)")
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call (transformers backend)")
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


def make_teacher(config: TeacherConfig) -> Teacher:
    """Build the backend a config names."""
    if config.backend == "openai":
        return OpenAITeacher(config)
    return TransformersTeacher(config)


class OpenAITeacher:
    """An OpenAI-compatible chat endpoint, called with ``concurrency`` requests in flight.

    Each of the ``n`` samples is its own request (with ``seed + sample`` when a seed is set):
    several servers (``transformers serve``, some gateways) silently ignore ``n`` and return
    one choice, and one seed shared by ``n`` separate requests would give ``n`` equal samples.
    """

    def __init__(self, config: TeacherConfig):
        import openai

        self.config = config
        self.name = config.display_name
        # The key is read here and handed to the client only; it is never stored on the config.
        key = os.environ.get(config.api_key_env) or "EMPTY"
        self.client = openai.OpenAI(
            base_url=config.base_url, api_key=key, timeout=config.timeout_s, max_retries=config.max_retries
        )

    def _call(self, chat: list[dict], **kwargs: Any) -> Any:
        import openai

        if self.config.chat_template_kwargs:
            kwargs["extra_body"] = {"chat_template_kwargs": self.config.chat_template_kwargs}
        try:
            return self.client.chat.completions.create(model=self.config.model, messages=chat, **kwargs)
        except openai.APIStatusError as exc:
            hint = f"; check ${self.config.api_key_env}" if exc.status_code in (401, 403) else ""
            raise BackendError(
                f"{self.config.base_url}: model {self.config.model!r} answered HTTP {exc.status_code}: "
                f"{exc.message}{hint}"
            ) from None
        except openai.APIConnectionError as exc:
            raise BackendError(
                f"{self.config.base_url}: cannot reach the endpoint ({exc}); check base_url and that the server is up"
            ) from None

    def _map(self, fn, items: list) -> list:
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            return list(pool.map(fn, items))

    def generate(self, chats: list[list[dict]], n: int = 1) -> list[list[Completion]]:
        c = self.config

        def one(job: tuple[int, int]) -> Completion:
            index, sample = job
            seed = {"seed": c.seed + sample} if c.seed is not None else {}
            resp = self._call(
                chats[index], max_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, **seed
            )
            if not resp.choices:
                raise BackendError(f"{c.base_url}: model {c.model!r} returned no choices")
            choice = resp.choices[0]
            reasoning, content = split_reasoning(choice.message.content or "", _reasoning_of(choice.message))
            tokens = resp.usage.completion_tokens if resp.usage else 0
            return Completion(reasoning, content, tokens, choice.finish_reason or "stop")

        flat = self._map(one, [(i, s) for i in range(len(chats)) for s in range(n)])
        return [flat[i * n : (i + 1) * n] for i in range(len(chats))]

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        def one(chat: list[dict]) -> dict[str, float]:
            resp = self._call(chat, max_tokens=1, temperature=0, logprobs=True, top_logprobs=20)
            lp = resp.choices[0].logprobs if resp.choices else None
            if not lp or not lp.content:
                raise BackendError(
                    f"{self.config.base_url}: model {self.config.model!r} returned no logprobs; "
                    "use judge mode 'generate' or a server that supports top_logprobs (vLLM, SGLang)"
                )
            top = {t.token: math.exp(t.logprob) for t in lp.content[0].top_logprobs}
            return normalise_digit_probs(top, digits)

        return self._map(one, chats)

    def close(self) -> None:
        self.client.close()


def _reasoning_of(message: Any) -> str | None:
    """The server's separate reasoning field: ``reasoning_content`` (vLLM, SGLang, DeepSeek,
    transformers serve) or ``reasoning`` (newer vLLM, OpenRouter), declared or extra."""
    extra = getattr(message, "model_extra", None) or {}
    for key in ("reasoning_content", "reasoning"):
        value = getattr(message, key, None) or extra.get(key)
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
            for i in range(0, gen.shape[0], per_prompt):
                row = []
                for seq in gen[i : i + per_prompt].tolist() * (n // per_prompt):
                    length = next((j for j, t in enumerate(seq) if t in stop_ids), len(seq))
                    finish = "stop" if length < len(seq) else "length"
                    text = tok.decode(seq[:length], skip_special_tokens=False)
                    for special in self._strip:
                        text = text.replace(special, "")
                    reasoning, content = split_reasoning(text)
                    row.append(Completion(reasoning, content, length + (finish == "stop"), finish))
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
