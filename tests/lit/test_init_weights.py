"""GLNetModule(init_weights=...): start from published weights (reference layout) or a fit checkpoint's raw / EMA
weights; the head is re-initialised for another class count; restored checkpoints never need the file again."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from glnet_lightning.cli.main import main as glnet_main
from glnet_lightning.lit import GLNetModule
from glnet_lightning.models import convert_official_state_dict, glnet_from_official_kwargs
from glnet_lightning.models.backbone import resolve_backbone
from glnet_lightning.models.glnet import glnet_stl
from glnet_lightning.models.weights import WeightsError, read_weights
from testkit import tiny
from testkit.data import RandomImages, make_trainer

REPO = Path(__file__).resolve().parents[2]
# the conformance fixtures' architecture (tests/models/test_conformance.py builds it from the reference arguments)
STL_KWARGS = dict(depths=[1, 1, 2, 1], dims=[32, 64, 96, 128], num_slots=16)


def make_module(init_weights=None, **kwargs) -> GLNetModule:
    defaults = dict(backbone=glnet_stl(**STL_KWARGS), num_classes=10, drop_path_rate=0.0,
                    mixup=0.0, cutmix=0.0, ema_decay=None, slot_map_every_n_epochs=0, warmup_epochs=0,
                    init_weights=None if init_weights is None else str(init_weights))
    defaults.update(kwargs)
    return GLNetModule(**defaults)


@pytest.fixture
def reference(conformance, tmp_path):
    """The tiny GLNet-STL fixture: its reference-layout state dict saved as a published file, and the fixture."""
    fixture = torch.load(conformance / "stl_tiny.pt", weights_only=False)
    path = tmp_path / "glnet_stl_tiny.pth"
    torch.save({"model": fixture["state_dict"]}, path)  # nested as the published files are
    return path, fixture


def same_weights(model, state) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in state)


@pytest.mark.parametrize("name, model_name, kwargs", [
    ("stl_tiny", "glnet_stl", STL_KWARGS),
    ("g16_tiny", "glnet_16g", dict(depths=[1, 1, 2, 2], dims=[32, 64, 96, 128], num_slots=16, mlp_ratios=3.0)),
])
@torch.no_grad()
def test_published_weights_reproduce_the_reference_logits(conformance, tmp_path, name, model_name, kwargs):
    fixture = torch.load(conformance / f"{name}.pt", weights_only=False)
    torch.save(fixture["state_dict"], tmp_path / "w.pth")  # flat reference layout
    module = make_module(tmp_path / "w.pth", backbone=resolve_backbone(model_name, **kwargs))
    before = module.model(fixture["input"])
    module.load_init_weights()
    logits = module.model.eval()(fixture["input"])
    assert (logits - fixture["logits"]).abs().max() <= 1e-4 * max(1.0, fixture["logits"].abs().max().item())
    assert not torch.allclose(before, logits, atol=1e-2)  # the random init was replaced


def test_other_num_classes_reinitialises_the_head_and_logs_it(reference, caplog):
    path, fixture = reference
    module = make_module(path, num_classes=3)
    fresh_head = module.model.head.weight.clone()
    with caplog.at_level(logging.INFO):
        module.load_init_weights()
    assert "head re-initialised: the file has 10 classes, the model 3" in caplog.text
    assert torch.equal(module.model.head.weight, fresh_head)
    body = {k: v for k, v in convert_official_state_dict(fixture["state_dict"]).items() if not k.startswith("head.")}
    assert all(torch.equal(module.model.state_dict()[k], v) for k, v in body.items())
    with torch.no_grad():  # the features are the reference's: only the classifier is new
        stages = module.model.eval().forward_intermediates(fixture["input"], intermediates_only=True)
    assert (stages[-1] - fixture["stage_outputs"][-1]).abs().max() <= 1e-4 * fixture["stage_outputs"][-1].abs().max()


def test_validate_evaluates_the_init_weights(reference, tmp_path):
    data = RandomImages()
    path, fixture = reference
    module = make_module(path)
    metrics = make_trainer(tmp_path, limit_val_batches=2).validate(module, datamodule=data, verbose=False)[0]
    assert same_weights(module.model, convert_official_state_dict(fixture["state_dict"]))
    # the accuracy of the reference model itself, built from the reference arguments
    model = glnet_from_official_kwargs(**fixture["official_kwargs"]).eval()
    model.load_state_dict(convert_official_state_dict(fixture["state_dict"]))
    batches = list(data.val_dataloader())[:2]
    with torch.no_grad():
        hits = torch.cat([model(images).argmax(-1) == labels for images, labels in batches])
    assert metrics["val/acc1"] == pytest.approx(hits.float().mean().item())


@pytest.mark.slow
def test_fine_tuned_checkpoint_reloads_and_resumes_without_the_init_file(reference, tmp_path):
    data = RandomImages()
    path, fixture = reference
    module = make_module(path, ema_decay=0.5)
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "tuned.ckpt")
    tuned = {k: v.clone() for k, v in module.model.state_dict().items()}
    start = convert_official_state_dict(fixture["state_dict"])
    params = [n for n, _ in module.model.named_parameters()]
    moved = max((tuned[n] - start[n]).abs().max().item() for n in params)
    random = make_module().model.state_dict()
    assert 0 < moved < 0.1 * max((random[n] - start[n]).abs().max().item() for n in params)  # tuned from the file
    path.unlink()

    loaded = GLNetModule.load_from_checkpoint(tmp_path / "tuned.ckpt")
    assert loaded.hparams.init_weights == str(path)  # recorded, but not needed
    assert same_weights(loaded.model, tuned)
    make_trainer(tmp_path, limit_val_batches=1).validate(loaded, datamodule=data, verbose=False)
    assert same_weights(loaded.model, tuned)  # validating a restored module does not reload the file

    resumed = make_module(path, ema_decay=0.5)  # the run's config still names the deleted file
    with pytest.warns(UserWarning, match="start from the checkpoint's weights with --model.init_weights"):
        make_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1).fit(
            resumed, datamodule=data, ckpt_path=tmp_path / "tuned.ckpt")
    assert resumed.trainer.global_step == 4


@pytest.mark.parametrize("key", ["auto", "ema", "raw"])
def test_fit_checkpoint_gives_its_ema_or_raw_weights(fit_checkpoint, key, caplog):
    expected = fit_checkpoint.raw if key == "raw" else fit_checkpoint.ema
    module = make_module(fit_checkpoint.path, backbone=glnet_stl(**tiny()), num_classes=4, init_weights_key=key)
    with caplog.at_level(logging.INFO):
        module.load_init_weights()
    assert same_weights(module.model, expected)
    kind = "raw" if key == "raw" else "EMA"
    assert f"init_weights: the {kind} weights of {fit_checkpoint.path.name} (step 2)" in caplog.text
    # the same words give the same tensors through glnet export / viz (analysis.checkpoints.load_model)
    from glnet_lightning.analysis.checkpoints import load_model

    assert same_weights(load_model(fit_checkpoint.path, weights=key).model, expected)


@pytest.mark.parametrize("key, kind", [("auto", "model"), ("raw", "model"), ("ema", "model_ema")])
def test_reference_layout_with_model_and_model_ema(tmp_path, key, kind):
    """auto is the raw ``model``: the weights the reference evaluates (and its published accuracies are for)."""
    backbone = glnet_stl(**tiny())
    weights = {"model": make_module(backbone=backbone).model.state_dict(),
               "model_ema": make_module(backbone=backbone).model.state_dict()}
    assert not torch.equal(weights["model"]["head.weight"], weights["model_ema"]["head.weight"])
    torch.save({**weights, "epoch": 299}, tmp_path / "both.pth")
    module = make_module(tmp_path / "both.pth", backbone=backbone, init_weights_key=key)
    module.load_init_weights()
    assert same_weights(module.model, weights[kind])
    assert same_weights(module.model, read_weights(tmp_path / "both.pth", key).state_dict)


def test_ema_requested_from_a_checkpoint_without_ema(tmp_path):
    data = RandomImages()
    backbone = glnet_stl(**tiny())
    source = make_module(backbone=backbone)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(source, datamodule=data)
    trainer.save_checkpoint(tmp_path / "no_ema.ckpt")
    with pytest.raises(WeightsError, match=r"no_ema.ckpt has no EMA weights \(its run trained without ema_decay\): it "
                                           r"has the raw weights \(state_dict\); pass --model.init_weights_key raw"):
        make_module(tmp_path / "no_ema.ckpt", backbone=backbone, init_weights_key="ema").load_init_weights()
    module = make_module(tmp_path / "no_ema.ckpt", backbone=backbone)  # auto falls back to the raw weights
    module.load_init_weights()
    assert same_weights(module.model, source.model.state_dict())


def test_bad_init_weights_are_clear_errors(reference, tmp_path):
    path, _ = reference
    with pytest.raises(WeightsError, match="init_weights file .*missing.pth does not exist"):
        make_module(tmp_path / "missing.pth").load_init_weights()
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="cannot read init_weights file"):
        make_module(tmp_path / "junk.pth").load_init_weights()
    wrong = make_module(path, backbone=glnet_stl(**dict(STL_KWARGS, dims=[32, 64, 96, 160])))
    before = {k: v.clone() for k, v in wrong.model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"init_weights .*glnet_stl_tiny.pth does not fit GLNet: .*key\(s\) of another "
                                           r"shape: norm.bias \[128\] in the checkpoint vs \[160\]"):
        wrong.load_init_weights()
    assert same_weights(wrong.model, before)  # a refused file changes nothing
    with pytest.raises(ValueError, match="init_weights_key='best'"):
        make_module(path, init_weights_key="best")


def test_cli_names_a_missing_init_weights_file_in_one_line(tmp_path, capsys):
    missing = tmp_path / "glnet_4g.pth"
    code = glnet_main(["validate", "--config", str(REPO / "configs" / "fashion_mnist.yaml"), "--model.init_weights", str(missing),
                       "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"model.init_weights: file {missing} does not exist" in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_validates_a_published_checkpoint_and_fine_tunes_from_it(reference, fashion_mnist, tmp_path, caplog):
    """The README's use: glnet validate / fit --model.init_weights FILE, then the fine-tuned run on its own."""
    path, _ = reference
    args = ["--config", str(REPO / "configs" / "fashion_mnist.yaml"), "--trainer.default_root_dir", str(tmp_path),
            # the reference fixture's network: glnet_stl's layout where the Fashion-MNIST config changes it
            "--model.backbone={depths: [1, 1, 2, 1], dims: [32, 64, 96, 128], num_slots: 16, stem: patch, "
            "transition: norm_conv, stage_mixers: [glmix, glmix, glmix, mha]}",
            "--trainer.limit_val_batches", "1", "--trainer.limit_train_batches", "2", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "32",
            "--data.init_args.num_workers", "0", "--test_after_fit", "false"]
    with caplog.at_level(logging.INFO):
        assert glnet_main(["validate", *args, "--model.init_weights", str(path)]) == 0
        assert f"init_weights: the raw weights (model) of {path.name}" in caplog.text
        assert glnet_main(["fit", *args, "--model.init_weights", str(path)]) == 0
    path.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert glnet_main(["validate", *args, "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")]) == 0
    assert "init_weights: the" not in caplog.text
