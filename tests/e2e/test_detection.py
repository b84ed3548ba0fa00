"""The detection configs run end to end as their comments say: ``glnet fit --config configs/coco_*.yaml
--data.root ...`` on a generated COCO-layout tree (odd sizes, a grayscale image, an image without objects, a
crowd region), then ``glnet validate`` of the best checkpoint; the demo ``configs/fashion_scenes_det.yaml``
fits, tests its best checkpoint and predicts. In process, through ``glnet``'s own entry point; only hardware,
image sizes and step counts change (never the network)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from testkit import REPO, fit_args, glnet_ok, scalars
from testkit.plugin import FASHION_SCENES

#: CPU, one device, one training and one validation batch of 2 images (no sanity check: an untrained Mask
#: R-CNN's 100 detections per image make the full-width mask head the slow part), short side 64 px.
SHORT = {"trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.strategy": "auto",
         "trainer.precision": "32-true", "trainer.max_epochs": 1, "trainer.limit_train_batches": 1,
         "trainer.limit_val_batches": 1, "trainer.limit_test_batches": 1, "trainer.num_sanity_val_steps": 0,
         "trainer.log_every_n_steps": 1, "trainer.enable_progress_bar": False, "data.batch_size": 2,
         "data.num_workers": 0, "model.min_size": 64, "model.max_size": 96}

COCO_CONFIGS = {"coco_glnet_4g_maskrcnn_1x.yaml": ("bbox", "segm"), "coco_glnet_4g_maskrcnn_3x.yaml": ("bbox", "segm"),
                "coco_glnet_4g_retinanet_1x.yaml": ("bbox",)}



def _logged(run: Path, kinds: tuple[str, ...], stage: str = "val") -> dict[str, float]:
    values = {f"{stage}/{kind}_{name}": scalars(run, f"{stage}/{kind}_{name}")
              for kind in kinds for name in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")}
    assert all(len(v) == 1 for v in values.values()), values
    return {k: v[0][1] for k, v in values.items()}


@pytest.mark.slow
@pytest.mark.parametrize("config", list(COCO_CONFIGS))
def test_coco_config_fits_validates_and_checkpoints(config, coco_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    # the 3x config's multi-scale sides, shrunk like the others' (the list form is what is run)
    sides = ["--model.min_size", "[48, 64]"] if "3x" in config else []
    common = ["--config", f"configs/{config}", "--data.root", str(coco_tree), *fit_args(SHORT), *sides]
    glnet_ok(capsys, "fit", *common, "--trainer.default_root_dir", str(run))
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    kinds = COCO_CONFIGS[config]
    logged = _logged(run, kinds)
    assert all(0.0 <= v <= 1.0 or v == -1.0 for v in logged.values())
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False, mmap=True)
    hparams = checkpoint["hyper_parameters"]
    assert checkpoint["global_step"] == 1 and hparams["num_classes"] == 4  # 3 categories + background
    assert hparams["category_ids"] == [3, 7, 11] and hparams["backbone"]["class_path"].endswith("glnet_4g")
    del checkpoint

    check = tmp_path / "validate"
    glnet_ok(capsys, "validate", *common, "--trainer.default_root_dir", str(check),
           "--ckpt_path", str(run / "checkpoints" / "best.ckpt"))
    assert _logged(check, kinds) == pytest.approx(logged, abs=1e-6)


@pytest.mark.slow
def test_the_demo_fits_tests_its_best_checkpoint_and_draws_predictions(fashion_scenes_coco, tmp_path, capsys,
                                                                       monkeypatch):
    """``glnet fit --config configs/fashion_scenes_det.yaml`` (on the session's small scenes tree: same
    scenes settings, so it is read, not rewritten), then ``glnet predict`` of its best checkpoint."""
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    scenes = {"data.root": fashion_scenes_coco, **{f"data.{k}": v for k, v in FASHION_SCENES.items()}}
    sizes = {k: v for k, v in SHORT.items() if not k.startswith("model.")}  # the demo's sizes already are small
    common = ["--config", "configs/fashion_scenes_det.yaml", *fit_args({**sizes, **scenes}),
              "--trainer.default_root_dir", str(run)]
    out = glnet_ok(capsys, "fit", *common)
    assert "test/bbox_mAP" in out and "test/segm_mAP" in out  # test_after_fit: the best checkpoint's figures
    _logged(run, ("bbox", "segm"), stage="test")

    glnet_ok(capsys, "predict", *common, "--ckpt_path", str(run / "checkpoints" / "best.ckpt"),
           "--trainer.limit_predict_batches", "1")
    pictures = sorted((run / "predictions").glob("*.png"))
    results = json.loads((run / "predictions.json").read_text())
    assert len(pictures) == 2 and all(r["category_id"] in range(1, 11) for r in results)
