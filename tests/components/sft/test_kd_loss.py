"""The white-box KD loss against values computed by hand (``math.log`` on the probabilities written
out below), on one position where the teacher's top-2 holds 0.8 of its mass and the student spreads
its own mass differently: the tail bucket, the renormalisation over the top-k, temperature, the
reverse and mixed divergences, padding, and the CE/KD mix over a batch's answer positions."""

import math

import pytest

from distilflow.components.sft.config import KdConfig

pytestmark = pytest.mark.unit

# vocabulary of 5; the teacher's top-2 are tokens 0 and 2 with p = 0.5 and 0.3 (tail 0.2)
TEACHER = {0: 0.5, 2: 0.3}
STUDENT = [0.4, 0.1, 0.3, 0.15, 0.05]  # the student's q over the whole vocabulary (top-2: 0.4, 0.3; tail 0.3)


def one_position(k_pad: int = 0):
    import torch

    ids = list(TEACHER) + [0] * k_pad
    lps = [math.log(p) for p in TEACHER.values()] + [-math.inf] * k_pad
    logits = (
        torch.tensor([[math.log(q) for q in STUDENT]], dtype=torch.float64) + 3.0
    )  # softmax ignores the shift
    return logits, torch.tensor([ids]), torch.tensor([lps], dtype=torch.float32)


def fkl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


BUCKET_T, BUCKET_S = [0.5, 0.3, 0.2], [0.4, 0.3, 0.3]


def test_forward_kl_over_the_top_k_and_the_tail_bucket():
    from distilflow.components.sft.kd_loss import divergence

    want = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.3) + 0.2 * math.log(0.2 / 0.3)
    got = divergence(*one_position(), kind="forward_kl", tail="bucket")
    assert float(got[0]) == pytest.approx(want, abs=1e-6)
    # not what a loss that forgets the tail computes: the top-k as a dense distribution summing to 0.8
    forgetful = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.3)
    assert abs(float(got[0]) - forgetful) > 0.05


def test_renormalised_over_the_top_k():
    from distilflow.components.sft.kd_loss import divergence

    teacher = [0.5 / 0.8, 0.3 / 0.8]
    student = [0.4 / 0.7, 0.3 / 0.7]
    got = divergence(*one_position(), kind="forward_kl", tail="renormalize")
    assert float(got[0]) == pytest.approx(fkl(teacher, student), abs=1e-6)


def test_reverse_and_mixed_kl():
    from distilflow.components.sft.kd_loss import divergence

    reverse = 0.4 * math.log(0.4 / 0.5) + 0.3 * math.log(0.3 / 0.3) + 0.3 * math.log(0.3 / 0.2)
    assert float(divergence(*one_position(), kind="reverse_kl")[0]) == pytest.approx(reverse, abs=1e-6)
    mixed = divergence(*one_position(), kind="mix", reverse_weight=0.25)
    assert float(mixed[0]) == pytest.approx(0.75 * fkl(BUCKET_T, BUCKET_S) + 0.25 * reverse, abs=1e-6)


def test_temperature_softens_both_sides_alike_and_scales_by_t_squared():
    from distilflow.components.sft.kd_loss import divergence

    def soft(p, t):
        w = [x ** (1 / t) for x in p]
        return [x / sum(w) for x in w]

    want = 4 * fkl(soft(BUCKET_T, 2.0), soft(BUCKET_S, 2.0))
    got = divergence(*one_position(), kind="forward_kl", temperature=2.0)
    assert float(got[0]) == pytest.approx(want, abs=1e-6)


