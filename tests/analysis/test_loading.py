"""Loading models (fit checkpoints, state dicts via timm) and photos for the slot figures."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from glnet_lightning.analysis.checkpoints import CheckpointError, Preprocess, load_model
from glnet_lightning.analysis.images import ImageError, load_images, to_batch
from glnet_lightning.analysis.slot_views import compute_slot_views
from testkit import tiny, tiny_spec


def test_default_photos_and_preprocessing():
    photos = load_images(None)
    assert [p.name for p in photos] == ["astronaut", "chelsea", "coffee"]
    assert all(p.pixels.dtype == np.uint8 and p.pixels.shape[2] == 3 for p in photos)
    batch, views = to_batch(photos, Preprocess(size=40, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert batch.shape == (3, 3, 40, 40) and views[0].shape == (40, 40, 3)
    assert torch.allclose(batch[1], (torch.from_numpy(views[1]).permute(2, 0, 1) / 255.0 - 0.5) / 0.25)
    grey, grey_views = to_batch(photos[:1], Preprocess(size=40, mean=(0.3,) * 3, std=(0.3,) * 3, grayscale=True))
    assert torch.equal(grey[0, 0], grey[0, 2]) and (grey_views[0][..., 0] == grey_views[0][..., 1]).all()


def test_image_files_and_errors(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((10, 20), 128, np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "other").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "other" / "grey.png")
    image, again = load_images([str(tmp_path / "grey.png"), str(tmp_path / "other" / "grey.png")])
    assert image.name == "grey" and image.pixels.shape == (10, 20, 3) and (image.pixels == 128).all()
    assert again.name == "grey-2"  # names become output file names: never the same twice
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot read image"):
        load_images([str(tmp_path / "broken.jpg")])
    with pytest.raises(ImageError, match="does not exist"):
        load_images([str(tmp_path / "missing.png")])
    with pytest.raises(ImageError, match="no sample image"):
        load_images(["skimage:nothing_like_this"])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "junk.ckpt")
    torch.save({"stem.0.weight": torch.zeros(3, 3, 1, 1)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="no published GLNet"):
        load_model(tmp_path / "odd.pth")


def test_published_reference_checkpoint_via_timm(conformance, tmp_path):
    """A reference state dict (reference key names) loads through timm and gives slot maps."""
    fixture = torch.load(conformance / "stl_tiny.pt", weights_only=False)
    torch.save(fixture["state_dict"], tmp_path / "reference.pth")
    kwargs = dict(depths=[1, 1, 2, 1], dims=[32, 64, 96, 128], num_slots=16)
    loaded = load_model(tmp_path / "reference.pth", ("glnet_stl", kwargs))
    with torch.no_grad():
        assert torch.allclose(loaded.model(fixture["input"]), fixture["logits"], atol=1e-4)
    assert loaded.preprocess.size == 224 and loaded.label == "reference.pth (glnet_stl)"
    results, notes = compute_slot_views(loaded, load_images(["skimage:coffee"]), [2, 5, 10], size=64)
    assert [b.choice.block for b in results[0].blocks] == [2, 3, 4] and len(notes) == 2
    first = results[0].blocks[0]
    assert first.assignment.shape == (16, 8, 8) and len(first.representatives.medoids) == 4


def test_own_state_dict_needs_a_model_name(tmp_path):
    model = timm.create_model("glnet_stl", num_classes=3, **tiny())
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    loaded = load_model(tmp_path / "ours.pth", tiny_spec())  # the syntax of glnet bench specs
    assert torch.equal(loaded.model.head.weight, model.head.weight)
    with pytest.raises(CheckpointError, match="no published GLNet; give its model as --model NAME"):
        load_model(tmp_path / "ours.pth")
    with pytest.raises(CheckpointError, match="cannot load .* as glnet_stl"):
        load_model(tmp_path / "ours.pth", tiny_spec(dims=[16, 32, 48, 96]))
    with pytest.raises(CheckpointError, match=r"glnet_stl has no setting\(s\) \['num_slotz'\]"):
        load_model(tmp_path / "ours.pth", "glnet_stl:num_slotz=4")


@pytest.mark.parametrize("weights, kind", [("auto", "model"), ("raw", "model"), ("ema", "model_ema")])
def test_state_dict_with_model_and_model_ema(tmp_path, weights, kind, caplog):
    """auto is the raw model, as the reference evaluates its published files; the label says EMA."""
    kwargs = tiny()
    saved = {key: timm.create_model("glnet_stl", num_classes=3, **kwargs).state_dict() for key in ("model", "model_ema")}
    assert not torch.equal(saved["model"]["head.weight"], saved["model_ema"]["head.weight"])
    torch.save(saved, tmp_path / "both.pth")
    with caplog.at_level("INFO"):
        loaded = load_model(tmp_path / "both.pth", ("glnet_stl", kwargs), weights=weights)
    state = loaded.model.state_dict()
    assert state.keys() == saved[kind].keys() and all(torch.equal(state[k], v) for k, v in saved[kind].items())
    assert loaded.label == "both.pth (glnet_stl)" + (" EMA" if kind == "model_ema" else "")
    assert f"weights: the {'EMA' if kind == 'model_ema' else 'raw'} weights ({kind}) of both.pth" in caplog.text


@pytest.mark.slow
def test_fit_checkpoint_brings_its_model_and_data_statistics(tiny_runs):
    from glnet_lightning.data import FashionMNISTDataModule

    loaded = load_model(tiny_runs.late)
    assert loaded.preprocess == Preprocess(size=32, mean=FashionMNISTDataModule.mean, std=FashionMNISTDataModule.std,
                                           grayscale=True)
    assert loaded.label == "last.ckpt (step 4)" and not loaded.model.training
    assert len(loaded.model.glmix_blocks()) == 4
    with pytest.raises(ValueError, match=r"has no EMA weights \(its run trained without ema_decay\).*pass --weights raw"):
        load_model(tiny_runs.late, weights="ema")
    with pytest.raises(CheckpointError, match="records its own model; drop --model"):
        load_model(tiny_runs.late, "glnet_stl")
