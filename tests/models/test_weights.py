"""models/weights.py: every layout we read, one auto|raw|ema choice (the raw ``model`` of a published file, the
EMA of a fit checkpoint), reference names converted, one fit message, timm's loading conventions."""
from __future__ import annotations

import re

import pytest
import timm
import torch

import glnet_lightning  # noqa: F401  (registers the models)
from glnet_lightning.config_edit import parse_model_spec
from glnet_lightning.models.backbone import resolve_backbone
from glnet_lightning.models.glnet import glnet_stl
from glnet_lightning.models.weights import (EMA_CHECKPOINT_KEY, WeightsError, load_weights, mismatch, read_weights,
                                            training_settings)
from testkit import published_state_dict, same, tiny


def tiny_model(**edits):
    """The tiny GLNet with 3 classes (``edits``: other settings or timm arguments)."""
    return timm.create_model("glnet_stl", **tiny(**{"num_classes": 3, **edits}))


@pytest.fixture
def both(tmp_path):
    """A file in the reference training layout: ``model`` and ``model_ema`` with different values."""
    raw, ema = tiny_model().state_dict(), tiny_model().state_dict()
    assert not torch.equal(raw["head.weight"], ema["head.weight"])
    path = tmp_path / "both.pth"
    torch.save({"model": raw, "model_ema": ema, "epoch": 299}, path)
    return path, raw, ema


def test_auto_takes_the_raw_model_of_a_reference_layout_file(both):
    path, raw, ema = both
    for choice, expected, line in [("auto", raw, "the raw weights (model) of both.pth"),
                                   ("raw", raw, "the raw weights (model) of both.pth"),
                                   ("ema", ema, "the EMA weights (model_ema) of both.pth")]:
        weights = read_weights(path, choice)
        assert same(weights.state_dict, expected) and weights.describe() == line


def test_auto_takes_the_ema_of_a_fit_checkpoint(fit_checkpoint):
    raw, ema = fit_checkpoint.raw, fit_checkpoint.ema
    for choice, expected, kind in [("auto", ema, "EMA"), ("ema", ema, "EMA"), ("raw", raw, "raw")]:
        weights = read_weights(fit_checkpoint.path, choice)
        assert same(weights.state_dict, expected)
        assert weights.describe() == f"the {kind} weights of {fit_checkpoint.path.name} (step 2)"
        assert weights.hyper_parameters["backbone"] == glnet_stl(**tiny()).describe()


def test_every_layout_gives_our_names(conformance, tmp_path):
    state = tiny_model().state_dict()
    layouts = {"plain": state, "state_dict": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
               "state_dict_ema": {"state_dict_ema": state, "optimizer": {}}}
    for name, content in layouts.items():
        torch.save(content, tmp_path / f"{name}.pth")
        assert same(read_weights(tmp_path / f"{name}.pth").state_dict, state), name
    fixture = torch.load(conformance / "stl_tiny.pt", weights_only=False)  # reference names
    torch.save({"model": fixture["state_dict"]}, tmp_path / "reference.pth")
    converted = read_weights(tmp_path / "reference.pth").state_dict
    model = timm.create_model("glnet_stl", depths=[1, 1, 2, 1], dims=[32, 64, 96, 128], num_slots=16, num_classes=10)
    load_weights(model, tmp_path / "reference.pth")
    with torch.no_grad():
        logits = model.eval()(fixture["input"])
    assert "stem.0.weight" in converted and (logits - fixture["logits"]).abs().max() <= 1e-4 * fixture["logits"].abs().max()


