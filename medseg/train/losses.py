"""Partial-label (marginal) Dice + cross-entropy for multi-organ training on cases that label only some organs.

A real CT with only a liver label says nothing about the spleen or the stomach: calling them background would
teach the network that they are background. The marginal loss (Shi et al., MedIA 2021, "Marginal loss and
exclusion loss for partially supervised multi-organ segmentation") instead merges the softmax probabilities of
the organs a case does not label into its background before the loss, so any split among them costs nothing.
For a fully labelled case it is exactly softmax Dice + cross-entropy.
"""

from __future__ import annotations

import torch


def merge_unlabelled(probs: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Probabilities (B, C, ...) with every unlabelled class's mass moved to class 0; labelled: (B, C) bool."""
    keep = labelled.to(probs.dtype).view(*labelled.shape, *([1] * (probs.dim() - 2)))
    keep = keep.clone()
    keep[:, 0] = 1.0
    merged = probs * keep
    merged[:, 0] = merged[:, 0] + (probs * (1.0 - keep)).sum(1)
    return merged


def marginal_dice_ce(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor, smooth: float = 1e-5,
                     dice_weight: float = 1.0, ce_weight: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Dice (foreground classes, batch-pooled like MONAI DiceCELoss(batch=True)) + CE on merged probabilities.

    logits (B, C, ...), target (B, 1, ...) integer labels using only labelled classes, labelled (B, C) bool. The
    weights are MONAI's `lambda_dice` and `lambda_ce`; a zero Dice weight is plain (marginal) cross-entropy.
    """
    probs = merge_unlabelled(torch.softmax(logits.float(), 1), labelled)
    tgt = target[:, 0].long()
    ce = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-8)), tgt)
    onehot = torch.nn.functional.one_hot(tgt, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = [0, *range(2, probs.dim())]
    inter = (probs * onehot).sum(dims)[1:]
    denom = (probs.sum(dims) + onehot.sum(dims))[1:]
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    return dice_weight * dice.mean() + ce_weight * ce
