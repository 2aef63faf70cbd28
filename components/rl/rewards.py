"""The named reward terms of the `rl` stage, each a TRL GRPO reward function.

TRL calls every reward function with ``prompts``, ``completions``, ``completion_ids`` and the
dataset's extra columns (here ``answer``, ``domain`` and ``cd``) as lists aligned with the
completions, and logs each function's mean as ``rewards/<name>/mean``; the trainer adds them up
with ``GRPOConfig.reward_weights`` before the group-relative advantages are formed. The names
below are the names in ``RlConfig.rewards``, in the logs and in the report:

``correctness``
    1.0 when the completion's final answer matches the problem's reference, else 0.0
    (``distilflow.answers.is_correct``: math-verify for math, the letter for multiple choice).
``reward_model``
    The score of the reward model distilled by the `reward` stage for prompt + completion,
    standardised with the score mean and spread that stage measured and squashed into (0, 1)
    with a sigmoid, so that its scale is comparable with the 0/1 terms.
``format``
    1.0 for a thinking block followed by an answer that states a final answer (``\\boxed{}``);
    0.5 for a thinking block followed by an answer without one; 0.0 otherwise (no block, an
    unclosed block, several blocks, nothing after the block). A completion may start inside the
    block when the chat template opened it in the prompt (DeepSeek-R1, QwQ): a lone ``</think>``.
``length``
    An RV/CD-aware overlong penalty. OmniThought (Cai et al. 2025, arXiv:2505.10937) finds that the
    reasoning verbosity (RV) a model should learn grows with the problem's cognitive difficulty (CD);
    DAPO (Yu et al. 2025, arXiv:2503.14476) punishes completions softly as they run into the last
    ``L_cache`` tokens before the length limit. This term applies DAPO's soft punishment to a budget
    set by the problem's difficulty instead of by the context limit::

        B(cd)     = budget_min + (budget_max - budget_min) * cd / 9        (tokens)
        length(n) = 0                          if n <= B
                  = -(n - B) / (slack * B)     if B < n < (1 + slack) * B
                  = -1                         if n >= (1 + slack) * B

    with ``n`` the completion's token count and ``cd`` the problem's CD from curate's judge (or a
    default CD). Easy problems get a short budget, hard ones a long one; within budget it is 0, so
    it never rewards brevity for its own sake, only spending beyond what the difficulty warrants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from distilflow.answers import THINK_END, is_correct, last_boxed

THINK_START = "<think>"


def completion_text(completion: Any) -> str:
    """The text of one completion: a plain string, or the messages of a conversational completion.

    A message's separate reasoning (``reasoning_content``/``reasoning``/``thinking``, set when TRL
    parses a response with the tokenizer's response schema) is put back as a ``<think>`` block, so
    every term sees the completion as the model wrote it.
    """
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        reasoning = next(
            (message.get(k) for k in ("reasoning_content", "reasoning", "thinking") if message.get(k)), None
        )
        if reasoning:
            parts.append(f"{THINK_START}{reasoning}{THINK_END}")
        parts.append(str(message.get("content") or ""))
    return "".join(parts)


def correctness(
    completions: list[Any],
    answer: list[str],
    domain: list[str | None] | None = None,
    log_metric: Any = None,
    **_: Any,
) -> list[float]:
    """1.0 for a completion whose final answer matches the reference ``answer``, else 0.0.

    With TRL's ``log_metric`` callback the batch's mean is also logged as ``accuracy`` (whatever the
    term's weight, so the accuracy curve exists even when correctness is not rewarded).
    """
    domains = domain if domain is not None else [None] * len(completions)
    scores = [
        float(is_correct(completion_text(c), ref, dom))
        for c, ref, dom in zip(completions, answer, domains, strict=True)
    ]
    if log_metric is not None and scores:
        log_metric("accuracy", sum(scores) / len(scores))
    return scores


def format_score(text: str) -> float:
    """The ``format`` term of one completion text (see the module docstring)."""
    opens = text.count(THINK_START)
    closes = text.count(THINK_END)
    if closes != 1 or opens > 1:
        return 0.0
    head, answer = text.split(THINK_END, 1)
    if opens == 1:
        before, reasoning = head.split(THINK_START, 1)
        if before.strip():  # text before the block: not "a thinking block, then an answer"
            return 0.0
    else:
        reasoning = head  # the template opened the block in the prompt
    if not reasoning.strip() or not answer.strip():
        return 0.0
    return 1.0 if last_boxed(answer) is not None else 0.5


def format_reward(completions: list[Any], **_: Any) -> list[float]:
    """The ``format`` term for each completion."""
    return [format_score(completion_text(c)) for c in completions]


format_reward.__name__ = "format"  # the name TRL logs it under: rewards/format/mean


def length_budget(cd: float, budget_min: int, budget_max: int) -> float:
    """Tokens a problem of cognitive difficulty ``cd`` (0-9) warrants: linear from ``budget_min`` at
    CD 0 to ``budget_max`` at CD 9."""
    cd = min(max(float(cd), 0.0), 9.0)
    return budget_min + (budget_max - budget_min) * cd / 9.0


def length_penalty(tokens: int, budget: float, slack: float) -> float:
    """The ``length`` term: 0 within ``budget``, falling linearly to -1 at ``(1 + slack) * budget``."""
    if tokens <= budget:
        return 0.0
    return -min(1.0, (tokens - budget) / (slack * budget))


class LengthReward:
    """The ``length`` term as a TRL reward function, with the budget settings bound."""

    __name__ = "length"

    def __init__(self, budget_min: int, budget_max: int, slack: float, default_cd: float):
        if budget_max < budget_min:
            raise ValueError(f"budget_max={budget_max} is below budget_min={budget_min}")
        self.budget_min, self.budget_max, self.slack, self.default_cd = (
            budget_min,
            budget_max,
            slack,
            default_cd,
        )

    def __call__(
        self,
        completions: list[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        cd: list[float | None] | None = None,
        **_: Any,
    ) -> list[float]:
        if completion_ids is None:
            raise ValueError("the length reward needs completion_ids (TRL passes them to reward functions)")
        cds = cd if cd is not None else [None] * len(completions)
        out = []
        for ids, value in zip(completion_ids, cds, strict=True):
            difficulty = self.default_cd if value is None or math.isnan(value) else value
            budget = length_budget(difficulty, self.budget_min, self.budget_max)
            out.append(length_penalty(len(ids), budget, self.slack))
        return out


class RewardModelScore:
    """The ``reward_model`` term: a sequence-classification reward model's score of prompt + completion.

    The conversation is rendered with the reward model's own chat template, exactly as the `reward`
    stage trained it, and scored in batches with right padding (the model reads the last non-pad
    token). ``sigmoid((score - mean) / std)`` puts the score on the scale of the 0/1 terms.
    """

    __name__ = "reward_model"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        mean: float = 0.0,
        std: float = 1.0,
        normalize: bool = True,
        batch_size: int = 8,
    ):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.mean, self.std = mean, std if std > 0 else 1.0
        self.normalize, self.batch_size = normalize, batch_size

    def reply(self, completion: Any) -> dict[str, str]:
        """The completion as the reward stage rendered its training answers: the thinking block as
        ``reasoning_content`` for templates that place it, else folded into the content as
        ``<think>\nR\n</think>\n\nC`` (``distilflow.training.data.message_dicts``)."""
        from distilflow.teachers.protocol import split_reasoning
        from distilflow.training.data import renders_reasoning

        text = completion_text(completion)
        if THINK_END not in text:
            return {"role": "assistant", "content": text}
        reasoning, content = split_reasoning(text)
        if renders_reasoning(self.tokenizer.chat_template):
            return {"role": "assistant", "content": content, "reasoning_content": reasoning}
        return {"role": "assistant", "content": f"{THINK_START}\n{reasoning}\n{THINK_END}\n\n{content}"}

    def texts(self, prompts: list[Any], completions: list[Any]) -> list[str]:
        out = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if isinstance(prompt, str):
                out.append(prompt + completion_text(completion))
                continue
            conversation = list(prompt) + [self.reply(completion)]
            out.append(self.tokenizer.apply_chat_template(conversation, tokenize=False))
        return out

    def scores(self, texts: list[str]) -> list[float]:
        """Raw reward-model scores of whole rendered texts."""
        import torch

        device = next(self.model.parameters()).device
        found: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
            ).to(device)
            with torch.inference_mode():
                found.extend(self.model(**batch).logits[:, 0].float().tolist())
        return found

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        raw = self.scores(self.texts(prompts, completions))
        if not self.normalize:
            return raw
        return [1.0 / (1.0 + math.exp(-(s - self.mean) / self.std)) for s in raw]