def test_a_student_equal_to_the_teacher_costs_nothing_at_any_temperature():
    import torch

    from distilflow.components.sft.kd_loss import divergence

    probs = [0.5, 0.1, 0.3, 0.07, 0.03]
    logits = torch.tensor([[math.log(p) for p in probs]])
    ids, lps = torch.tensor([[0, 2]]), torch.tensor([[math.log(0.5), math.log(0.3)]])
    for tail in ("bucket", "renormalize"):
        for t in (0.5, 1.0, 3.0):
            for kind in ("forward_kl", "reverse_kl", "mix"):
                assert float(divergence(logits, ids, lps, kind, 0.5, t, tail)[0]) == pytest.approx(
                    0, abs=1e-6
                )


def test_padding_entries_carry_no_mass():
    """A position with fewer than k entries (-inf padding) gives the value of its real entries."""
    from distilflow.components.sft.kd_loss import divergence

    for kind in ("forward_kl", "reverse_kl"):
        padded = divergence(*one_position(k_pad=3), kind=kind)
        assert float(padded[0]) == pytest.approx(float(divergence(*one_position(), kind=kind)[0]), abs=1e-6)


def test_generalized_jsd_of_a_served_teacher():
    """GKD's beta (TRL's convention) over the top-k and the tail: 0 forward, 1 reverse, else the JSD."""
    from distilflow.components.sft.kd_loss import generalized_jsd

    t, s = BUCKET_T, BUCKET_S
    m = [0.5 * a + 0.5 * b for a, b in zip(t, s, strict=True)]
    assert float(generalized_jsd(*one_position(), beta=0.0)[0]) == pytest.approx(fkl(t, s), abs=1e-6)
    assert float(generalized_jsd(*one_position(), beta=1.0)[0]) == pytest.approx(fkl(s, t), abs=1e-6)
    want = 0.5 * fkl(t, m) + 0.5 * fkl(s, m)
    assert float(generalized_jsd(*one_position(), beta=0.5)[0]) == pytest.approx(want, abs=1e-6)


def test_ce_and_divergence_are_summed_over_the_answer_positions_only():
    """A row of 4 tokens (2 prompt, 2 answer) and one of padding: CE of the two answer tokens and the
    divergence at their two positions, nothing at the prompt or padding."""
    import torch

    from distilflow.components.sft.kd_loss import kd_terms

    vocab = 5
    logits = torch.full((1, 4, vocab), -2.0)
    # logits at j predict token j + 1: positions 1 and 2 predict the answer tokens 2 and 0
    logits[0, 1] = torch.tensor([math.log(q) for q in STUDENT])
    logits[0, 2] = torch.tensor([math.log(q) for q in [0.1, 0.1, 0.6, 0.1, 0.1]])
    labels = torch.tensor([[-100, -100, 2, 0]])
    top_ids = torch.zeros((1, 4, 2), dtype=torch.long)
    top_lps = torch.full((1, 4, 2), -math.inf)
    top_ids[0, 2], top_lps[0, 2] = torch.tensor([0, 2]), torch.tensor([math.log(0.5), math.log(0.3)])
    top_ids[0, 3], top_lps[0, 3] = torch.tensor([2, 0]), torch.tensor([math.log(0.9), math.log(0.05)])
    settings = KdConfig(divergence="forward_kl")
    terms = kd_terms(logits, labels, top_ids, top_lps, settings)
    assert terms.positions == 2
    assert float(terms.ce) == pytest.approx(-math.log(0.3) - math.log(0.1), abs=1e-5)
    second = fkl([0.9, 0.05, 0.05], [0.6, 0.1, 0.3])
    assert float(terms.kd) == pytest.approx(fkl(BUCKET_T, BUCKET_S) + second, abs=1e-5)
    # alpha = 0: CE only, on the same tokens
    assert float(kd_terms(logits, labels, top_ids, top_lps, settings, skip_kd=True).kd) == 0.0


def test_unknown_settings_are_refused():
    from distilflow.components.sft.kd_loss import coarse, divergence

    with pytest.raises(ValueError, match="tail must be"):
        coarse(one_position()[2], "drop")
    with pytest.raises(ValueError, match="divergence must be"):
        divergence(*one_position(), kind="jsd")
