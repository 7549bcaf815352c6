"""The training losses of docs/method.md stage 5 (SimGCD-style teacher-student with AnomalyNCD's changes).

Conventions: two views per sample are stacked view-major, i.e. rows [0, B) are view 1 and rows
[B, 2B) view 2 of the same B samples. Logits are raw cosine logits (in [-1, 1]); temperatures are
applied here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def swap_views(x: torch.Tensor) -> torch.Tensor:
    """Rows of view 2 then view 1: the 'other view' of every row."""
    first, second = x.chunk(2)
    return torch.cat([second, first])


def info_nce(projections: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Unsupervised contrastive loss L_rep: each row's positive is the same sample's other view.

    projections: [2B, d]; cosine similarities / temperature, the row itself excluded.
    """
    rows = projections.shape[0]
    if rows < 2 or rows % 2:
        raise ValueError(f"info_nce needs two views of >= 1 sample stacked, got {rows} rows")
    features = F.normalize(projections.float(), dim=1)
    similarity = features @ features.T / temperature
    self_mask = torch.eye(rows, dtype=torch.bool, device=features.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    half = rows // 2
    targets = torch.cat([torch.arange(half, rows), torch.arange(0, half)]).to(features.device)
    return F.cross_entropy(similarity, targets)


def sup_con(projections: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss L_rep^l (SupCon, 'all' anchors, base temperature = temperature).

    projections: [2B, d] of labeled samples (two views stacked), labels: [B]. Positives are all other
    rows of the same class; anchors without any positive are skipped.
    """
    rows = projections.shape[0]
    features = F.normalize(projections.float(), dim=1)
    labels = torch.cat([labels, labels]).to(features.device)
    logits = features @ features.T / temperature
    self_mask = torch.eye(rows, dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
    count = positive.sum(1)
    has = count > 0
    if not bool(has.any()):
        return features.sum() * 0.0
    mean_log_prob = (log_prob.masked_fill(~positive, 0.0)).sum(1)[has] / count[has]
    return -mean_log_prob.mean()


def labeled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """L_cls^l: cross-entropy of labeled logits / student_temp; logits [2B, C] (both views), labels [B]."""
    return F.cross_entropy(logits.float() / student_temp, torch.cat([labels, labels]).to(logits.device))


def teacher_distribution(
    logits: torch.Tensor,
    teacher_temp: float,
    n_base: int,
    scores: torch.Tensor | None = None,
    plc_offset: float | None = 0.5,
) -> torch.Tensor:
    """Teacher targets for unlabeled rows: softmax(logits / T), base classes zeroed and renormalized,
    then pseudo-label correction q <- w e_normal + (1 - w) q with w = max(0, plc_offset - score).

    The normal / false-detection slot is the first novel class (column n_base). plc_offset=None or
    scores=None turns the correction off.
    """
    logits = logits.detach().float()
    # zeroing the base classes and renormalizing == a softmax over the novel columns alone, which
    # stays exact when a base class dominates (the full softmax would underflow to all-zero novel mass)
    novel = F.softmax(logits[:, n_base:] / teacher_temp, dim=1)
    q = torch.cat([novel.new_zeros(novel.shape[0], n_base), novel], dim=1)
    if scores is not None and plc_offset is not None:
        w = (plc_offset - scores.to(q).view(-1)).clamp_min(0.0).view(-1, 1)
        normal = torch.zeros_like(q)
        normal[:, n_base] = 1.0
        q = w * normal + (1 - w) * q
    return q


def self_distillation(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """L_cls^u: cross-entropy of each view's student log-softmax(logits / student_temp) against the
    OTHER view's teacher distribution; both [2B, C] view-major; mean over rows."""
    log_student = F.log_softmax(student_logits.float() / student_temp, dim=1)
    return -(swap_views(teacher_probs) * log_student).sum(1).mean()


def mean_entropy_regularizer(logits: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """L_reg^u = log(C) - H(mean over rows of softmax(logits / student_temp)); 0 when the mean is uniform."""
    mean = F.softmax(logits.float() / student_temp, dim=1).mean(0)
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum()
    return math.log(mean.numel()) - entropy


def teacher_temperature(epoch: int, epochs: int, start: float = 0.07, end: float = 0.04, warmup_epochs: int = 40) -> float:
    """Teacher temperature: linear warm-up start -> end over warmup_epochs (scaled when epochs < 50), then end."""
    warmup = warmup_epochs if epochs >= 50 else round(warmup_epochs * epochs / 50)
    if warmup <= 1:
        return end if epoch >= warmup else start
    if epoch >= warmup:
        return end
    return start + (end - start) * epoch / (warmup - 1)


@dataclass(frozen=True)
class LossWeights:
    """How the terms are combined (docs/method.md stage 5)."""

    sup_weight: float = 0.3  # lambda [0.3]
    memax_weight: float = 4.0  # weight of L_reg^u [4]
    student_temp: float = 0.1  # student temperature [0.1]
    unsup_con_temp: float = 1.0  # InfoNCE temperature [1.0]
    sup_con_temp: float = 0.07  # SupCon temperature [0.07]
    plc_offset: float | None = 0.5  # PLC: w = max(0, offset - score); None = no correction [0.5]


def discovery_loss(
    projections: torch.Tensor,
    head_logits: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    n_base: int,
    teacher_temp: float,
    weights: LossWeights = LossWeights(),
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Total loss of one batch of two views per sample.

    projections [2B, d]; head_logits [H, 2B, C] raw cosine logits of each head; labels [B] (-1 =
    unlabeled); scores [B] anomaly scores. Returns (total, terms as floats, per-head L_cls^u [H]).
    Total = (1 - lambda)(L_cls^u + memax L_reg^u + L_rep) + lambda (L_cls^l + L_rep^l), each head
    term averaged over heads; terms without samples of their kind are left out.
    """
    labeled = labels >= 0
    unlabeled = ~labeled
    labeled2 = torch.cat([labeled, labeled])
    unlabeled2 = torch.cat([unlabeled, unlabeled])
    n_heads = head_logits.shape[0]
    zero = projections.float().sum() * 0.0
    terms: dict[str, float] = {}

    rep = info_nce(projections, weights.unsup_con_temp)
    unsup = rep
    terms["rep"] = float(rep.detach())
    per_head_u = torch.zeros(n_heads)
    if bool(unlabeled.any()):
        cls_u_heads = []
        reg_heads = []
        for head in range(n_heads):
            logits_u = head_logits[head][unlabeled2]
            q = teacher_distribution(logits_u, teacher_temp, n_base, torch.cat([scores[unlabeled]] * 2), weights.plc_offset)
            # teacher rows are view-major too: the first half are view 1 of the unlabeled samples
            cls_u_heads.append(self_distillation(logits_u, q, weights.student_temp))
            reg_heads.append(mean_entropy_regularizer(logits_u, weights.student_temp))
        cls_u = torch.stack(cls_u_heads)
        reg = torch.stack(reg_heads)
        per_head_u = cls_u.detach().cpu()
        unsup = unsup + cls_u.mean() + weights.memax_weight * reg.mean()
        terms["cls_u"] = float(cls_u.mean().detach())
        terms["reg_u"] = float(reg.mean().detach())
    if bool(labeled.any()):
        lab = labels[labeled]
        cls_l = torch.stack(
            [labeled_cross_entropy(head_logits[h][labeled2], lab, weights.student_temp) for h in range(n_heads)]
        ).mean()
        rep_l = sup_con(projections[labeled2], lab, weights.sup_con_temp)
        terms["cls_l"] = float(cls_l.detach())
        terms["rep_l"] = float(rep_l.detach())
        total = (1 - weights.sup_weight) * unsup + weights.sup_weight * (cls_l + rep_l)
    else:
        total = (1 - weights.sup_weight) * unsup + zero
    terms["total"] = float(total.detach())
    return total, terms, per_head_u
