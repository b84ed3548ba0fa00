"""Mask R-CNN and RetinaNet (torchvision's) over a GLNet backbone with torchvision's feature pyramid.

Why torchvision's detectors: mmdet, where the paper's setups come from (docs/design.md, section 7), has no
builds for current PyTorch; torchvision's MaskRCNN / RetinaNet take any backbone that returns named feature
maps and has ``out_channels``, which :class:`FPNBackbone` is. Heads, anchors and losses stay torchvision's
(the defaults of its FPN detectors); what a small demo must shrink (the feature-pyramid width, the box- and
mask-head widths, the sampled proposals) is a field of :class:`DetectorSettings`, not a patch.

Mixed precision: only the backbone and the feature pyramid run under autocast; the heads run in float32
(:class:`_Float32Heads`). torchvision decodes box deltas in the dtype of the head's output
(``BoxCoder.decode`` casts the anchors to it): in bfloat16 an 800 x 1333 image's coordinates would be
rounded to 4-8 px before NMS and RoIAlign. (RoIAlign and NMS themselves have float32 autocast kernels.)
RetinaNet's extra levels P6 / P7 (strides 64 and 128: a few hundred pixels) also run in float32
(:class:`_Float32Levels`): on CPUs with AVX-512, torch 2.14's bfloat16 convolution returns NaN weight
gradients now and then when its input map is 1 x 1 (P6 of an image under ~100 px), which turns the
whole network into NaN one step later; in float32 it is exact and costs nothing measurable.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from .dense import build_dense_backbone

__all__ = ["DETECTOR_KINDS", "DetectorSettings", "FPNBackbone", "GLNetMaskRCNN", "GLNetRetinaNet",
           "build_detection_model"]

#: ``kind`` -> the backbone stages the pyramid is built on (Mask R-CNN: all four, strides 4-32; RetinaNet:
#: from stage 2, strides 8-32, plus P6 / P7 computed from the last stage's output, as mmdet's ``on_input``).
DETECTOR_KINDS: dict[str, tuple[int, ...]] = {"maskrcnn": (0, 1, 2, 3), "retinanet": (1, 2, 3)}


@dataclass
class DetectorSettings:
    """The detector's parts besides the backbone: torchvision's defaults for its FPN detectors, renamed
    where torchvision has no argument for them (the head widths). The ``mask_*``, ``rpn_*``, ``box_*``
    fields are Mask R-CNN's, ``topk_candidates`` RetinaNet's; changing one the other kind does not have is
    an error.

    Args:
        fpn_channels: width of the feature pyramid (and so of every head's input).
        anchor_sizes: anchor side per pyramid level (5 levels), in pixels of the resized image; RetinaNet
            adds the scales x 2^(1/3) and x 2^(2/3) of each. Smaller for data sets of small images.
        score_thresh / nms_thresh / detections_per_img: what the detector keeps of its detections.
        rpn_pre_nms_top_n_train / _test, rpn_post_nms_top_n_train / _test: proposals kept per level before
            NMS and per image after it.
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss.
        box_batch_size_per_image: proposals sampled per image for the box and mask losses (25 % positive).
        box_head_size: width of the box head's two fully connected layers (torchvision's
            ``representation_size``).
        mask_head_channels / mask_head_convs: the mask head's 3x3 convolutions (channels, count).
        topk_candidates: RetinaNet's candidates per level before NMS.
    """

    fpn_channels: int = 256
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_head_size: int = 1024
    mask_head_channels: int = 256
    mask_head_convs: int = 4
    topk_candidates: int = 1000

    def __post_init__(self) -> None:
        self.anchor_sizes = [int(s) for s in self.anchor_sizes]
        if len(self.anchor_sizes) != 5 or min(self.anchor_sizes) < 1:
            raise ValueError(f"anchor_sizes: one positive size per pyramid level (5), got {self.anchor_sizes}")
        counts = {k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, int) and k != "anchor_sizes"}
        bad = [k for k, v in counts.items() if v < 1]
        if bad:
            raise ValueError(f"detector settings {bad} must be >= 1, got {[counts[k] for k in bad]}")

    def changed(self) -> set[str]:
        """The fields that differ from the defaults."""
        default = DetectorSettings()
        return {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(default, f.name)}


#: Fields one kind of detector has and the other not.
_ONLY = {"maskrcnn": {"rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                      "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
                      "box_head_size", "mask_head_channels", "mask_head_convs"},
         "retinanet": {"topk_candidates"}}


class _Float32Levels(ExtraFPNBlock):
    """An extra-levels block (P6 / P7) computed in float32 whatever the autocast dtype (module doc)."""

    def __init__(self, block: ExtraFPNBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        with torch.autocast(results[0].device.type, enabled=False):
            return self.block([r.float() for r in results], [f.float() for f in x], names)


class FPNBackbone(nn.Module):
    """The dense backbone's feature maps through torchvision's ``FeaturePyramidNetwork``: the ``backbone``
    a torchvision detector takes (``forward(images) -> {name: map}``, ``out_channels``).

    ``freeze_batchnorm`` keeps the backbone's BatchNorm layers as ``init_weights`` gave them: running
    statistics not updated (eval mode even in training) and scale / shift not trained. That is the usual
    choice when fine-tuning from classification weights with 2 images per GPU, whose batch statistics are
    too noisy; with it off the layers train as in classification (add ``--trainer.sync_batchnorm true``
    under DDP to compute their statistics over all GPUs).
    """

    def __init__(self, body: nn.Module, out_channels: int, extra_blocks: ExtraFPNBlock,
                 freeze_batchnorm: bool = True) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels
        self.freeze_batchnorm = bool(freeze_batchnorm)
        #: the autocast dtype of the caller (set by :class:`_Float32Heads` for each call), None: float32
        self.autocast_dtype: torch.dtype | None = None
        for norm in self.batchnorms():
            norm.requires_grad_(not self.freeze_batchnorm)

    def batchnorms(self) -> list[nn.Module]:
        return [m for m in self.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> FPNBackbone:
        super().train(mode)
        if self.freeze_batchnorm:
            for norm in self.batchnorms():
                norm.eval()
        return self

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        dtype = self.autocast_dtype
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            features = self.body(images)
            pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
        return OrderedDict((name, f.float()) for name, f in pyramid.items())


class _Float32Heads:
    """Detector mix-in: ``forward`` takes a list of (3, H, W) images in [0, 1] or one (B, 3, H, W) batch;
    under autocast only the backbone and pyramid use the autocast dtype, the heads run in float32 (module
    doc)."""

    backbone: FPNBackbone

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None):
        images = list(images)
        device = images[0].device.type
        self.backbone.autocast_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        try:
            with torch.autocast(device, enabled=False):
                return super().forward([image.float() for image in images], targets)
        finally:
            self.backbone.autocast_dtype = None


class GLNetMaskRCNN(_Float32Heads, MaskRCNN):
    """torchvision's ``MaskRCNN`` with the float32 heads of :class:`_Float32Heads`."""


