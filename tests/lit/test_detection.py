"""DetectionModule (lit/detection.py): the COCO evaluation (every image once, also under DDP), the recipe's
optimizer and lr steps, the weights it starts from, fit / validate / test / predict on a COCO-layout tree."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from lightning.pytorch import Callback

from glnet_lightning.data.coco import COCODataModule
from glnet_lightning.lit.detection import COCOEvaluation, DetectionModule, draw_detections
from glnet_lightning.lit.prediction_writer import PredictionWriter
from glnet_lightning.lit.schedule import WarmupMultiStep
from glnet_lightning.models.backbone import resolve_backbone
from glnet_lightning.models.glnet import glnet_stl
from testkit import tiny, tiny_named
from testkit.data import make_trainer

SLIM = {"fpn_channels": 16, "anchor_sizes": [8, 16, 32, 64, 128], "box_head_size": 32, "mask_head_channels": 8,
        "mask_head_convs": 1, "box_batch_size_per_image": 16, "rpn_pre_nms_top_n_train": 100,
        "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50}


def _module(kind: str = "maskrcnn", **kwargs) -> DetectionModule:
    detector = SLIM if kind == "maskrcnn" else {k: SLIM[k] for k in ("fpn_channels", "anchor_sizes")}
    settings = dict(num_classes=4, kind=kind, drop_path_rate=0.0, min_size=64, max_size=96, detector=detector,
                    base_batch_size=2, warmup_iters=1)
    return DetectionModule(glnet_stl(**tiny()), **{**settings, **kwargs})


# ------------------------------------------------------------------------------------ COCO evaluation
def _box_mask(box: list[float], size: int = 40) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.uint8)
    x1, y1, x2, y2 = (int(v) for v in box)
    mask[y1:y2, x1:x2] = 1
    return mask


def _truth(image_id: int, boxes: list[list[float]], labels: list[int], crowd: list[int] | None = None) -> dict:
    masks = torch.stack([_box_mask(b) for b in boxes]) if boxes else torch.zeros(0, 40, 40, dtype=torch.uint8)
    return {"image_id": torch.tensor(image_id), "boxes": torch.tensor(boxes).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64), "iscrowd": torch.tensor(crowd or [0] * len(boxes)),
            "area": masks.flatten(1).sum(1).float(), "masks": masks}


def _found(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict:
    masks = torch.stack([_box_mask(b) for b in boxes]).float()[:, None] if boxes else torch.zeros(0, 1, 40, 40)
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores), "masks": masks}


#: Three images: a hit; a confident false detection above a late hit; a miss. Image 0 counted twice would
#: change the precision-recall curve (two hits at 0.9 and four objects instead of one and three).
IMAGES = [
    (_truth(1, [[5, 5, 20, 20]], [1]), _found([[5, 5, 20, 20]], [1], [0.9])),
    (_truth(2, [[10, 10, 30, 35]], [2]), _found([[0, 0, 8, 8], [10, 10, 30, 35]], [2, 2], [0.95, 0.3])),
    (_truth(3, [[2, 2, 12, 30]], [1]), _found([], [], [])),
]


def _evaluate(images) -> dict[str, float]:
    evaluation = COCOEvaluation(num_classes=3, masks=True)
    evaluation.update([(40, 40)] * len(images), [t for t, _ in images], [f for _, f in images])
    return evaluation.compute()


def test_perfect_detections_score_1_and_a_detection_on_a_crowd_region_costs_nothing():
    truth = _truth(7, [[5, 5, 20, 20], [22, 22, 38, 38]], [1, 2], crowd=[0, 1])
    perfect = _evaluate([(truth, _found([[5, 5, 20, 20]], [1], [0.8]))])
    on_crowd = _evaluate([(truth, _found([[5, 5, 20, 20], [22, 22, 38, 38]], [1, 2], [0.8, 0.99]))])
    assert perfect["bbox_mAP"] == perfect["segm_mAP"] == pytest.approx(1.0)
    assert on_crowd == perfect
    assert set(perfect) == {f"{kind}_{name}" for kind in ("bbox", "segm")
                            for name in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")}


def test_mixed_detections_score_between_0_and_1_and_each_image_counts_once():
    stats = _evaluate(IMAGES)
    assert 0.2 < stats["bbox_mAP"] < 0.8 and stats["segm_mAP"] == pytest.approx(stats["bbox_mAP"], abs=0.05)
    twice = _evaluate([*IMAGES, ({**IMAGES[0][0], "image_id": torch.tensor(99)}, IMAGES[0][1])])
    assert twice["bbox_mAP"] != pytest.approx(stats["bbox_mAP"], abs=1e-3)  # so counting twice would show
    again = _evaluate([*IMAGES, IMAGES[0]])  # the same image id again: what a padded DDP sampler gives
    assert again == stats


def _rank(rank: int, port: int, folder: str) -> None:
    """Rank 0 evaluates images 0 and 2, rank 1 images 1 and 0 (the padded sampler's repeat)."""
    from datetime import timedelta

    import torch.distributed as dist
    from lightning.pytorch import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), RANK=str(rank),
                      WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
        evaluation = COCOEvaluation(num_classes=3, masks=True)
        mine = [IMAGES[0], IMAGES[2]] if rank == 0 else [IMAGES[1], IMAGES[0]]
        evaluation.update([(40, 40)] * 2, [t for t, _ in mine], [f for _, f in mine])
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as handle:
            json.dump(evaluation.compute(trainer), handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_under_ddp_every_rank_gets_the_figures_of_all_images_each_counted_once(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_rank, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    expected = _evaluate(IMAGES)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == pytest.approx(expected)


def test_drawing_fills_masks_outlines_boxes_and_leaves_out_low_scores():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    output = _found([[5, 5, 20, 20], [25, 25, 35, 35]], [1, 2], [0.9, 0.2])
    picture = draw_detections(image, output, ["background", "square", "disc"])
    assert picture.shape == image.shape and picture.dtype == torch.uint8
    assert picture[:, 10, 10].any() and picture[:, 5, 12].any()  # inside the mask, on the outline
    assert not picture[:, 30, 30].any() and not picture[:, 38, 2].any()  # the 0.2 detection, the background


# ------------------------------------------------------------------------------------ the recipe
def test_lr_warms_up_then_drops_at_the_epochs_given(coco_tree, tmp_path):
    """5 training images with objects, batch 2: 2 steps per epoch; steps after epochs 1 and 2 of 3."""
    seen = []

    class Lr(Callback):
        def on_train_batch_start(self, trainer, module, batch, index):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = _module(lr=1e-3, warmup_iters=2, warmup_ratio=0.1, lr_steps=[1, 2])
    trainer = make_trainer(tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[Lr()])
    trainer.fit(module, datamodule=COCODataModule(str(coco_tree), batch_size=2, num_workers=0))
    # 1e-3 quoted for a batch of 2 (base_batch_size): no scaling on one device
    assert seen == pytest.approx([1e-4, 5.5e-4, 1e-4, 1e-4, 1e-5, 1e-5])
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert isinstance(schedule, WarmupMultiStep) and schedule.milestones == [2, 4]
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0
    assert any(n.endswith(".tau") for n in no_decay) and all(p.dim() > 1 for p in groups["decay"]["params"])


def test_frozen_batchnorm_keeps_out_of_the_optimizer(coco_tree, tmp_path):
    module = DetectionModule(resolve_backbone("glnet_4g", **tiny_named()), num_classes=4, min_size=64, max_size=96,
                             detector=SLIM)
    trainer = make_trainer(tmp_path, max_steps=1, max_epochs=None, limit_val_batches=0)
    trainer.fit(module, datamodule=COCODataModule(str(coco_tree), batch_size=2, num_workers=0))
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    norms = module.model.backbone.batchnorms()
    assert norms and not any(id(p) in optimized for n in norms for p in n.parameters())


def test_the_backbone_starts_from_a_fit_checkpoints_ema_unless_a_checkpoint_is_restored(fit_checkpoint, tmp_path):
    module = _module(init_weights=str(fit_checkpoint.path), init_weights_key="ema")
    module.load_init_weights()
    for key, value in module.model.backbone.body.state_dict().items():
        torch.testing.assert_close(value, fit_checkpoint.ema[key.removeprefix("model.")])
    restored = _module(init_weights=str(tmp_path / "gone.ckpt"))
    restored.on_load_checkpoint({})
    restored.load_init_weights()  # the checkpoint's weights win: the missing file is not read


# ------------------------------------------------------------------------------------ fit, validate, test, predict
@pytest.mark.parametrize("kind, precision", [("maskrcnn", "32-true"), ("retinanet", "bf16-mixed")])
def test_fit_validate_test_and_a_checkpoint_that_rebuilds_the_module(kind, precision, coco_tree, tmp_path):
    data = COCODataModule(str(coco_tree), batch_size=2, num_workers=0, masks=kind == "maskrcnn")
    module = _module(kind)
    trainer = make_trainer(tmp_path, max_steps=2, max_epochs=None, precision=precision)
    trainer.fit(module, datamodule=data)
    kinds = ("bbox", "segm") if kind == "maskrcnn" else ("bbox",)
    names = {f"val/{k}_{n}" for k in kinds for n in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")}
    assert names <= set(trainer.callback_metrics) and not any("segm" in k for k in trainer.callback_metrics
                                                               if kind == "retinanet")
    assert all(0 <= trainer.callback_metrics[n] <= 1 or trainer.callback_metrics[n] == -1 for n in names)
    assert all(torch.isfinite(trainer.callback_metrics[k]) for k in trainer.callback_metrics if k.startswith("train/"))

    path = tmp_path / "det.ckpt"
    trainer.save_checkpoint(path)
    hparams = torch.load(path, weights_only=False)["hyper_parameters"]
    assert hparams["class_names"] == ["background", "square", "disc", "bar"] and hparams["category_ids"] == [3, 7, 11]
    assert hparams["detector"]["fpn_channels"] == 16 and hparams["backbone"] == glnet_stl(**tiny()).describe()
    rebuilt = DetectionModule.load_from_checkpoint(path)
    assert rebuilt.hparams.kind == kind
    for key, value in module.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value)
    (tested,) = make_trainer(tmp_path).test(rebuilt, datamodule=data, verbose=False)
    assert {n.replace("val/", "test/") for n in names} <= set(tested)


def test_predict_writes_pictures_and_coco_results(coco_tree, tmp_path):
    module = _module(detector={**SLIM, "score_thresh": 0.0, "detections_per_img": 5})
    data = COCODataModule(str(coco_tree), batch_size=2, num_workers=0)
    trainer = make_trainer(tmp_path, callbacks=[PredictionWriter()])
    outputs = trainer.predict(module, datamodule=data)
    pictures = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    document = json.loads((coco_tree / "annotations" / "instances_val2017.json").read_text())
    assert pictures == sorted(image["file_name"].replace(".jpg", ".png") for image in document["images"])
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert len(results) == 5 * len(document["images"])
    assert {r["image_id"] for r in results} == {image["id"] for image in document["images"]}
    assert {r["category_id"] for r in results} <= {3, 7, 11}
    assert all(len(r["bbox"]) == 4 and set(r["segmentation"]) == {"size", "counts"} for r in results)
    assert all("image" not in entry for batch in outputs for entry in batch)  # not held until the epoch ends
