"""Semantic segmentation over any backbone: the paper's two ADE20K heads on the stride 4-32 GLNet features.

Why segmentation_models_pytorch's decoders: mmcv / mmseg, where these heads come from, have no builds for
current PyTorch; smp is kept up to date and its FPN and UPerNet decoders are the same designs. We give them
our own backbone (``models/dense.py``: timm's ``features_only`` GLNet) instead of an smp encoder, set the
channel counts to mmseg's (256/128 for Semantic FPN, 512 for UperNet, 256 for its auxiliary FCN head) and
add what smp leaves out: the auxiliary head, the dropout before UperNet's classifier, and inputs of any
size (padded to a multiple of 32 inside, logits cropped back, so ADE20K's odd image sizes need no care).

What still differs from mmseg's heads, and why:
- normalisation: smp's Semantic FPN towers use GroupNorm(32) where mmseg uses SyncBN (GroupNorm does not
  depend on the 2-image per-GPU batch); UperNet keeps BatchNorm, which the ADE20K configs synchronise across
  GPUs (``trainer.sync_batchnorm``) as mmseg's SyncBN does;
- Semantic FPN: smp's pyramid has no 3x3 output conv per level after the top-down sum (mmseg's FPN neck has
  four, 2.4 M parameters at 256 channels); its towers upsample with ``align_corners=True``;
- UperNet: the same parts and widths as mmseg's ``UPerHead`` (pyramid pooling scales 1, 2, 3, 6), but smp
  LayerNorm-normalises each backbone stage before the decoder;
- the auxiliary FCN head (stage 3, one 3x3 conv, BatchNorm, dropout, 1x1 classifier) is ours on smp's parts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from glnet_lightning.errors import did_you_mean

from .dense import build_dense_backbone

__all__ = ["HEADS", "SemanticFPNHead", "UperNetHead", "SegmentationModel",
           "build_segmentation_model", "head_settings", "slide_inference"]

#: Sides of the input are padded to a multiple of this (the backbone's total stride).
SIZE_DIVISOR = 32


@dataclass(frozen=True)
class SemanticFPNHead:
    """Semantic FPN (Kirillov et al. 2019) as mmseg's ``fpn_r50`` config sizes it.

    Args:
        pyramid_channels: width of the feature pyramid (mmseg's FPN neck ``out_channels``).
        segmentation_channels: width of the per-level 3x3 conv towers that are summed at stride 4 (a
            multiple of 32: smp normalises them with ``GroupNorm(32, ...)``).
        dropout: spatial dropout before the classifier.
    """

    pyramid_channels: int = 256
    segmentation_channels: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pyramid_channels < 1 or self.segmentation_channels < 32 or self.segmentation_channels % 32:
            raise ValueError(f"semfpn: need pyramid_channels >= 1 and segmentation_channels a multiple of 32 "
                             f"(GroupNorm with 32 groups), got {self.pyramid_channels}, {self.segmentation_channels}")
        _check_dropout(self.dropout)


@dataclass(frozen=True)
class UperNetHead:
    """UperNet (Xiao et al. 2018: pyramid pooling on stage 4 + FPN fusion) as mmseg's ``upernet`` configs size it,
    with the auxiliary FCN head on stage 3 that only training uses.

    Args:
        channels: width of the pyramid pooling module, the FPN and the fusion conv (mmseg: 512).
        dropout: spatial dropout before the classifier.
        aux_channels: width of the auxiliary FCN head's 3x3 conv (mmseg: 256).
        aux_weight: weight of the auxiliary loss (mmseg: 0.4); 0 builds no auxiliary head.
    """

    channels: int = 512
    dropout: float = 0.1
    aux_channels: int = 256
    aux_weight: float = 0.4

    def __post_init__(self) -> None:
        if self.channels < 1 or self.aux_channels < 1 or self.aux_weight < 0:
            raise ValueError(f"upernet: need channels >= 1, aux_channels >= 1 and aux_weight >= 0, got {self}")
        _check_dropout(self.dropout)


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")


HEADS: dict[str, type] = {"semfpn": SemanticFPNHead, "upernet": UperNetHead}

def head_settings(head: str, settings: dict[str, Any] | None = None) -> SemanticFPNHead | UperNetHead:
    """The settings of ``head`` (``semfpn`` / ``upernet``) with ``settings`` changed; a wrong name says which exist."""
    if head not in HEADS:
        raise ValueError(f"unknown segmentation head {head!r}{did_you_mean(head, HEADS)}; choose one of {list(HEADS)}")
    cls = HEADS[head]
    names = [f.name for f in dataclasses.fields(cls)]
    for key in settings or {}:
        if key not in names:
            raise ValueError(f"head_settings: {head} has no setting {key!r}{did_you_mean(key, names)}; "
                             f"its settings are {names}")
    return cls(**(settings or {}))


def _fcn_head(in_channels: int, channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """mmseg's auxiliary ``FCNHead`` with ``num_convs=1``: 3x3 conv + BN + ReLU, dropout, 1x1 classifier."""
    from segmentation_models_pytorch.base.modules import Conv2dReLU

    return nn.Sequential(Conv2dReLU(in_channels, channels, kernel_size=3, padding=1, use_norm="batchnorm"),
                         nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, kernel_size=1))


