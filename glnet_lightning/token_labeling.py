"""Token labeling (LV-ViT, "All Tokens Matter"): the training targets built from precomputed label maps,
and the loss that scores the class logits and every token's auxiliary logits against them.

Kept apart from ``models`` (a network knows nothing of its targets) and below ``data`` and ``lit``, so
both the data pipeline and the training recipe can use it; it needs only torch, torchvision and timm.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torchvision.ops import roi_align

from glnet_lightning.errors import UserError

__all__ = ["TokenLabelError", "TokenLabelLoss", "token_label_targets"]

#: Where ``label_maps_topk[:, 2, 0, 0]`` keeps the crop box (x, y, w, h, fractions of the image)
#: and the image's class index; the data pipeline writes them there.
CROP_BOX = slice(0, 4)
IMAGE_LABEL = 5


class TokenLabelError(UserError, ValueError):
    """Label maps, targets and logits that do not fit together (a setting or data the user chose)."""


def token_label_targets(label_maps_topk: torch.Tensor, num_classes: int, label_size: int) -> torch.Tensor:
    """The token-labeling target (B, num_classes, 2 + label_size**2) of a batch of label maps.

    ``label_maps_topk`` is (B, 3, k, S, S): top-k scores, top-k class indices, and a row holding the crop
    box and the image label. The columns of the result are the one-hot image label, the crop-level soft
    label and the label_size x label_size token soft labels (row-major, like the model's flattened
    final grid). The crop region is cut from the map with RoIAlign because the map covers the whole
    image while the network sees only the crop.
    """
    if label_maps_topk.dim() != 5 or label_maps_topk.shape[1] != 3 or \
            label_maps_topk.shape[-1] != label_maps_topk.shape[-2]:
        raise TokenLabelError(f"label maps must be (batch, 3, k, S, S) (scores, classes, crop box and label), "
                              f"got {tuple(label_maps_topk.shape)}: use a token-label data module's batches")
    if label_size < 1:
        raise TokenLabelError(f"label_size must be a positive grid side (7 for 224 px images), got {label_size}")
    scores, classes, extra = label_maps_topk.unbind(1)
    classes = classes.long()
    # An index past num_classes would fail deep inside scatter (a device assert on GPU): say why here.
    if classes.numel() and int(classes.max()) >= num_classes:
        raise TokenLabelError(f"the label maps name class {int(classes.max())} but num_classes is {num_classes}: "
                              f"set num_classes to the label maps' number of classes")
    batch, side = label_maps_topk.shape[0], label_maps_topk.shape[-1]
    dense = scores.new_zeros(batch, num_classes, side, side).scatter_(1, classes, scores)

    x, y, w, h = extra[:, 0, 0, CROP_BOX].unbind(1)
    corners = torch.stack([x, y, x + w, y + h], dim=1) * side - 0.5  # fractions -> map cells (pixel centres)
    rois = torch.cat([torch.arange(batch, dtype=dense.dtype, device=dense.device)[:, None], corners], dim=1)
    tokens = roi_align(dense, rois, output_size=(label_size, label_size)).softmax(1).flatten(2)
    crop = roi_align(dense, rois, output_size=(1, 1)).softmax(1).flatten(2)
    one_hot = nn.functional.one_hot(extra[:, 0, 0, IMAGE_LABEL].long(), num_classes).to(dense.dtype)
    return torch.cat([one_hot[:, :, None], crop, tokens], dim=2)


class TokenLabelLoss(nn.Module):
    """Soft-target cross entropy of the class logits against the crop-level label, plus ``dense_weight``
    times that of every token's auxiliary logits against its token label.

    MixToken pastes a box of the flipped batch into each image; the model swaps the token logits inside
    the box back, so only the class term needs mixing: its target becomes lam * own + (1 - lam) * flipped,
    lam = 1 - box area / tokens. ``ground_truth=True`` trusts the image label more where the label map
    disagrees with it: the crop-level label is blended with the one-hot label (weight 0.5 when their top
    classes agree, 0.1 when they do not).
    """

    def __init__(self, dense_weight: float = 1.0, cls_weight: float = 1.0, ground_truth: bool = False):
        super().__init__()
        self.dense_weight = dense_weight
        self.cls_weight = cls_weight
        self.ground_truth = ground_truth
        self.soft_cross_entropy = SoftTargetCrossEntropy()

    def forward(self, outputs: Sequence, target: torch.Tensor) -> torch.Tensor:
        """``outputs`` is the model's training forward: (cls_logits (B, C), aux_logits (B, N, C), box or None);
        ``target`` is :func:`token_label_targets`' (B, C, 2 + N)."""
        cls_logits, aux_logits, box = outputs
        check_shapes(cls_logits, aux_logits, target)
        batch, tokens, classes = aux_logits.shape
        crop_label = target[:, :, 1]
        if self.ground_truth:
            one_hot = target[:, :, 0]
            agree = (one_hot.argmax(1) == crop_label.argmax(1)).to(crop_label.dtype)[:, None]
            trust = 0.1 + 0.4 * agree
            crop_label = (1 - trust) * crop_label + trust * one_hot
        lam = 1.0 - box_area(box) / tokens
        if lam < 1.0:
            crop_label = lam * crop_label + (1 - lam) * crop_label.flip(0)
        token_labels = target[:, :, 2:].transpose(1, 2).reshape(-1, classes)
        return (self.cls_weight * self.soft_cross_entropy(cls_logits, crop_label)
                + self.dense_weight * self.soft_cross_entropy(aux_logits.reshape(-1, classes), token_labels))


def box_area(box) -> int:
    """Tokens inside a MixToken box (bbx1, bby1, bbx2, bby2) on the final grid; None or an empty box: 0."""
    if box is None:
        return 0
    first_lo, second_lo, first_hi, second_hi = (int(v) for v in box)
    return max(first_hi - first_lo, 0) * max(second_hi - second_lo, 0)


def check_shapes(cls_logits: torch.Tensor, aux_logits: torch.Tensor, target: torch.Tensor) -> None:
    """Mismatched grids or class counts are settings (label_size, num_classes): name the one to change."""
    if target.dim() != 3 or aux_logits.dim() != 3 or cls_logits.dim() != 2:
        raise TokenLabelError(f"token labeling needs cls logits (B, C), aux logits (B, N, C) and targets "
                              f"(B, C, 2 + N), got {tuple(cls_logits.shape)}, {tuple(aux_logits.shape)} and "
                              f"{tuple(target.shape)}: use a model with use_aux_head and token_label_targets")
    tokens, labelled = aux_logits.shape[1], target.shape[2] - 2
    if tokens != labelled:
        side = math.isqrt(tokens)
        fix = (f"set label_size to {side}" if side * side == tokens
               else "use square images so the final grid is square")
        raise TokenLabelError(f"the model's final grid has {tokens} tokens but the targets have {labelled} "
                              f"token labels (label_size {math.isqrt(max(labelled, 0))}): {fix}")
    if not (cls_logits.shape == target.shape[:2] == (aux_logits.shape[0], aux_logits.shape[2])):
        raise TokenLabelError(f"logits (batch, classes) {tuple(cls_logits.shape)} and targets "
                              f"{tuple(target.shape[:2])} differ: set num_classes of the model and the "
                              f"targets alike")
