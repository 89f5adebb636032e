"""Pieces shared by the classification tasks: loss on [N, 1] class labels, AUC, sensitivity at a specificity."""

from __future__ import annotations

import torch
from torch import nn


def make_loss() -> nn.Module:
    class FlatCrossEntropy(nn.CrossEntropyLoss):
        def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return super().forward(logits, labels.view(-1))

    return FlatCrossEntropy()


def _malignancy_scores(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)[:, 1]


def auc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); 0.5 when a split has only one class."""
    scores, y = _malignancy_scores(logits), labels.view(-1).bool()
    pos, neg = scores[y], scores[~y]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    greater = (pos[:, None] > neg[None, :]).float().sum()
    ties = (pos[:, None] == neg[None, :]).float().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def sensitivity_at_specificity(logits: torch.Tensor, labels: torch.Tensor, specificity: float = 0.9) -> float:
    """Share of malignant cases above the threshold that keeps ``specificity`` of benign/normal cases below it."""
    scores, y = _malignancy_scores(logits), labels.view(-1).bool()
    pos, neg = scores[y], scores[~y]
    if len(pos) == 0 or len(neg) == 0:
        return 0.0
    threshold = torch.quantile(neg, specificity)
    return float((pos > threshold).float().mean())
