"""The segmentation models (models/segmentation.py): smp's FPN / UPerNet decoders over the GLNet features, any
input size, the auxiliary head, mmseg's sliding windows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glnet_lightning.lit.optim import no_weight_decay_names
from glnet_lightning.models.backbone import resolve_backbone
from glnet_lightning.models.segmentation import (SemanticFPNHead, UperNetHead, _windows, build_segmentation_model,
                                                 head_settings, slide_inference)
from testkit import tiny_named

#: Head widths small enough for a test (GroupNorm(32) needs the FPN towers in multiples of 32).
SMALL = {"semfpn": {"pyramid_channels": 32, "segmentation_channels": 32},
         "upernet": {"channels": 32, "aux_channels": 16}}


def _model(head: str, num_classes: int = 5):
    return build_segmentation_model(head, resolve_backbone("glnet_4g", **tiny_named()), num_classes, **SMALL[head])


@pytest.mark.parametrize("head", ["semfpn", "upernet"])
def test_any_input_size_gives_logits_of_that_size_as_if_padded_outside(head):
    model = _model(head).eval()
    x = torch.randn(2, 3, 61, 83)  # neither side a multiple of 32
    with torch.no_grad():
        logits = model(x)
        padded = model(F.pad(x, (0, 96 - 83, 0, 64 - 61)))  # already a multiple: no padding inside
    assert logits.shape == (2, 5, 61, 83)
    # padding inside = zero padding outside, then the logits of the padding cut off
    torch.testing.assert_close(logits, padded[..., :61, :83])


@pytest.mark.parametrize("head, has_aux", [("semfpn", False), ("upernet", True)])
def test_the_auxiliary_head_runs_in_training_only(head, has_aux):
    model = _model(head)
    logits, aux = model.train().forward_with_aux(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5, 64, 64)
    assert (aux is not None) == has_aux and model.aux_weight == (0.4 if has_aux else 0.0)
    if has_aux:
        assert aux.shape == logits.shape
        aux.float().mean().backward()  # the aux loss trains the backbone through stage 3
        assert model.backbone.model.stages[2].blocks[0].mlp.fc1.weight.grad is not None
    assert model.eval().forward_with_aux(torch.randn(1, 3, 64, 64))[1] is None


def test_default_widths_are_mmseg_s():
    channels = resolve_backbone("glnet_4g", **tiny_named())
    upernet = build_segmentation_model("upernet", channels, 150)
    stage3 = upernet.backbone.feature_info.channels()[2]
    assert upernet.decoder.fusion_block[0].out_channels == 512  # UPerHead channels
    assert [m.out_channels for m in upernet.aux_head.modules() if isinstance(m, nn.Conv2d)] == [256, 150]
    assert next(m for m in upernet.aux_head.modules() if isinstance(m, nn.Conv2d)).in_channels == stage3
    fpn = build_segmentation_model("semfpn", channels, 150)
    assert fpn.decoder.p5.out_channels == 256 and fpn.classifier[0].in_channels == 128
    assert build_segmentation_model("upernet", channels, 150, aux_weight=0.0).aux_head is None


def test_weight_decay_exclusions_keep_the_backbone_s_names():
    model = _model("semfpn")
    names = dict(model.named_parameters())
    excluded = no_weight_decay_names(model)
    assert excluded and all(name in names for name in excluded)
    assert all(name.endswith("clustering.tau") for name in excluded)


@pytest.mark.parametrize("head, settings, message", [
    ("upernt", {}, "unknown segmentation head 'upernt' (did you mean upernet?)"),
    ("upernet", {"aux_weigth": 0.2}, "upernet has no setting 'aux_weigth' (did you mean aux_weight?)"),
    ("semfpn", {"segmentation_channels": 48}, "segmentation_channels a multiple of 32"),
    ("semfpn", {"dropout": 1.0}, "dropout must be in [0, 1)"),
])
def test_bad_head_settings_say_what_to_write(head, settings, message):
    with pytest.raises(ValueError) as error:
        head_settings(head, settings)
    assert message in str(error.value)


def test_head_settings_keep_the_defaults_they_do_not_change():
    assert head_settings("upernet", {"channels": 64}) == UperNetHead(channels=64, aux_channels=256)
    assert head_settings("semfpn") == SemanticFPNHead()


def test_sliding_windows_are_mmseg_s():
    assert _windows(683, 512, 341) == [(0, 512), (171, 683)]  # the last window flush with the end
    assert _windows(512, 512, 341) == [(0, 512)]
    assert _windows(300, 512, 341) == [(0, 300)]  # smaller than the crop: one window, the whole side
    assert _windows(1200, 512, 341) == [(0, 512), (341, 853), (682, 1194), (688, 1200)]


def test_slide_inference_averages_overlapping_windows():
    pointwise = nn.Conv2d(3, 4, 1)  # position-independent: every window agrees with the whole image
    x = torch.randn(2, 3, 70, 45)
    with torch.no_grad():
        torch.testing.assert_close(slide_inference(pointwise, x, 4, crop=32, stride=20), pointwise(x))
    # a model that answers each window with the column where it starts: a pixel gets the mean over the windows
    # covering it (along 45 px: windows at columns 0 and 13)
    columns = torch.arange(45.0).expand(1, 1, 70, 45)
    starts = slide_inference(lambda w: w[..., :1, :1].expand_as(w), columns, 1, crop=32, stride=20)
    assert starts[0, 0, 0, [5, 20, 40]].tolist() == [0.0, 6.5, 13.0]
    with pytest.raises(ValueError, match="stride <= crop"):
        slide_inference(pointwise, x, 4, crop=16, stride=20)
