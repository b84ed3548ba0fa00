"""The token-labeling models (issue 27): glnet_4g_tklb / glnet_9g_tklb in timm, their token head, MixToken's
training forward, the published layouts and timm's feature API. Agreement with the reference is in
test_conformance.py, parameter counts in test_named_models.py, fx / TorchScript in test_timm_parity.py."""
from __future__ import annotations

import logging
from unittest import mock

import pytest
import timm
import torch

import glnet_lightning  # noqa: F401  (registers the models)
from glnet_lightning.models import GLNet, WeightsError, resolve_backbone
from glnet_lightning.models.glnet import glnet_4g_tklb, mix_token_box
from glnet_lightning.models.weights import load_weights
from testkit import published_state_dict, tiny_named

TKLB = ["glnet_4g_tklb", "glnet_9g_tklb"]
SIZE = 128  # stem output 32 x 32, final grid 4 x 4


def tiny_tklb(**edits) -> GLNet:
    return timm.create_model("glnet_4g_tklb", **tiny_named(**{"num_classes": 5, **edits}))


def test_the_models_follow_timm_token_labeling_conventions():
    model = tiny_tklb()
    assert model.use_aux_head and model.use_mix_token and model.pooling_scale == 8
    assert model.aux_head.in_features == model.num_features and model.aux_head.out_features == 5
    assert model.pretrained_cfg["classifier"] == ("head", "aux_head")
    assert "glnet_4g_tklb" in timm.list_models("glnet_*") and "glnet_9g_tklb" in timm.list_models("glnet_*")


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
@pytest.mark.parametrize("name", TKLB)
def test_published_layout_loads_strictly_through_timm(conformance, name, tmp_path):
    """Keys and shapes only (the meta device): every key of the published file, nothing missing, strict."""
    path = tmp_path / f"{name}.pth"
    torch.save(published_state_dict(conformance, name, values="zeros"), path)
    original = torch.nn.Module.load_state_dict
    with mock.patch.object(torch.nn.Module, "load_state_dict", autospec=True, side_effect=original) as load, \
            torch.device("meta"):
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    (loaded, state), kwargs = load.call_args
    assert loaded is model and kwargs["strict"] is True
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.aux_head.weight.shape == (1000, model.num_features)


@pytest.mark.parametrize("file_model, wrong_model, message", [
    ("glnet_4g_tklb", "glnet_4g", r"unexpected key\(s\): aux_head.bias \[1000\], aux_head.weight .*"
                                  r"fit timm.create_model\('glnet_4g_tklb'"),
    ("glnet_9g_tklb", "glnet_4g_tklb", r"of another shape: .*fit timm.create_model\('glnet_9g_tklb'"),
])
def test_a_published_token_labeling_file_is_recognised(conformance, tmp_path, file_model, wrong_model, message):
    torch.save(published_state_dict(conformance, file_model, values="zeros"), tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=message), torch.device("meta"):
        timm.create_model(wrong_model, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")))


def test_plain_weights_start_a_token_labeling_model_with_a_fresh_token_head(tmp_path, caplog):
    """GLNet-4G weights fine-tuned with token labeling: everything loads but the head the file lacks."""
    plain = timm.create_model("glnet_4g", **tiny_named(num_classes=5)).state_dict()
    torch.save(plain, tmp_path / "g4.pth")
    torch.manual_seed(0)
    fresh = tiny_tklb().aux_head.weight
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO):
        model = timm.create_model("glnet_4g_tklb", pretrained=True, **tiny_named(num_classes=5),
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "g4.pth")))
    assert "aux_head re-initialised: the file has no aux_head, the model 5" in caplog.text
    assert torch.equal(model.aux_head.weight, fresh)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in plain.items())
    again = tiny_tklb()
    note = load_weights(again, tmp_path / "g4.pth")
    assert note.endswith("aux_head re-initialised: the file has no aux_head, the model 5")
    assert torch.equal(again.head.weight, plain["head.weight"])