class SegmentationModel(nn.Module):
    """Backbone features -> decoder -> per-pixel class logits at the input's size.

    ``forward(x)`` takes any height and width (padded to a multiple of 32 with zeros, i.e. the mean colour
    after normalisation, and cropped back) and returns ``(B, num_classes, H, W)`` logits;
    :meth:`forward_with_aux` also returns the auxiliary head's logits while training (UperNet).
    """

    #: Inputs are padded to multiples of this inside ``forward`` (an exported graph takes such sides only).
    size_divisor = SIZE_DIVISOR

    def __init__(self, backbone: nn.Module, num_classes: int, settings: SemanticFPNHead | UperNetHead) -> None:
        # imported here: smp is the optional ``dense`` extra, and its import takes a second
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.base import initialization as smp_init
        from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        channels = list(backbone.feature_info.channels())
        if len(channels) != 4:
            raise ValueError(f"a segmentation head needs the 4 stages of the backbone (strides 4-32), got "
                             f"{len(channels)} feature maps")
        self.backbone = backbone
        self.num_classes = num_classes
        self.settings = settings
        self.aux_weight = 0.0
        self.aux_head: nn.Module | None = None
        if isinstance(settings, SemanticFPNHead):
            self.decoder = FPNDecoder(channels, encoder_depth=len(channels), pyramid_channels=settings.pyramid_channels,
                                      segmentation_channels=settings.segmentation_channels, dropout=settings.dropout)
            self.dropout = nn.Identity()  # inside smp's FPN decoder
            decoder_channels = settings.segmentation_channels
        else:
            # smp's UPerNet reads features[2:]: its own encoders also return the stride 1 and 2 maps
            self.decoder = UPerNetDecoder([0, 0, *channels], encoder_depth=len(channels),
                                          decoder_channels=settings.channels)
            self.dropout = nn.Dropout2d(settings.dropout)
            decoder_channels = settings.channels
            if settings.aux_weight > 0:
                self.aux_head = _fcn_head(channels[2], settings.aux_channels, num_classes, settings.dropout)
                self.aux_weight = float(settings.aux_weight)
        self.classifier = SegmentationHead(decoder_channels, num_classes, kernel_size=1)
        smp_init.initialize_decoder(self.decoder)
        smp_init.initialize_head(self.classifier)
        if self.aux_head is not None:
            smp_init.initialize_decoder(self.aux_head)

    @property
    def head(self) -> str:
        return next(name for name, cls in HEADS.items() if isinstance(self.settings, cls))

    def _decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        inputs = features if isinstance(self.settings, SemanticFPNHead) else [None, None, *features]
        return self.classifier(self.dropout(self.decoder(inputs)))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, aux_logits)`` at the input's size; ``aux_logits`` is None without an auxiliary head or
        outside training (it only adds a loss)."""
        height, width = x.shape[-2:]
        padded_height = (height + SIZE_DIVISOR - 1) // SIZE_DIVISOR * SIZE_DIVISOR
        padded_width = (width + SIZE_DIVISOR - 1) // SIZE_DIVISOR * SIZE_DIVISOR
        padded = F.pad(x, (0, padded_width - width, 0, padded_height - height))
        features = self.backbone(padded)
        logits = _to_input(self._decode(features), padded, height, width)
        aux = None
        if self.aux_head is not None and self.training:
            aux = _to_input(self.aux_head(features[2]), padded, height, width)
        return logits, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]


def _to_input(logits: torch.Tensor, padded: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Logits of the padded input upsampled to its size (bilinear, as mmseg's ``resize``), then the padding cut off."""
    logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :height, :width]


def build_segmentation_model(head: str, backbone: Any, num_classes: int, drop_path_rate: float = 0.0,
                             **settings: Any) -> SegmentationModel:
    """``head`` (``semfpn`` / ``upernet``, with :class:`SemanticFPNHead` / :class:`UperNetHead` ``settings``
    changed) over the features of ``backbone`` (any description ``resolve_backbone`` reads)."""
    config = head_settings(head, settings)  # a wrong setting fails before the backbone is built
    return SegmentationModel(build_dense_backbone(backbone, drop_path_rate), num_classes, config)


def _windows(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's sliding windows along one side: start every ``stride``, the last one flush with the end."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, size)
        spans.append((max(end - crop, 0), end))
    return spans


def slide_inference(model: nn.Module, images: torch.Tensor, num_classes: int, crop: int | Sequence[int] = 512,
                    stride: int | Sequence[int] = 341) -> torch.Tensor:
    """Logits of ``images`` from overlapping ``crop`` windows every ``stride`` pixels (mmseg's ``slide`` mode),
    averaged where windows overlap; for images larger than the crop the model was trained on."""
    crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
    stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride
    if min(crop_h, crop_w, stride_h, stride_w) < 1 or stride_h > crop_h or stride_w > crop_w:
        raise ValueError(f"sliding window: need 1 <= stride <= crop, got crop {crop}, stride {stride}")
    batch, _, height, width = images.shape
    logits = images.new_zeros(batch, num_classes, height, width)
    counts = images.new_zeros(1, 1, height, width)
    for top, bottom in _windows(height, crop_h, stride_h):
        for left, right in _windows(width, crop_w, stride_w):
            logits[..., top:bottom, left:right] += model(images[..., top:bottom, left:right])
            counts[..., top:bottom, left:right] += 1
    return logits / counts