def test_raw_or_ema_the_file_lacks_is_one_line_saying_what_to_pass(both, fit_checkpoint, tmp_path):
    path, raw, ema = both
    torch.save(raw, tmp_path / "plain.pth")
    with pytest.raises(WeightsError, match=re.escape(
            f"{tmp_path / 'plain.pth'} has no EMA weights: it has the raw weights (a plain state dict); "
            "pass --weights raw or --weights auto")):
        read_weights(tmp_path / "plain.pth", "ema")
    torch.save({"model_ema": ema}, tmp_path / "ema_only.pth")
    with pytest.raises(WeightsError, match=re.escape(
            "has no raw weights: it has the EMA weights (model_ema); pass --model.init_weights_key ema")):
        read_weights(tmp_path / "ema_only.pth", "raw", option="--model.init_weights_key")
    checkpoint = torch.load(fit_checkpoint.path, weights_only=False)
    del checkpoint[EMA_CHECKPOINT_KEY]
    torch.save(checkpoint, tmp_path / "no_ema.ckpt")
    with pytest.raises(WeightsError, match=re.escape("has no EMA weights (its run trained without ema_decay): it has "
                                                     "the raw weights (state_dict); pass --weights raw")):
        read_weights(tmp_path / "no_ema.ckpt", "ema")
    with pytest.raises(WeightsError, match=re.escape("--weights 'best': choose one of auto, raw, ema")):
        read_weights(path, "best")
    with pytest.raises(WeightsError, match=f"weights file {tmp_path / 'missing.pth'} does not exist"):
        read_weights(tmp_path / "missing.pth")
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "no_weights.pth")
    with pytest.raises(WeightsError, match="holds no state dict"):
        read_weights(tmp_path / "no_weights.pth")


def test_a_file_that_does_not_fit_is_refused_before_loading_naming_the_published_model(conformance, tmp_path):
    torch.save({"model": published_state_dict(conformance, "glnet_stl", values="zeros")}, tmp_path / "glnet_stl.pth")
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as error:
        load_weights(model, tmp_path / "glnet_stl.pth", what="init_weights")
    message = str(error.value)
    assert message.startswith(f"init_weights {tmp_path / 'glnet_stl.pth'} does not fit GLNet: ") and "\n" not in message
    # the tiny model has a GLMix last stage (published: attention only) and one block per stage
    assert "11 missing key(s): stages.3.blocks.0.mixer.global_branch.clustering.tau [], " in message
    assert "149 unexpected key(s): stages.0.blocks.1.mixer.global_branch.clustering.tau [], " in message
    assert "90 key(s) of another shape: norm.bias [768] in the checkpoint vs [64], " in message
    assert re.search(r"\(\d+ in all\)", message)
    assert message.endswith("The weights fit timm.create_model('glnet_stl', ...).")
    assert same(model.state_dict(), before)


def test_training_settings_are_the_network_description_in_the_syntax_of_model_options(fit_checkpoint):
    settings = training_settings({"lr": 0.5, "backbone": glnet_stl(num_slots=16).describe(), "num_classes": 4,
                                  "compile": {"mode": "default"}, "mixup": 0.8})
    assert settings == " It was trained with model.backbone=glnet_stl:num_slots=16, model.num_classes=4: use those settings."
    wide = tiny_model(dims=[16, 32, 48, 80], num_classes=4)
    spec = "glnet_stl:depths=[1, 1, 1, 1],dims=[16, 32, 48, 64],stage_mixers=[glmix, glmix, glmix, glmix],head_dim=16,num_slots=4"
    with pytest.raises(WeightsError, match=re.escape(
            f"It was trained with model.backbone={spec}, model.num_classes=4: use those settings.")):
        load_weights(wide, fit_checkpoint.path)
    assert resolve_backbone(*parse_model_spec(spec)[:1], **parse_model_spec(spec)[1]) == glnet_stl(**tiny())


def test_timm_conventions_another_classifier_and_input_channels(both):
    path, raw, _ = both
    model = tiny_model(num_classes=7, in_chans=1)
    fresh_head = model.head.weight.clone()
    line = load_weights(model, path)
    assert line == "weights: the raw weights (model) of both.pth; head re-initialised: the file has 3 classes, the model 7"
    assert torch.equal(model.head.weight, fresh_head)
    assert torch.allclose(model.stem[0].weight[:, 0], raw["stem.0.weight"].sum(1))  # timm's adapt_input_conv
    assert torch.equal(model.stages[3].blocks[0].mlp.fc1.weight, raw["stages.3.blocks.0.mlp.fc1.weight"])


def test_strict_mismatch_includes_the_classifier(both):
    _, raw, _ = both
    assert mismatch(raw, tiny_model(num_classes=7)) is None
    assert mismatch(raw, tiny_model(num_classes=7), strict=True) == (
        "2 key(s) of another shape: head.bias [3] in the checkpoint vs [7], head.weight [3, 64] in the checkpoint "
        "vs [7, 64].")
