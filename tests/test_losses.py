"""Losses of the teacher-student training, each checked against a small hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch

from core.mgvit.losses import (
    LossWeights,
    discovery_loss,
    info_nce,
    labeled_cross_entropy,
    mean_entropy_regularizer,
    self_distillation,
    sup_con,
    swap_views,
    teacher_distribution,
    teacher_temperature,
)

E1, E2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def test_info_nce_hand_computed_and_lower_for_aligned_views() -> None:
    aligned = torch.stack([E1, E2, E1, E2])  # view 2 equals view 1
    # each row: self excluded, positive cosine 1, the two others cosine 0 -> log(2 + e) - 1
    assert info_nce(aligned).item() == pytest.approx(math.log(2 + math.e) - 1, abs=1e-6)
    crossed = torch.stack([E1, E2, E2, E1])  # each view's positive points the other way
    assert info_nce(crossed).item() > info_nce(aligned).item()
    assert info_nce(aligned * 5.0).item() == pytest.approx(info_nce(aligned).item(), abs=1e-6)  # cosine, not dot
    with pytest.raises(ValueError):
        info_nce(torch.ones(3, 2))


def test_sup_con_hand_computed() -> None:
    same = torch.ones(4, 2)  # two samples of one class, all identical: 3 positives among 3 others
    assert sup_con(same, torch.tensor([0, 0])).item() == pytest.approx(math.log(3), abs=1e-5)
    separated = torch.stack([E1, E2, E1, E2])
    t = 0.07
    expected = math.log(math.exp(1 / t) + 2) - 1 / t  # one positive at cosine 1, two negatives at 0
    assert sup_con(separated, torch.tensor([0, 1]), t).item() == pytest.approx(expected, abs=1e-5)
    mixed = torch.stack([E1, E1, E2, E2])  # same-class views disagree
    assert sup_con(mixed, torch.tensor([0, 1]), t).item() > sup_con(separated, torch.tensor([0, 1]), t).item()


def test_labeled_cross_entropy_uses_both_views_and_student_temperature() -> None:
    logits = torch.tensor([[0.2, 0.0], [0.2, 0.0]])  # B = 1, two views
    expected = math.log(1 + math.exp(-2.0))  # logits / 0.1 = [2, 0], label 0
    assert labeled_cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(expected, abs=1e-6)


def test_teacher_zeroes_base_classes_and_plc_pulls_toward_normal() -> None:
    logits = torch.zeros(2, 4)  # 2 base classes, novel slots 2 (normal) and 3
    plain = teacher_distribution(logits, 0.07, n_base=2)
    assert torch.allclose(plain, torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2))
    corrected = teacher_distribution(logits, 0.07, n_base=2, scores=torch.tensor([0.2, 0.9]), plc_offset=0.5)
    # w = 0.3 for score 0.2: 0.3 * e_normal + 0.7 * [0, 0, .5, .5]; no change for score 0.9 (w = 0)
    assert torch.allclose(corrected, torch.tensor([[0.0, 0.0, 0.65, 0.35], [0.0, 0.0, 0.5, 0.5]]))
    big_base = torch.tensor([[5.0, 0.0, 0.1, 0.0]])
    q = teacher_distribution(big_base, 0.04, n_base=1)
    assert q[0, 0] == 0 and q.sum().item() == pytest.approx(1.0) and q[0, 2] > 0.8  # no underflow to all-zero
    assert torch.allclose(teacher_distribution(logits, 0.07, 2, torch.tensor([0.0, 0.0]), None), plain)


def test_self_distillation_uses_the_other_view_as_teacher() -> None:
    student = torch.tensor([[0.1, 0.0], [0.0, 0.0]])  # view 1, view 2 of one sample
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # view 1 learns from view 2's target [0, 1]: -log softmax([1, 0])[1] = log(1 + e);
    # view 2 learns from view 1's target [1, 0]: -log softmax([0, 0])[0] = log 2
    expected = (math.log(1 + math.e) + math.log(2)) / 2
    assert self_distillation(student, teacher).item() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(swap_views(torch.arange(4)), torch.tensor([2, 3, 0, 1]))


def test_mean_entropy_regularizer_zero_for_uniform_mean_positive_for_collapse() -> None:
    balanced = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert mean_entropy_regularizer(balanced).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = 1 / (1 + math.exp(-10))
    expected = math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p)
    assert mean_entropy_regularizer(collapsed).item() == pytest.approx(expected, abs=1e-6)


def test_teacher_temperature_schedule() -> None:
    assert teacher_temperature(0, 50) == pytest.approx(0.07)
    assert teacher_temperature(20, 50) == pytest.approx(0.07 - 0.03 * 20 / 39)
    assert teacher_temperature(39, 50) == pytest.approx(0.04)
    assert teacher_temperature(49, 50) == pytest.approx(0.04)
    assert teacher_temperature(7, 10) == pytest.approx(0.04)  # warm-up scaled to 8 of 10 epochs
    assert teacher_temperature(0, 10) == pytest.approx(0.07)


def _optimize_toward_teacher(score: float) -> torch.Tensor:
    """Free logits of one sample (two views), favouring novel class 3 over the normal slot 2."""
    logits = torch.nn.Parameter(torch.tensor([[0.0, 0.0, 0.0, 0.3]] * 2))
    optimizer = torch.optim.SGD([logits], lr=0.2)
    for _ in range(60):
        q = teacher_distribution(logits, 0.04, n_base=2, scores=torch.tensor([score, score]), plc_offset=0.5)
        loss = self_distillation(logits, q)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.softmax(logits.detach() / 0.1, dim=1)


def test_plc_moves_low_score_crops_into_the_normal_slot() -> None:
    low = _optimize_toward_teacher(0.0)
    high = _optimize_toward_teacher(0.9)
    assert (low.argmax(1) == 2).all()  # over-detection learns "normal"
    assert (high.argmax(1) == 3).all()  # a confident anomaly keeps its class


def test_discovery_loss_terms_and_combination() -> None:
    torch.manual_seed(0)
    projections = torch.randn(8, 5)
    logits = torch.randn(3, 8, 4).clamp(-1, 1)  # 3 heads, B = 4, C = 4 (1 base + 3 novel)
    scores = torch.tensor([0.9, 0.1, 0.8, 0.7])
    weights = LossWeights()
    unlabeled = torch.full((4,), -1)
    total, terms, per_head = discovery_loss(projections, logits, unlabeled, scores, 1, 0.07, weights)
    assert set(terms) == {"rep", "cls_u", "reg_u", "total"}  # labeled terms absent
    assert per_head.shape == (3,)
    expected = 0.7 * (terms["rep"] + terms["cls_u"] + 4.0 * terms["reg_u"])
    assert total.item() == pytest.approx(expected, rel=1e-5)

    labels = torch.tensor([0, -1, 0, -1])
    total, terms, _ = discovery_loss(projections, logits, labels, scores, 1, 0.07, weights)
    assert {"cls_l", "rep_l"} <= set(terms)
    expected = 0.7 * (terms["rep"] + terms["cls_u"] + 4.0 * terms["reg_u"]) + 0.3 * (terms["cls_l"] + terms["rep_l"])
    assert total.item() == pytest.approx(expected, rel=1e-5)

    all_labeled = torch.zeros(4, dtype=torch.long)
    total, terms, per_head = discovery_loss(projections, logits, all_labeled, scores, 1, 0.07, weights)
    assert "cls_u" not in terms and torch.isfinite(total) and (per_head == 0).all()
