"""The named GLNet family: timm registration, published-checkpoint loading, parameter counts, timm API."""
from __future__ import annotations

import re

import pytest
import timm
import torch

import glnet_lightning  # noqa: F401  (registers the models)
from glnet_lightning.models import MODEL_NAMES, WeightsError
from testkit import published_state_dict, tiny, tiny_named

TINY = tiny(num_classes=3)
# docs/design.md, section 2: parameters in millions at 1000 classes.
# The token-labeling models add a token head: issue 27 gives their counts.
PAPER_PARAMS_M = {"glnet_stl": 30.30, "glnet_stl_paramslot": 30.48, "glnet_4g": 27.00, "glnet_9g": 60.01, "glnet_16g": 106.06,
                  "glnet_4g_tklb": 27.51, "glnet_9g_tklb": 60.78}


def n_params_m(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_all_named_models_are_registered():
    assert set(MODEL_NAMES) <= set(timm.list_models("glnet_*"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_params_match_the_paper(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = timm.create_model(name)
    assert abs(n_params_m(model) - PAPER_PARAMS_M[name]) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_published_layout_loads_strictly(conformance, name, tmp_path):
    source = published_state_dict(conformance, name)
    path = tmp_path / f"{name}.pth"
    torch.save(source, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    # the weights really arrived: the head is copied as is
    assert torch.equal(model.head.weight, source["head.weight"])
    assert torch.equal(model.stages[2].blocks[0].mixer.global_branch.relation.qkv.weight,
                       source["stages.2.blocks.0.relation_mha.in_proj_weight"])
    if "tklb_aux_head.weight" in source:  # the token-labeling models' token head
        assert torch.equal(model.aux_head.weight, source["tklb_aux_head.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("nest", ["model", "state_dict", "model_ema"])
def test_nested_checkpoints_load(conformance, nest, tmp_path):
    source = published_state_dict(conformance, "glnet_stl")
    path = tmp_path / "ckpt.pth"
    torch.save({nest: source, "epoch": 299}, path)
    model = timm.create_model("glnet_stl", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.norm.running_var, source["norm.running_var"])


@pytest.mark.slow
def test_missing_key_in_published_checkpoint_fails_loudly(conformance, tmp_path):
    source = published_state_dict(conformance, "glnet_stl")
    del source["stages.1.blocks.0.slot_scale"]
    torch.save(source, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad.pth do not fit GLNet: 1 missing key\(s\): "
                                         r"stages.1.blocks.0.mixer.global_branch.clustering.tau \[\]"):
        timm.create_model("glnet_stl", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "bad.pth")))


@pytest.mark.slow
def test_pretrained_with_new_classes_and_grayscale_input(conformance, tmp_path):
    source = published_state_dict(conformance, "glnet_stl")
    torch.save(source, tmp_path / "w.pth")
    model = timm.create_model("glnet_stl", pretrained=True, num_classes=10, in_chans=1,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")))
    assert model.head.out_features == 10
    assert torch.allclose(model.stem[0].weight[:, 0], source["downsample_layers.0.0.weight"].sum(1), atol=1e-5)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_own_state_dict_round_trips_through_pretrained_path(tmp_path):
    model = timm.create_model("glnet_stl", **TINY).eval()
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    again = timm.create_model("glnet_stl", **TINY, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "ours.pth"), num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_timm_interface_on_a_small_override():
    sizes = tiny_named(depths=[1, 1, 2, 1], num_slots=9, kernel_size=3)
    model = timm.create_model("glnet_4g", num_classes=5, drop_path_rate=0.2, **sizes).eval()
    width = sizes["dims"][-1]
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    assert cfg["first_conv"] == "stem.0" and cfg["classifier"] == "head"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, width, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, width)
        assert torch.allclose(model.forward_head(feats), model(x))
    model.reset_classifier(11)
    assert model(x).shape == (2, 11)
    model.reset_classifier(0)
    assert model(x).shape == (2, width)
    assert model.stages[0].blocks[0].mixer.local_branch.dwconv.kernel_size == (3, 3)
    drop = [b.drop_path1 for s in model.stages for b in s.blocks]
    assert type(drop[0]).__name__ == "Identity" and drop[-1].drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["glnet_stl", "glnet_4g"])
def test_features_only_gives_four_stage_maps(name):
    model = timm.create_model(name, features_only=True, **tiny_named()).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    subset = timm.create_model(name, features_only=True, out_indices=(1, 3), **tiny_named())
    assert len(subset(torch.randn(1, 3, 64, 64))) == 2


def test_no_weight_decay_names_temperature_and_slots():
    model = timm.create_model("glnet_stl_paramslot", **tiny_named())
    names = model.no_weight_decay()
    assert "stages.0.blocks.0.mixer.global_branch.clustering.tau" in names
    assert "stages.0.blocks.0.mixer.global_branch.slot_init.slots" in names
    assert all(n in dict(model.named_parameters()) for n in names)


def test_grad_checkpointing_gives_same_gradients():
    model = timm.create_model("glnet_stl", **TINY)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for ref, p in zip(reference, model.parameters()):
        assert torch.allclose(ref, p.grad, atol=1e-5)


@pytest.mark.slow
def test_wrong_model_name_for_a_published_checkpoint_says_which_fits(conformance, tmp_path):
    torch.save({"model": published_state_dict(conformance, "glnet_9g")}, tmp_path / "g9.pth")
    with pytest.raises(ValueError, match=r"of another shape: .* in the checkpoint vs .*fit timm.create_model\('glnet_9g'"):
        timm.create_model("glnet_4g", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "g9.pth")))
    torch.save(published_state_dict(conformance, "glnet_stl_paramslot"), tmp_path / "ps.pth")
    with pytest.raises(ValueError, match=r"unexpected key\(s\): .*slot_init.slots.*fit timm.create_model\('glnet_stl_paramslot'"):
        timm.create_model("glnet_stl", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "ps.pth")))


