"""The segmentation configs run end to end as their comments say: ``glnet fit --config configs/ade20k_*.yaml
--data.root ...`` on a generated ADE20K-layout tree (odd sizes, a grayscale image, label 0 in every annotation),
then ``glnet validate`` of the best checkpoint; the demo ``configs/fashion_scenes_seg.yaml`` fits and tests its
best checkpoint. In process, through ``glnet``'s own entry point; only hardware, image sizes, step counts and
(for the ADE20K configs, whose GLNet-4G + 512-channel UperNet would take minutes a step) the widths change."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glnet_lightning.cli.main import main as glnet
from glnet_lightning.lit import SegmentationModule
from glnet_lightning.models.backbone import resolve_backbone
from testkit import REPO, fit_args, glnet_ok, scalars, tiny_named
from testkit.plugin import FASHION_SCENES

#: CPU, one device, 2 training steps of 2 crops of 64 px and a validation after them.
SHORT = {"trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.strategy": "auto",
         "trainer.precision": "32-true", "trainer.max_steps": 2, "trainer.val_check_interval": 2,
         "trainer.log_every_n_steps": 1, "trainer.enable_progress_bar": False, "data.batch_size": 2,
         "data.num_workers": 0, "data.crop_size": 64, "data.scale": "[256, 64]"}

#: The config's named backbone at the tiny widths, and each head at widths a CPU step takes in a second.
TINY_HEADS = {"ade20k_glnet_4g_semfpn.yaml": "{pyramid_channels: 32, segmentation_channels: 32}",
              "ade20k_glnet_4g_upernet.yaml": "{channels: 32, aux_channels: 16, aux_weight: 0.4}"}
#: The format each run's best checkpoint is exported to (one each: an export takes 10-20 s here).
EXPORTS = {"ade20k_glnet_4g_semfpn.yaml": "onnx", "ade20k_glnet_4g_upernet.yaml": "pt2"}



def _scores(run: Path, stage: str = "val") -> dict[str, float]:
    values = {name: scalars(run, f"{stage}/{name}") for name in ("mIoU", "aAcc", "mAcc")}
    assert all(len(v) == 1 for v in values.values()), values
    return {name: v[0][1] for name, v in values.items()}


@pytest.mark.slow
@pytest.mark.parametrize("config", list(TINY_HEADS))
def test_ade20k_config_fits_validates_and_checkpoints(config, ade20k_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    backbone = "{class_path: glnet_4g, init_args: %s}" % str(tiny_named()).replace("'", "")
    common = ["--config", f"configs/{config}", "--data.root", str(ade20k_tree), *fit_args(SHORT),
              "--model.backbone", backbone, "--model.head_settings", TINY_HEADS[config]]
    glnet_ok(capsys, "fit", *common, "--trainer.default_root_dir", str(run))
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    logged = _scores(run)
    assert all(0.0 <= v <= 1.0 for v in logged.values())
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert {"val/masks/0", "val/masks/1", "val/masks/2"} <= set(events.Tags()["images"])  # 3 validation images
    assert any(tag.startswith("val/IoU/") for tag in events.Tags()["scalars"])

    # the checkpoint rebuilds the network alone, from the description it holds
    module = SegmentationModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt", map_location="cpu")
    assert module.hparams.backbone == resolve_backbone("glnet_4g", **tiny_named()).describe()
    assert module.hparams.num_classes == 150 and module.model.head == config.split("_")[-1].removesuffix(".yaml")
    with torch.no_grad():
        assert module.eval()(torch.randn(1, 3, 45, 67)).shape == (1, 150, 45, 67)

    check = tmp_path / "validate"
    glnet_ok(capsys, "validate", *common, "--trainer.default_root_dir", str(check),
           "--ckpt_path", str(run / "checkpoints" / "best.ckpt"))
    assert _scores(check) == pytest.approx(logged, abs=1e-6)

    # glnet export: per-pixel logits with dynamic sides (multiples of 32), checked against eager at two sizes
    out = tmp_path / f"segmentation.{EXPORTS[config]}"
    printed = glnet_ok(capsys, "export", str(run / "checkpoints" / "best.ckpt"), "--out", str(out), "--img-size", "64", "96")
    assert out.is_file() and "at 1x3x64x96" in printed and "at 2x3x96x128" in printed
    # it records its network and has raw weights only: the checkpoint reader says so, as for a classifier's
    capsys.readouterr()
    assert glnet(["export", str(run / "checkpoints" / "best.ckpt"), "--out", str(out), "--weights", "ema"]) == 2
    assert "has no EMA weights" in " ".join(capsys.readouterr().err.split())
    # the slot figures are drawn for classifiers: a segmentation checkpoint is named as such, in one line
    assert glnet(["viz", str(run / "checkpoints" / "best.ckpt"), "--out", str(tmp_path / "figures")]) == 2
    assert "is a checkpoint of SegmentationModule: this command takes those of GLNetModule" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_fits_and_tests_its_best_checkpoint(fashion_scenes_ade20k, fashion_mnist, tmp_path, capsys,
                                                     monkeypatch):
    """``glnet fit --config configs/fashion_scenes_seg.yaml`` on the session's small scenes tree (the same scenes
    settings, so it is read, not rewritten), its network as shipped: test/mIoU of the best checkpoint."""
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    scenes = {"data.root": fashion_scenes_ade20k, "data.fashion_mnist": fashion_mnist,
              **{f"data.{k}": v for k, v in FASHION_SCENES.items()}}
    steps = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.log_every_n_steps": 1,
             "trainer.enable_progress_bar": False, "data.batch_size": 4, "data.val_batch_size": 4,
             "data.num_workers": 0}
    out = glnet_ok(capsys, "fit", "--config", "configs/fashion_scenes_seg.yaml", *fit_args({**steps, **scenes}),
                 "--trainer.default_root_dir", str(run))
    assert "test/mIoU" in out  # test_after_fit: the best checkpoint's figure, printed
    assert 0.0 <= _scores(run, "test")["mIoU"] <= 1.0
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}

    # glnet predict: one class-index PNG per image, named after it, at its size
    glnet_ok(capsys, "predict", "--config", "configs/fashion_scenes_seg.yaml", *fit_args({**steps, **scenes}),
           "--trainer.default_root_dir", str(run), "--ckpt_path", str(run / "checkpoints" / "best.ckpt"),
           "--trainer.limit_predict_batches", "1")
    masks = sorted((run / "predictions").glob("*.png"))
    images = sorted((fashion_scenes_ade20k / "images" / "validation").glob("*.jpg"))[:4]
    assert [m.stem for m in masks] == [i.stem for i in images]
    for mask, image in zip(masks, images):
        values = np.asarray(Image.open(mask))
        assert values.shape == np.asarray(Image.open(image)).shape[:2] and values.max() <= 10
