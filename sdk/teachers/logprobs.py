"""Teacher token log-probabilities: the unit of the white-box (logits) artifact.

For each token of a response, a teacher gives the log-probability of that token and of its ``k``
likeliest next tokens at that position (``TokenLogprobs``), positions aligned to the teacher's
tokenizer. The values are the teacher's raw distribution (temperature 1, before top-p/top-k), as
vLLM returns them by default (``logprobs_mode="raw_logprobs"``) and as a forward pass gives them.

Where they come from:

- an in-process model (``topk_of``: the top-k of a log-softmax over the vocabulary);
- vLLM, offline (``SamplingParams(logprobs=k)`` for generated tokens, ``prompt_logprobs=k`` for
  given ones) or served (``/v1/completions`` with ``prompt_logprobs``): ``from_vllm_positions``;
- an OpenAI-compatible chat endpoint returning ``logprobs.content[].top_logprobs`` with token ids
  (vLLM's ``return_tokens_as_token_ids``): ``from_chat_logprobs``.

``to_json``/``from_json`` make them a compact part of a cached answer (base64 of little-endian
arrays). ``vocab_fingerprint`` identifies a tokenizer's vocabulary: white-box distillation needs the
student to share it. numpy only; nothing here imports torch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from distilflow.errors import BackendError

TOKEN_ID_RE = re.compile(r"^token_id:(\d+)$")
"""How vLLM writes a token with ``return_tokens_as_token_ids``."""


@dataclass
class TokenLogprobs:
    """One response's tokens with the teacher's log-probabilities at every position.

    Attributes:
        ids: ``(T,)`` int32, the response's tokens in the teacher's vocabulary.
        logprobs: ``(T,)`` float32, ``log p(ids[t] | prompt, ids[:t])``.
        top_ids: ``(T, k)`` int32, the ``k`` likeliest tokens at position ``t``, likeliest first.
        top_logprobs: ``(T, k)`` float32, their log-probabilities; ``-inf`` pads a position that
            has fewer than ``k`` (a vocabulary smaller than ``k``).
    """

    ids: np.ndarray
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int32).reshape(-1)
        self.logprobs = np.asarray(self.logprobs, dtype=np.float32).reshape(-1)
        t = len(self.ids)
        self.top_ids = _rows(self.top_ids, t, np.int32)
        self.top_logprobs = _rows(self.top_logprobs, t, np.float32)
        if len(self.logprobs) != t or self.top_ids.shape != self.top_logprobs.shape:
            raise BackendError(
                f"teacher logprobs do not line up: {t} tokens, {len(self.logprobs)} logprobs, top ids "
                f"{self.top_ids.shape}, top logprobs {self.top_logprobs.shape}"
            )

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (base64 arrays), as stored in the teacher cache."""
        return {
            "k": self.k,
            "ids": _b64(self.ids, "<i4"),
            "logprobs": _b64(self.logprobs, "<f4"),
            "top_ids": _b64(self.top_ids, "<i4"),
            "top_logprobs": _b64(self.top_logprobs, "<f4"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenLogprobs:
        k = int(data["k"])
        ids = _unb64(data["ids"], "<i4")
        return cls(
            ids=ids,
            logprobs=_unb64(data["logprobs"], "<f4"),
            top_ids=_unb64(data["top_ids"], "<i4").reshape(len(ids), k),
            top_logprobs=_unb64(data["top_logprobs"], "<f4").reshape(len(ids), k),
        )


def _rows(values: Any, t: int, dtype: Any) -> np.ndarray:
    """``values`` as a ``(t, k)`` array (an empty response keeps its ``k`` when it has one)."""
    array = np.asarray(values, dtype=dtype)
    if t == 0:
        return array.reshape(0, array.shape[-1] if array.ndim == 2 else 0)
    return array.reshape(t, -1)


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _unb64(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


def _pad(rows: list[list[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, k) ids and logprobs from per-position (id, logprob) lists, likeliest first, -inf padded."""
    ids = np.zeros((len(rows), k), dtype=np.int32)
    lps = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for t, row in enumerate(rows):
        row = sorted(row, key=lambda item: -item[1])[:k]
        if row:
            ids[t, : len(row)] = [i for i, _ in row]
            lps[t, : len(row)] = [lp for _, lp in row]
    return ids, lps


def token_id(token: str, where: str) -> int:
    """The id in a ``token_id:N`` token (vLLM's ``return_tokens_as_token_ids``)."""
    match = TOKEN_ID_RE.match(token or "")
    if match is None:
        raise BackendError(
            f"{where}: the endpoint returned the token {token!r} as text, not as an id; white-box logits "
            "need token ids: serve the teacher with vLLM (distilflow sends return_tokens_as_token_ids: true) "
            "or use backend 'vllm' / 'transformers'"
        )
    return int(match.group(1))


def from_chat_logprobs(content: list[Mapping[str, Any]], k: int, where: str) -> TokenLogprobs:
    """The ``choices[0].logprobs.content`` of a chat completion (OpenAI format, tokens as ids)."""
    ids, lps, rows = [], [], []
    for entry in content:
        ids.append(token_id(entry["token"], where))
        lps.append(float(entry["logprob"]))
        rows.append(
            [(token_id(t["token"], where), float(t["logprob"])) for t in entry.get("top_logprobs") or []]
        )
    if any(len(r) < min(k, 1) for r in rows):
        raise BackendError(f"{where}: the endpoint returned no top_logprobs; it must honour top_logprobs={k}")
    top_ids, top_lps = _pad(rows, k)
    return TokenLogprobs(ids, lps, top_ids, top_lps)


def _logprob_of(value: Any) -> tuple[float, int | None]:
    """(logprob, rank) of a vLLM ``Logprob`` object or of its JSON form."""
    if isinstance(value, Mapping):
        return float(value["logprob"]), value.get("rank")
    return float(value.logprob), getattr(value, "rank", None)


def from_vllm_positions(ids: Iterable[int], positions: Iterable[Any], k: int, where: str) -> TokenLogprobs:
    """Per-position ``{token_id: Logprob}`` maps from vLLM (a generated sequence's ``logprobs``, or the
    response part of ``prompt_logprobs``; ``FlatLogprobs`` or lists of dicts; JSON keys as strings).

    vLLM returns the top ``k`` of each position plus the position's own token when it is not among
    them; the top ``k`` are taken by rank (else by value) and the token's own logprob is kept apart.
    """
    ids = [int(i) for i in ids]
    positions = list(positions)
    if len(positions) != len(ids):
        raise BackendError(f"{where}: {len(ids)} tokens but logprobs for {len(positions)} positions")
    own, rows = [], []
    for t, (token, position) in enumerate(zip(ids, positions, strict=True)):
        if not position:
            raise BackendError(f"{where}: no logprobs at position {t}; ask with logprobs/prompt_logprobs={k}")
        entries = {int(key): _logprob_of(value) for key, value in position.items()}
        if token not in entries:
            raise BackendError(f"{where}: position {t} lacks the logprob of its own token {token}")
        own.append(entries[token][0])
        ranked = sorted(entries.items(), key=lambda item: (item[1][1] or 10**9, -item[1][0]))
        rows.append([(key, lp) for key, (lp, _) in ranked[:k]])
    top_ids, top_lps = _pad(rows, k)
    return TokenLogprobs(ids, own, top_ids, top_lps)


def topk_of(log_probs: Any, ids: Any, k: int) -> TokenLogprobs:
    """``TokenLogprobs`` from a torch ``(T, V)`` log-softmax and the ``(T,)`` tokens it scored."""
    import torch

    k = min(k, log_probs.shape[-1])
    top = torch.topk(log_probs, k, dim=-1)
    own = log_probs.gather(-1, ids.view(-1, 1)).view(-1)
    return TokenLogprobs(
        ids.cpu().numpy(),
        own.float().cpu().numpy(),
        top.indices.cpu().numpy(),
        top.values.float().cpu().numpy(),
    )


def vocab_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """``{"fingerprint": "sha256:...", "vocab_size": N}`` of a tokenizer's vocabulary (every token and
    its id, added tokens included). Two tokenizers with the same fingerprint map text to the same ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"fingerprint": f"sha256:{digest[:32]}", "vocab_size": len(vocab)}


def response_ids(
    tokenizer: Any, chat: list[dict], reasoning: str, content: str, **template_kwargs: Any
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a given answer, rendered by the tokenizer's chat template.

    The response is what the template puts after the generation prompt for this assistant turn, up
    to and including its end-of-turn token (``<|im_end|>``-like; a trailing newline after it is not
    part of what the model generates). Reasoning goes where the template places ``reasoning_content``,
    else into the content as ``<think>...</think>``.
    """
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        if "reasoning_content" in (tokenizer.chat_template or ""):
            message["reasoning_content"] = reasoning
        else:
            message["content"] = f"<think>\n{reasoning.strip()}\n</think>\n\n{content.lstrip()}"
    prompt = _ids(tokenizer.apply_chat_template(chat, add_generation_prompt=True, **template_kwargs))
    full = _ids(tokenizer.apply_chat_template([*chat, message], **template_kwargs))
    if full[: len(prompt)] != prompt:
        raise BackendError(
            "the chat template renders the prompt differently with and without the answer; the answer's "
            "tokens cannot be told apart from the prompt's (a template that rewrites earlier turns)"
        )
    response = full[len(prompt) :]
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None}
    last = max((i for i, t in enumerate(response) if t in stops), default=len(response) - 1)
    return prompt, response[: last + 1]


def _ids(rendered: Any) -> list[int]:
    """Token ids from ``apply_chat_template(tokenize=True)`` (a list, or a dict with ``input_ids``)."""
    if isinstance(rendered, Mapping) or hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    return [int(i) for i in rendered]
