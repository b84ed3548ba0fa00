"""The dense-prediction backbone (models/dense.py): stride 4-32 features of any description, and the
classification weights loaded into them strictly, with the parts a dense model drops named."""
from __future__ import annotations

import pytest
import torch

from glnet_lightning.models.dense import build_dense_backbone, load_backbone_weights
from glnet_lightning.models.glnet import glnet_stl
from glnet_lightning.models.weights import WeightsError
from testkit import published_state_dict, tiny


def test_features_at_strides_4_to_32_of_any_description():
    features = build_dense_backbone({"class_path": "glnet_stl", "init_args": tiny()})
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    assert features.feature_info.channels() == tiny()["dims"]
    maps = features(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [m.shape[1] for m in maps] == tiny()["dims"]


@pytest.mark.parametrize("name, dropped", [("glnet_stl", "head, norm"), ("glnet_4g_tklb", "aux_head, head, norm")])
def test_published_weights_load_strictly_and_the_log_names_what_is_dropped(conformance, tmp_path, name, dropped):
    state = published_state_dict(conformance, name)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": state}, path)
    features = build_dense_backbone(name)
    line = load_backbone_weights(features, path)
    assert line.endswith(f"not used for dense prediction: {dropped}") and f"{name}.pth" in line
    ours = features.state_dict()
    # every backbone tensor came from the file (after conversion to our names)
    from glnet_lightning.models.official import convert_official_state_dict

    converted = convert_official_state_dict(state)
    for key, value in converted.items():
        if f"model.{key}" in ours:
            torch.testing.assert_close(ours[f"model.{key}"], value.to(ours[f"model.{key}"].dtype))
    assert sum(f"model.{k}" in ours for k in converted) == len(ours)


def test_weights_of_another_network_fail_before_loading(conformance, tmp_path):
    torch.save({"model": published_state_dict(conformance, "glnet_stl", values="zeros")}, tmp_path / "stl.pth")
    features = build_dense_backbone("glnet_4g")
    before = {k: v.clone() for k, v in features.state_dict().items()}
    with pytest.raises(WeightsError, match=r"stl\.pth do not fit the GLNet backbone: .*missing key"):
        load_backbone_weights(features, tmp_path / "stl.pth")
    assert all(torch.equal(before[k], v) for k, v in features.state_dict().items())


@pytest.mark.parametrize("choice", ["raw", "ema"])
def test_a_fit_checkpoint_gives_its_raw_or_ema_backbone(fit_checkpoint, choice):
    features = build_dense_backbone(glnet_stl(**tiny()))
    line = load_backbone_weights(features, fit_checkpoint.path, choice)
    assert ("EMA" in line) == (choice == "ema")
    expected = fit_checkpoint.raw if choice == "raw" else fit_checkpoint.ema
    for key, value in features.state_dict().items():
        torch.testing.assert_close(value, expected[key.removeprefix("model.")])
