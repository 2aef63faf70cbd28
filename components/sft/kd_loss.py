"""The white-box KD loss: cross-entropy mixed with a KL divergence to the teacher's stored top-k.

The teacher gave, at every answer position, only its ``k`` likeliest tokens ``S`` and their
log-probabilities (``distill.logits``). Both distributions are compared on what that determines:

- ``tail: bucket`` (default): ``k + 1`` outcomes, the ``k`` tokens and the *tail* (every other token)
  with mass ``1 - sum_{v in S} p(v)``. The teacher's tail mass is known exactly from its top-k; the
  student's is ``1 - sum_{v in S} q(v)`` from its full softmax. This is the KL between the two
  distributions coarsened to those outcomes: exact, a lower bound of the full-vocabulary KL, zero
  only when the student matches the teacher on ``S`` *and* on the total mass outside ``S`` (a
  student that spreads mass outside the teacher's top-k pays for it). A tail below ``TAIL_FLOOR``
  counts as ``TAIL_FLOOR`` (a top-k that already holds all the mass, up to rounding).
- ``tail: renormalize``: the ``k`` outcomes only, both distributions renormalised over ``S``
  (``p(v) / sum_S p``). This compares the *shapes* inside the top-k and ignores how much mass the
  student puts outside it; it is what a loss that treats the top-k as the whole distribution
  silently does, here chosen on purpose.

Padding entries of a short position (``-inf``) are outcomes with no mass on either side.
Temperature ``tau`` acts on these coarse distributions, for teacher and student alike
(``p_i^(1/tau)`` renormalised), so a student equal to the teacher has zero loss at any ``tau``;
the divergence is multiplied by ``tau^2`` so its gradients keep their scale (Hinton et al. 2015,
"Distilling the Knowledge in a Neural Network"). Divergences: forward ``KL(teacher || student)``
(mode covering), reverse ``KL(student || teacher)`` (mode seeking; MiniLLM, Gu et al. 2024), or
``mix``: ``(1 - w) forward + w reverse``.

The loss is ``(1 - alpha) * CE + alpha * tau^2 * D``, both summed over the same answer positions
and divided by the number of positions (one per-token mean: unlike EasyDistill's white-box loss,
modelscope/easydistill#34, the KL is not divided by the token count twice and so does not vanish
beside the CE). The teacher's rows travel with the example they belong to (keyed by trace id, in
the batch), never looked up by step number (modelscope/easydistill#21: logits read by
``global_step`` drift from their examples after shuffling and run out after an epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

TAIL_FLOOR = 1e-6
"""Smallest tail mass: a top-k holding all the mass (up to float rounding) keeps a finite log."""


@dataclass(frozen=True)
class KdTerms:
    """Sums over the answer positions of one batch: the CE and the (tau^2-scaled) divergence."""

    ce: Any
    kd: Any
    positions: int


def coarse(top_logprobs: Any, tail: str) -> Any:
    """``(..., k)`` top-k log-probabilities (``-inf`` for padding) as log-probabilities of the coarse
    outcomes: ``(..., k + 1)`` with the tail last (``bucket``), or ``(..., k)`` renormalised."""
    import torch

    total = torch.logsumexp(top_logprobs, dim=-1, keepdim=True)
    if tail == "renormalize":
        return top_logprobs - total
    if tail != "bucket":
        raise ValueError(f"tail must be 'bucket' or 'renormalize', got {tail!r}")
    # log(1 - sum p): exact for small tails through expm1
    rest = torch.log(-torch.expm1(total.clamp(max=math.log1p(-TAIL_FLOOR))))
    return torch.cat([top_logprobs, rest], dim=-1)


def tempered(logprobs: Any, temperature: float) -> Any:
    """``p_i^(1/tau)`` renormalised over the outcomes (identity at ``tau = 1``)."""
    import torch

    if temperature == 1.0:
        return logprobs
    return torch.log_softmax(logprobs / temperature, dim=-1)


def kl(p_log: Any, q_log: Any) -> Any:
    """``KL(p || q)`` over the last axis from log-probabilities; outcomes with ``p = 0`` add nothing."""
    import torch

    p = p_log.exp()
    terms = torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))
    return terms.sum(dim=-1)


def divergence(
    student_logits: Any,
    top_ids: Any,
    top_logprobs: Any,
    kind: str = "forward_kl",
    reverse_weight: float = 0.5,
    temperature: float = 1.0,
    tail: str = "bucket",
) -> Any:
    """The per-position divergence (times ``tau^2``) of the student from the teacher's top-k.

    Args:
        student_logits: ``(N, V)`` the student's logits at N positions.
        top_ids: ``(N, k)`` the teacher's top-k token ids there.
        top_logprobs: ``(N, k)`` their teacher log-probabilities (temperature 1; ``-inf`` pads).
        kind: ``forward_kl``, ``reverse_kl`` or ``mix``.
        reverse_weight: The weight ``w`` of the reverse KL in ``mix``.
        temperature: ``tau`` (see the module docstring).
        tail: ``bucket`` or ``renormalize``.

    Returns:
        ``(N,)`` divergences.
    """
    import torch

    logits = student_logits.float()
    valid = torch.isfinite(top_logprobs)
    student_top = logits.gather(-1, top_ids.long()) - torch.logsumexp(logits, dim=-1, keepdim=True)
    student_top = torch.where(valid, student_top, torch.full_like(student_top, -math.inf))
    teacher = tempered(coarse(top_logprobs.float(), tail), temperature)
    student = tempered(coarse(student_top, tail), temperature)
    if kind == "forward_kl":
        found = kl(teacher, student)
    elif kind == "reverse_kl":
        found = kl(student, teacher)
    elif kind == "mix":
        found = (1 - reverse_weight) * kl(teacher, student) + reverse_weight * kl(student, teacher)
    else:
        raise ValueError(f"divergence must be forward_kl, reverse_kl or mix, got {kind!r}")
    return found * temperature**2


def kd_terms(
    logits: Any, labels: Any, top_ids: Any, top_logprobs: Any, settings: Any, skip_kd: bool = False
) -> KdTerms:
    """CE and divergence sums over the answer positions of a batch.

    Args:
        logits: ``(B, L, V)`` the student's logits for ``input_ids``.
        labels: ``(B, L)`` the input ids, ``-100`` where no loss is taken (prompt, padding).
        top_ids, top_logprobs: ``(B, L, k)`` the teacher's top-k for the token at each position
            (aligned with ``labels``: position ``j`` holds the distribution that predicted token ``j``).
        settings: anything with ``divergence``, ``reverse_weight``, ``temperature`` and ``tail``
            (``SftConfig.kd``).
        skip_kd: Leave the divergence out (``alpha = 0``: plain CE on the same tokens).
    """
    import torch

    # logits at j predict token j + 1
    shifted, target = logits[:, :-1, :], labels[:, 1:]
    mask = target != -100
    picked = shifted[mask]
    ce = torch.nn.functional.cross_entropy(picked.float(), target[mask], reduction="sum")
    if skip_kd:
        return KdTerms(ce, torch.zeros_like(ce), int(mask.sum()))
    kd = divergence(
        picked,
        top_ids[:, 1:][mask],
        top_logprobs[:, 1:][mask],
        settings.divergence,
        settings.reverse_weight,
        settings.temperature,
        settings.tail,
    ).sum()
    return KdTerms(ce, kd, int(mask.sum()))


def generalized_jsd(student_logits: Any, top_ids: Any, top_logprobs: Any, beta: float) -> Any:
    """GKD's generalized Jensen-Shannon divergence (Agarwal et al. 2024, eq. 1, in TRL's convention:
    ``beta = 0`` forward KL, ``beta = 1`` reverse KL, else ``beta KL(T || M) + (1 - beta) KL(S || M)``
    with ``M = beta T + (1 - beta) S``), over the teacher's top-k and the tail (``tail: bucket``): what
    a served teacher that returns only its top-k logprobs determines. ``(N,)`` per position."""
    import torch

    logits = student_logits.float()
    valid = torch.isfinite(top_logprobs)
    student_top = logits.gather(-1, top_ids.long()) - torch.logsumexp(logits, dim=-1, keepdim=True)
    student = coarse(torch.where(valid, student_top, torch.full_like(student_top, -math.inf)), "bucket")
    teacher = coarse(top_logprobs.float(), "bucket")
    if beta == 0:
        return kl(teacher, student)
    if beta == 1:
        return kl(student, teacher)
    mixture = torch.logsumexp(torch.stack([student + math.log1p(-beta), teacher + math.log(beta)]), dim=0)
    return beta * kl(teacher, mixture) + (1 - beta) * kl(student, mixture)
