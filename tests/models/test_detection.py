"""Mask R-CNN and RetinaNet over a GLNet backbone (models/detection.py): the pyramid each builds, the
settings that shrink them, frozen BatchNorm, float32 heads under bf16 autocast, the weights they start from."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from glnet_lightning.lit.optim import no_weight_decay_names
from glnet_lightning.models.backbone import resolve_backbone
from glnet_lightning.models.dense import load_backbone_weights
from glnet_lightning.models.detection import build_detection_model
from glnet_lightning.models.glnet import GLNetArgs
from glnet_lightning.models.official import official_kwargs_to_ours
from testkit import tiny, tiny_named

#: Slim heads for tests: a pyramid of 16 channels, few proposals.
SLIM = {"fpn_channels": 16, "anchor_sizes": [8, 16, 32, 64, 128]}
SLIM_MASKRCNN = {**SLIM, "box_head_size": 32, "mask_head_channels": 8, "mask_head_convs": 2,
                 "box_batch_size_per_image": 16, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                 "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50}


def _detector(kind: str, **edits):
    settings = SLIM_MASKRCNN if kind == "maskrcnn" else SLIM
    return build_detection_model(kind, resolve_backbone("glnet_4g", **tiny_named()), 4, min_size=64, max_size=96,
                                 **{**settings, **edits})


def _images_and_targets():
    """Two images of odd sizes; the second without objects."""
    images = [torch.rand(3, 50, 70), torch.rand(3, 61, 45)]
    masks = torch.zeros(2, 50, 70, dtype=torch.uint8)
    masks[0, 10:30, 10:40] = 1
    masks[1, 5:45, 45:65] = 1
    targets = [{"boxes": torch.tensor([[10.0, 10, 40, 30], [45, 5, 65, 45]]), "labels": torch.tensor([1, 3]),
                "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 61, 45, dtype=torch.uint8)}]
    return images, targets


@pytest.mark.parametrize("kind, losses", [
    ("maskrcnn", {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}),
    ("retinanet", {"classification", "bbox_regression"}),
])
def test_trains_every_part_and_detects_in_the_images_own_pixels(kind, losses):
    model = _detector(kind)
    images, targets = _images_and_targets()
    found = model(images, targets)
    assert set(found) == losses and all(torch.isfinite(v) for v in found.values())
    sum(found.values()).backward()
    # every part learns from one batch (DDP needs no find_unused_parameters)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []

    model.eval()
    with torch.no_grad():
        detections = model(torch.stack([images[0], images[0]]))  # a (B, 3, H, W) batch is accepted too
    assert len(detections) == 2
    for output in detections:
        boxes = output["boxes"]
        assert boxes.shape[1] == 4 and (boxes[:, 2] <= 70).all() and (boxes[:, 3] <= 50).all()
        assert ((output["labels"] >= 1) & (output["labels"] < 4)).all()
        if kind == "maskrcnn":
            assert output["masks"].shape[1:] == (1, 50, 70)


def test_the_pyramids_mask_rcnn_from_stride_4_retinanet_from_stride_8_with_p6_p7_from_the_last_stage():
    x = torch.rand(1, 3, 128, 128)
    mask_rcnn = _detector("maskrcnn")
    pyramid = mask_rcnn.backbone(x)
    assert {k: v.shape[-1] for k, v in pyramid.items()} == {"0": 32, "1": 16, "2": 8, "3": 4, "pool": 2}
    # RetinaNet's P6 reads the last stage (64 channels here, as wide as the pyramid: torchvision alone would take P5)
    retinanet = _detector("retinanet", fpn_channels=tiny()["dims"][-1])
    pyramid = retinanet.backbone(x)
    assert {k: v.shape[-1] for k, v in pyramid.items()} == {"0": 16, "1": 8, "2": 4, "p6": 2, "p7": 1}
    assert all(v.shape[1] == 64 for v in pyramid.values())
    seen = []
    retinanet.backbone.fpn.extra_blocks.block.p6.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    last_stage = retinanet.backbone.body(x)[-1]
    retinanet.backbone(x)
    torch.testing.assert_close(seen[0], last_stage)


def test_retinanets_extra_levels_stay_float32_under_bf16_and_their_gradients_finite():
    """P6 / P7 in float32 (models/detection.py): a bf16 conv over P6's 1 x 1 map (a 64 px image) gives NaN
    weight gradients now and then on AVX-512 CPUs, which the next step spreads to every weight."""
    retinanet = _detector("retinanet").train()
    fpn = retinanet.backbone
    for _ in range(20):
        fpn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fpn.autocast_dtype = torch.bfloat16
            pyramid = fpn(torch.rand(2, 3, 64, 64))
        fpn.autocast_dtype = None
        assert pyramid["p6"].shape[-2:] == (1, 1) and pyramid["p7"].shape[-2:] == (1, 1)
        sum((level * torch.randn_like(level)).sum() for level in pyramid.values()).backward()
        extra = fpn.fpn.extra_blocks.block
        assert all(torch.isfinite(p.grad).all() for p in extra.parameters())
        assert extra.p6.weight.grad.dtype == torch.float32


def test_slim_settings_reach_the_heads_and_foreign_ones_are_refused():
    model = _detector("maskrcnn")
    assert model.roi_heads.box_head.fc6.out_features == 32
    assert [m.out_channels for m in model.roi_heads.mask_head.modules() if isinstance(m, nn.Conv2d)] == [8, 8]
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    assert model.rpn._post_nms_top_n == {"training": 50, "testing": 50}
    assert model.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert model.transform.min_size == (64,) and model.transform.max_size == 96
    with pytest.raises(ValueError, match="detector setting\(s\) mask_head_channels: maskrcnn only, kind retinanet has no such part"):
        _detector("retinanet", mask_head_channels=8)
    with pytest.raises(ValueError, match="kind='yolo'"):
        build_detection_model("yolo", "glnet_stl", 4)


@pytest.mark.parametrize("frozen", [True, False])
def test_batchnorm_frozen_or_trained_by_the_setting(frozen):
    model = _detector("maskrcnn", freeze_batchnorm=frozen)
    norms = model.backbone.batchnorms()
    assert norms, "the tiny glnet_4g has BatchNorm layers (stem and transitions)"
    before = [n.running_mean.clone() for n in norms]
    model.train()
    images, targets = _images_and_targets()
    sum(model(images, targets).values()).backward()
    changed = [not torch.equal(b, n.running_mean) for b, n in zip(before, norms)]
    assert all(n.training != frozen for n in norms)
    assert all(c != frozen for c in changed)
    assert all((n.weight.grad is None) == frozen for n in norms)


def test_under_bf16_autocast_the_backbone_runs_in_bf16_and_the_heads_in_float32():
    model = _detector("maskrcnn").eval()
    dtypes = {}

    def record(name):
        def hook(module, inputs, out):
            dtypes[name] = (out[1] if isinstance(out, tuple) else out).dtype
        return hook

    model.backbone.fpn.layer_blocks[0].register_forward_hook(record("fpn"))
    model.rpn.head.conv.register_forward_hook(record("rpn"))
    model.roi_heads.box_predictor.register_forward_hook(record("box"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = model([torch.rand(3, 64, 64)])
    assert dtypes == {"fpn": torch.bfloat16, "rpn": torch.float32, "box": torch.float32}
    assert detections[0]["boxes"].dtype == torch.float32
    assert model.backbone.autocast_dtype is None  # not left set for a later call without autocast


def test_the_backbone_starts_from_reference_weights_and_reproduces_its_stage_outputs(conformance, tmp_path):
    """The published layout's weights (a conformance fixture of the reference implementation) loaded into the
    detector's backbone give the reference's stage outputs (within 1e-4)."""
    fixture = torch.load(conformance / "g4_tiny.pt", weights_only=False)
    settings = official_kwargs_to_ours(**fixture["official_kwargs"])
    del settings["num_classes"]
    torch.save({"model": fixture["state_dict"]}, tmp_path / "published.pth")
    model = build_detection_model("maskrcnn", GLNetArgs(**settings), 4, min_size=64, max_size=64, **SLIM_MASKRCNN)
    line = load_backbone_weights(model.backbone.body, tmp_path / "published.pth")
    assert "published.pth" in line and "not used for dense prediction: head" in line
    model.eval()
    with torch.no_grad():
        stages = model.backbone.body(fixture["input"])
    for ours, reference in zip(stages, fixture["stage_outputs"], strict=True):
        assert (ours - reference).abs().max().item() <= 1e-4 * max(1.0, reference.abs().max().item())


def test_the_backbones_no_decay_parameters_keep_their_names_in_the_detector():
    model = build_detection_model("retinanet", resolve_backbone("glnet_stl", **tiny()), 4, **SLIM)
    names = no_weight_decay_names(model)
    parameters = dict(model.named_parameters())
    assert names and all(name in parameters for name in names)
    assert {name.rsplit(".", 1)[1] for name in names} <= {"tau", "slots", "rel_pos_bias"}