def test_pretrained_file_with_model_and_model_ema_gives_the_raw_model(tmp_path, caplog):
    """As the reference evaluates its published checkpoints (timm alone would take model_ema)."""
    raw, ema = timm.create_model("glnet_stl", **TINY).state_dict(), timm.create_model("glnet_stl", **TINY).state_dict()
    torch.save({"model": raw, "model_ema": ema}, tmp_path / "both.pth")
    with caplog.at_level("INFO"):
        model = timm.create_model("glnet_stl", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "both.pth")),
                                  **TINY)
    assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())
    assert "weights: the raw weights (model) of both.pth" in caplog.text
    assert "state_dict" not in model.pretrained_cfg and model.pretrained_cfg["file"] == str(tmp_path / "both.pth")


def test_pretrained_fit_checkpoint_gives_its_ema(tmp_path):
    """The layout GLNetModule saves (model.-prefixed state_dict, hyper_parameters, EMA beside)."""
    from glnet_lightning.models.weights import EMA_CHECKPOINT_KEY

    raw, ema = timm.create_model("glnet_stl", **TINY).state_dict(), timm.create_model("glnet_stl", **TINY).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in raw.items()}, "hyper_parameters": {"model_name": "glnet_stl"},
                EMA_CHECKPOINT_KEY: ema, "global_step": 7}, tmp_path / "run.ckpt")
    model = timm.create_model("glnet_stl", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "run.ckpt")),
                              **TINY)
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("cfg_argument", ["pretrained_cfg_overlay", "pretrained_cfg"])
def test_pretrained_file_missing_names_the_file(tmp_path, cfg_argument):
    """Either way of naming the file: timm alone raises FileNotFoundError() with no message for pretrained_cfg."""
    missing = tmp_path / "glnet_4g.pth"
    with pytest.raises(WeightsError, match=re.escape(f"pretrained weights file {missing} does not exist: give "
                                                     "pretrained_cfg_overlay=dict(file=...) the path of a published")):
        timm.create_model("glnet_4g", pretrained=True, **{cfg_argument: dict(file=str(missing))})


def test_pretrained_without_a_file_says_where_the_weights_are():
    """No download source is registered (no fake pretrained tag): one line saying how to point at a file."""
    assert set(timm.list_models("glnet_*", include_tags=True)) >= set(MODEL_NAMES)  # untagged: no weights
    assert not [name for name in timm.list_models("glnet_*", include_tags=True) if "." in name]
    with pytest.raises(WeightsError, match=r"^glnet_stl has no weights to download: pass pretrained_cfg_overlay="
                                           r"dict\(file=PATH\) naming a published GLNet checkpoint \(linked from "
                                           r"https://github.com/rayleizhu/GLMix\) or a glnet fit checkpoint$"):
        timm.create_model("glnet_stl", pretrained=True, **TINY)
