"""The ``transformers`` backend: the model runs in-process (CPU or one GPU) from a local folder or a URI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distilflow.errors import BackendError
from distilflow.teachers.config import TeacherConfig
from distilflow.teachers.protocol import (
    THINK_CLOSE,
    THINK_OPEN,
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

    def _encode(self, chats: list[list[dict]], judging: bool = False):
        """Left-padded prompts; ``judging``: the judgment chats (``judge_chat``), a prefilled reply
        continued, with the judge's template arguments."""
        tok = self.tokenizer
        if judging:
            kwargs = judge_template_kwargs(self.config)
            chats = [judge_chat(self.config, chat) for chat in chats]
        else:
            kwargs = dict(self.config.chat_template_kwargs or {})
        prefilled = judging and self.config.answer_prefix is not None
        texts = [
            tok.apply_chat_template(
                chat,
                tokenize=False,
                add_generation_prompt=not prefilled,
                continue_final_message=prefilled,
                **kwargs,
            )
            for chat in chats
        ]
        tok.padding_side = "left"
        return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)

    def generate(self, chats: list[list[dict]], n: int = 1, logprobs: int = 0) -> list[list[Completion]]:
        """Answer each chat ``n`` times; with ``logprobs`` = k, each answer carries the teacher's top-k
        log-probabilities at every token it generated (stop token included), from a forward pass."""
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
            rows, scored = [], []
            for i in range(0, gen.shape[0], per_prompt):
                prompt = int(prompt_lengths[i // per_prompt])
                prompt_ids = batch["input_ids"][i // per_prompt][-prompt:].tolist()
                row = []
                for seq in gen[i : i + per_prompt].tolist() * (n // per_prompt):
                    length = next((j for j, t in enumerate(seq) if t in stop_ids), len(seq))
                    finish = "stop" if length < len(seq) else "length"
                    text = tok.decode(seq[:length], skip_special_tokens=False)
                    for special in self._strip:
                        text = text.replace(special, "")
                    reasoning, content = split_reasoning(text)
                    spent = length + (finish == "stop")
                    row.append(Completion(reasoning, content, spent, finish, prompt_tokens=prompt))
                    scored.append((prompt_ids, seq[:spent]))
                rows.append(row)
            if logprobs:
                found = iter(self.score([p for p, _ in scored], [r for _, r in scored], logprobs))
                for completion in (c for row in rows for c in row):
                    completion.logprobs = next(found)
            results.extend(rows)
        return results

    def score(self, prompts: list[list[int]], responses: list[list[int]], k: int) -> list[TokenLogprobs]:
        """The teacher's top-k log-probabilities at every token of each response after its prompt
        (teacher forcing, ``batch_size`` sequences per forward pass, temperature 1)."""
        import torch

        from distilflow.teachers.logprobs import topk_of

        found: list[TokenLogprobs] = []
        pairs = list(zip(prompts, responses, strict=True))
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(pairs), self.config.batch_size):
            chunk = pairs[start : start + self.config.batch_size]
            width = max(len(p) + len(r) for p, r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (p, r) in enumerate(chunk):  # right padding: positions stay those of the sequence
                ids[row, : len(p) + len(r)] = torch.tensor(p + r)
                mask[row, : len(p) + len(r)] = 1
            with torch.no_grad():
                logits = self.model(
                    input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device)
                ).logits
            for row, (p, r) in enumerate(chunk):
                if not r:
                    found.append(
                        topk_of(torch.zeros((0, logits.shape[-1])), torch.zeros(0, dtype=torch.long), k)
                    )
                    continue
                # logits at position j predict token j + 1: the response's tokens are predicted from len(p) - 1 on
                log_probs = torch.log_softmax(logits[row, len(p) - 1 : len(p) + len(r) - 1].float(), dim=-1)
                found.append(topk_of(log_probs, torch.tensor(r, device=log_probs.device), k))
        return found

    def score_answers(
        self, chats: list[list[dict]], answers: list[tuple[str, str]], k: int
    ) -> list[TokenLogprobs]:
        """The teacher's top-k log-probabilities over given answers ((reasoning, content) per chat), each
        rendered by the teacher's chat template as it would have generated it."""
        from distilflow.teachers.logprobs import response_ids

        kwargs = self.config.chat_template_kwargs or {}
        pairs = [
            response_ids(self.tokenizer, chat, r, c, **kwargs)
            for chat, (r, c) in zip(chats, answers, strict=True)
        ]
        return self.score([p for p, _ in pairs], [r for _, r in pairs], k)

    def top_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float]]:
        """Next-token probabilities of the digits and of the likeliest tokens, from the whole softmax of
        each judgment (its reply prefilled with ``answer_prefix``, thinking off)."""
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
            batch = self._encode(chats[start : start + self.config.batch_size], judging=True)
            with torch.no_grad():
                logits = self.model(**batch).logits[:, -1, :].float()
            for row in torch.softmax(logits, dim=-1):
                top = {d: float(row[i]) for d, i in ids.items()}
                values, indices = torch.topk(row, TOP_LOGPROBS)
                for p, i in zip(values.tolist(), indices.tolist(), strict=True):
                    if i not in ids.values():  # another token: a spaced digit counts, others show the reason
                        token = tok.decode([i])
                        top[token] = top.get(token, 0.0) + p
                out.append(top)
        return out

    def fingerprint(self) -> dict[str, Any]:
        """The teacher tokenizer's vocabulary fingerprint (``logprobs.vocab_fingerprint``)."""
        from distilflow.teachers.logprobs import vocab_fingerprint

        return vocab_fingerprint(self.tokenizer)

    def digit_probs(self, chats: list[list[dict]], digits: str) -> list[dict[str, float] | Unreadable]:
        mass = self.config.min_digit_mass
        return [read_digit_probs(top, digits, mass) for top in self.top_probs(chats, digits)]

    def close(self) -> None:
        del self.model