def test_another_class_count_replaces_both_heads(tmp_path):
    torch.save(tiny_tklb().state_dict(), tmp_path / "w.pth")
    model = timm.create_model("glnet_4g_tklb", pretrained=True, **tiny_named(num_classes=3),
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")))
    assert model.head.out_features == model.aux_head.out_features == 3
    note = load_weights(tiny_tklb(num_classes=3), tmp_path / "w.pth")
    assert note.endswith("head and aux_head re-initialised: the file has 5 classes, the model 3")


# ------------------------------------------------------------------------------ outputs
@torch.no_grad()
def test_eval_output_is_class_logits_plus_half_the_best_token():
    model = tiny_tklb().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    cls_logits, aux_logits, bbox = model.forward_train(x)
    assert bbox == (0, 0, 0, 0) and aux_logits.shape == (2, 16, 5)
    torch.testing.assert_close(model(x), cls_logits + 0.5 * aux_logits.max(dim=1).values, rtol=0, atol=1e-6)
    features = model.forward_features(x)
    tokens = features.flatten(2).transpose(1, 2)  # row-major pixels
    torch.testing.assert_close(aux_logits, model.aux_head(tokens), rtol=0, atol=1e-6)
    assert not torch.allclose(model(x), cls_logits, atol=1e-3)  # the token head does contribute


@torch.no_grad()
def test_a_box_over_the_whole_grid_swaps_whole_images_and_swaps_the_tokens_back():
    """Eval mode (per-image BatchNorm): image i computes image B-1-i, its token logits come back to i."""
    model = tiny_tklb().eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    plain_cls, plain_aux, _ = model.forward_train(x)
    cls_logits, aux_logits, bbox = model.forward_train(x, bbox=(0, 0, 4, 4))
    assert bbox == (0, 0, 4, 4)
    torch.testing.assert_close(cls_logits, plain_cls.flip(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(aux_logits, plain_aux, rtol=0, atol=1e-5)


def test_training_forward_draws_the_box_from_the_generator():
    model = tiny_tklb().train()
    x = torch.randn(4, 3, SIZE, SIZE)
    first = model.forward_train(x, generator=torch.Generator().manual_seed(3))
    again = model.forward_train(x, generator=torch.Generator().manual_seed(3))
    assert first[2] == again[2]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    given = model.forward_train(x, bbox=first[2])  # the drawn box is the one applied
    assert torch.equal(first[0], given[0]) and torch.equal(first[1], given[1])
    generator = torch.Generator().manual_seed(3)
    boxes = {model.forward_train(x, generator=generator)[2] for _ in range(6)}
    assert len(boxes) > 1  # the generator advances
    torch.manual_seed(5)
    from_global = model.forward_train(x)[2]
    torch.manual_seed(5)
    assert model.forward_train(x)[2] == from_global


def test_no_box_without_mix_token_or_outside_training():
    x = torch.randn(2, 3, SIZE, SIZE)
    generator = torch.Generator().manual_seed(0)
    assert tiny_tklb(use_mix_token=False).train().forward_train(x, generator=generator)[2] == (0, 0, 0, 0)
    assert tiny_tklb().eval().forward_train(x, generator=generator)[2] == (0, 0, 0, 0)


def test_drawn_boxes_lie_on_the_grid():
    generator = torch.Generator().manual_seed(0)
    boxes = [mix_token_box((7, 5), generator) for _ in range(300)]
    for bbx1, bby1, bbx2, bby2 in boxes:
        assert 0 <= bbx1 <= bbx2 <= 7 and 0 <= bby1 <= bby2 <= 5
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    assert min(areas) == 0 and max(areas) >= 20  # from empty to almost the whole grid
    assert 0.15 < sum(areas) / len(areas) / 35 < 0.5  # E[1 - lam] = 0.5 before clipping and rounding down
    assert mix_token_box((0, 3), generator) == (0, 0, 0, 0)


def test_forward_train_needs_the_token_head():
    model = timm.create_model("glnet_4g", **tiny_named(num_classes=5))
    with pytest.raises(ValueError, match="use_aux_head=True"):
        model.forward_train(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("settings, message", [
    (dict(use_aux_head=False, use_mix_token=True), "use_mix_token=True needs use_aux_head=True"),
    (dict(pooling_scale=4), "pooling_scale=4 does not fit the network: its stem output is 8x"),
])
def test_inconsistent_token_labeling_settings_say_what_to_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        GLNet(**tiny_named(**settings))


# ------------------------------------------------------------------------------ timm API and description
def test_reset_classifier_resets_both_heads():
    model = tiny_tklb().eval()
    model.reset_classifier(7)
    assert model.head.out_features == model.aux_head.out_features == 7
    model.reset_classifier(0)
    assert model.aux_head is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_features(x).mean(dim=(2, 3)))


@torch.no_grad()
def test_features_only_and_intermediates_leave_the_heads_out():
    x = torch.randn(1, 3, 96, 96)
    torch.manual_seed(0)
    reference = tiny_tklb().eval()
    torch.manual_seed(0)  # the same initialisation: the same class count (the heads' constructors draw too)
    features = timm.create_model("glnet_4g_tklb", features_only=True, **tiny_named(num_classes=5)).eval()
    assert features.model.aux_head is None and isinstance(features.model.head, torch.nn.Identity)
    maps = features(x)
    expected = reference.forward_intermediates(x, intermediates_only=True)
    assert len(maps) == 4 and all(torch.equal(a, b) for a, b in zip(maps, expected))
    final, _ = reference.forward_intermediates(x)
    assert torch.equal(final, reference.forward_features(x))


def test_the_description_builds_and_records_the_token_labeling_model():
    description = resolve_backbone("glnet_4g_tklb", **tiny_named())
    assert description == glnet_4g_tklb(**tiny_named())
    assert description.settings()["use_aux_head"] is True and description.settings()["use_mix_token"] is True
    assert resolve_backbone(description.describe()) == description
    model = description.build(num_classes=5)
    assert model.use_aux_head and model.aux_head.out_features == 5
    assert model.pretrained_cfg["classifier"] == ("head", "aux_head")
    plain = resolve_backbone("glnet_4g", use_aux_head=True, **tiny_named()).build(num_classes=5)
    assert plain.aux_head is not None and plain.pretrained_cfg["classifier"] == ("head", "aux_head")
