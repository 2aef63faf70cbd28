"""A training stage's input: finding its JSONL (an upstream output or a file), reading its rows, rejecting
rows with chat-template control tokens, and rendering chats as the student's template does (token counts
measured as TRL tokenizes, so no kept row is truncated)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from distilflow import records
from distilflow import uri as uris
from distilflow.errors import ConfigError
from distilflow.outputs import require_complete

R = TypeVar("R")


def resolve_data(data_uri: str, default_name: str, what: str) -> tuple[str, dict[str, Any] | None]:
    """The JSONL file a stage reads, and the upstream manifest when it came from a stage output.

    Args:
        data_uri: An upstream stage output folder (its completion marker is required) or a ``.jsonl``
            or ``.parquet`` file used as is.
        default_name: File to read inside a stage output folder, e.g. ``sft.jsonl``.
        what: How error messages name this input, e.g. ``"sft data"``.

    Returns:
        ``(file_uri, manifest)``; ``manifest`` is None for a direct JSONL file.

    Raises:
        IncompleteOutputError: The folder has no completion marker.
        ConfigError: The folder is complete but holds no ``default_name``.
    """
    from distilflow.sources import is_record_file

    if is_record_file(data_uri):  # a .jsonl or .parquet file of records
        return data_uri, None
    manifest = require_complete(data_uri, what)
    file_uri = uris.join(data_uri, default_name)
    if not uris.exists(file_uri):
        raise ConfigError(
            f"{what}: {data_uri} is a finished stage output but has no {default_name}; point data_uri at the "
            f"output of the stage that writes {default_name} (or at a .jsonl file)"
        )
    return file_uri, manifest


def read_rows(data_uri: str, kind: str, model: type[R], what: str, allow_empty: bool = False) -> list[R]:
    """All ``kind`` rows (e.g. ``sft``) of an upstream stage output (the shards its manifest lists, or
    its ``<kind>.jsonl``) or of a ``.jsonl`` file; an unfinished output, or no rows at all unless
    ``allow_empty``, is an error."""
    try:
        rows = list(records.iter_output_rows(data_uri, kind, model))
    except ConfigError as exc:  # name the setting to change
        raise ConfigError(f"{what}: data_uri {exc}") from None
    if not rows and not allow_empty:
        raise records.RecordError(f"{what}: {data_uri} holds no {kind} rows; nothing to train on")
    return rows


def without_template_tokens(rows: list[R], stage: str) -> tuple[list[R], int]:
    """``rows`` (SftExample or PreferencePair) less those whose messages hold chat-template control
    tokens (``<|im_end|>``, ``</think>``, ...), and how many were rejected. As training text such a
    token would become the special token and change the example's structure (hostile or broken data)."""
    kept = [r for r in rows if not records.template_tokens(r.model_dump_json(include=_MESSAGE_FIELDS))]
    rejected = len(rows) - len(kept)
    if rejected:
        print(
            f"[{stage}] {rejected} rows rejected: their messages hold chat-template control tokens",
            flush=True,
        )
    return kept, rejected


_MESSAGE_FIELDS = {"messages", "prompt", "chosen", "rejected"}


def renders_reasoning(chat_template: str | None) -> bool:
    """Whether a chat template places ``reasoning_content`` itself (Qwen3, QwQ) or ignores it (Qwen2.5)."""
    return "reasoning_content" in (chat_template or "")


def message_dicts(
    messages: Sequence[Any], fold_reasoning: bool = False, drop_reasoning: bool = False
) -> list[dict[str, Any]]:
    """Chat messages as plain dicts for ``datasets``/chat templates; ``reasoning_content`` only where set.

    Args:
        messages: ``Message`` records.
        fold_reasoning: Put the reasoning into the content as ``<think>\nR\n</think>\n\nC`` (how
            DeepSeek-R1 distilled Qwen2.5 students write it) for templates that ignore
            ``reasoning_content`` and would otherwise drop it silently.
        drop_reasoning: Leave the reasoning out (an example trained with thinking off).
    """
    out = []
    for m in messages:
        d = {"role": m.role, "content": m.content}
        if m.reasoning_content is not None and not drop_reasoning:
            if fold_reasoning:
                d["content"] = f"<think>\n{m.reasoning_content.strip()}\n</think>\n\n{m.content.lstrip()}"
            else:
                d["reasoning_content"] = m.reasoning_content
        out.append(d)
    return out


def chat_length(tokenizer: Any, messages: list[dict[str, Any]], **template_kwargs: Any) -> int:
    """Number of tokens ``messages`` render to with the tokenizer's chat template (as TRL tokenizes them)."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **template_kwargs)[
        "input_ids"
    ]
    return len(ids)


def preference_rows(
    pairs: Sequence[Any], tokenizer: Any, max_length: int
) -> tuple[list[tuple[Any, dict[str, Any]]], int]:
    """Conversational prompt/chosen/rejected rows for TRL and how many pairs were too long.

    A pair is dropped when prompt+chosen or prompt+rejected renders to more than ``max_length``
    tokens: TRL would truncate (DPO) or silently filter (reward) it. Reasoning goes into the content
    (``<think>`` block) when the tokenizer's chat template ignores ``reasoning_content``.

    Returns:
        ``([(pair, row), ...], dropped)``, keeping each source ``PreferencePair`` beside its row.
    """
    kept = []
    dropped = 0
    fold = not renders_reasoning(tokenizer.chat_template)
    for pair in pairs:
        prompt, chosen, rejected = (message_dicts(m, fold) for m in (pair.prompt, pair.chosen, pair.rejected))
        if (
            max(chat_length(tokenizer, prompt + chosen), chat_length(tokenizer, prompt + rejected))
            > max_length
        ):
            dropped += 1
            continue
        kept.append((pair, {"prompt": prompt, "chosen": chosen, "rejected": rejected}))
    return kept, dropped