class GLNetRetinaNet(_Float32Heads, RetinaNet):
    """torchvision's ``RetinaNet`` with the float32 heads of :class:`_Float32Heads`."""


def _min_size(min_size: int | Sequence[int]) -> tuple[int, ...]:
    sizes = (int(min_size),) if isinstance(min_size, (int, float)) else tuple(int(s) for s in min_size)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"min_size must be a positive side or a list of them, got {min_size!r}")
    return sizes


def build_detection_model(kind: str, backbone: Any, num_classes: int, drop_path_rate: float = 0.0, *,
                          min_size: int | Sequence[int] = 800, max_size: int = 1333, freeze_batchnorm: bool = True,
                          **settings: Any) -> GLNetMaskRCNN | GLNetRetinaNet:
    """A ``kind`` (``maskrcnn`` / ``retinanet``) detector over ``backbone`` (any description
    ``resolve_backbone`` reads) with ``num_classes`` classes counting the background (torchvision's
    convention: COCO's 80 categories are ``num_classes=81``, labels 1..80).

    ``min_size`` / ``max_size``: the short side images are resized to and the cap of the long side
    (torchvision's transform, inside the model). A list of short sides is multi-scale training: each
    training image takes one at random, evaluation the last. ``settings``: fields of :class:`DetectorSettings`.
    """
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {list(DETECTOR_KINDS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a detector needs the background and at least one category")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    heads = DetectorSettings(**settings)
    other = next(k for k in DETECTOR_KINDS if k != kind)
    foreign = sorted(heads.changed() & _ONLY[other])
    if foreign:
        raise ValueError(f"detector setting(s) {', '.join(foreign)}: {other} only, kind {kind} has no such part")
    body = build_dense_backbone(backbone, drop_path_rate, out_indices=DETECTOR_KINDS[kind])
    channels = heads.fpn_channels
    common = dict(min_size=_min_size(min_size), max_size=int(max_size))
    if kind == "retinanet":
        extra = LastLevelP6P7(body.feature_info.channels()[-1], channels)
        extra.use_P5 = False  # P6 from the last stage's output (mmdet's on_input), even when the widths match
        fpn = FPNBackbone(body, channels, _Float32Levels(extra), freeze_batchnorm)
        sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in heads.anchor_sizes)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        return GLNetRetinaNet(fpn, num_classes, anchor_generator=anchors, score_thresh=heads.score_thresh,
                              nms_thresh=heads.nms_thresh, detections_per_img=heads.detections_per_img,
                              topk_candidates=heads.topk_candidates, **common)
    fpn = FPNBackbone(body, channels, LastLevelMaxPool(), freeze_batchnorm)
    anchors = AnchorGenerator(tuple((s,) for s in heads.anchor_sizes), ((0.5, 1.0, 2.0),) * len(heads.anchor_sizes))
    box_head = TwoMLPHead(channels * 7 * 7, heads.box_head_size)  # after RoIAlign to 7 x 7
    mask_layers = (heads.mask_head_channels,) * heads.mask_head_convs
    return GLNetMaskRCNN(
        fpn, None, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=heads.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=heads.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=heads.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=heads.rpn_post_nms_top_n_test, rpn_batch_size_per_image=heads.rpn_batch_size_per_image,
        box_head=box_head, box_predictor=FastRCNNPredictor(heads.box_head_size, num_classes),
        box_score_thresh=heads.score_thresh, box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_img, box_batch_size_per_image=heads.box_batch_size_per_image,
        mask_head=MaskRCNNHeads(channels, mask_layers, 1),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes), **common)
