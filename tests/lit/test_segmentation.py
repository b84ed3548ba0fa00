"""SegmentationModule (lit/segmentation.py): mmcv's iteration schedules, mmseg's mIoU over the whole split, the
auxiliary loss, lr scaling and weight-decay groups, sliding windows, and backbone weights from a published file."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glnet_lightning.data import ADE20KDataModule
from glnet_lightning.lit import SegmentationModule
from glnet_lightning.lit.optim import no_weight_decay_names
from glnet_lightning.lit.schedule import WarmupDecay
from glnet_lightning.lit.segmentation import segmentation_scores
from glnet_lightning.models import GLNetArgs
from glnet_lightning.models.official import official_kwargs_to_ours
from testkit import tiny_named
from testkit.data import make_trainer

SMALL_FPN = {"pyramid_channels": 32, "segmentation_channels": 32}


def _module(**kwargs) -> SegmentationModule:
    settings = {"backbone": {"class_path": "glnet_4g", "init_args": tiny_named()}, "num_classes": 150,
                "head_settings": SMALL_FPN, "warmup_steps": 1, "mask_images": 0, **kwargs}
    return SegmentationModule(**settings)


def _data(root, **kwargs) -> ADE20KDataModule:
    return ADE20KDataModule(str(root), **{"crop_size": 64, "scale": (256, 64), "batch_size": 2, "num_workers": 0,
                                          "val_batch_size": 2, **kwargs})


def test_schedules_are_mmcv_s():
    cosine = WarmupDecay(1000, warmup_steps=100, warmup_ratio=0.1, decay="cosine")
    assert cosine(0) == pytest.approx(0.1)  # warm-up multiplies the decay counted from step 0
    assert cosine(50) == pytest.approx((1 - 0.5 * 0.9) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert cosine(500) == pytest.approx(0.5) and cosine(1000) == pytest.approx(0.0)
    poly = WarmupDecay(1600, warmup_steps=1500, warmup_ratio=1e-6, decay="poly", power=1.0)
    assert poly(0) == pytest.approx(1e-6) and poly(800) == pytest.approx(0.5 * (1 - (1 - 800 / 1500) * (1 - 1e-6)))
    assert poly(1500) == pytest.approx(100 / 1600) and poly(1600) == 0.0 and poly(2000) == 0.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        WarmupDecay(10, decay="step")


def test_scores_are_mmseg_s_accumulated_per_class_and_averaged_over_classes_present():
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [0, 0, 0]])  # rows: truth, columns: prediction
    scores = segmentation_scores(confusion)
    # class 0: 3 / (4 + 3 - 3); class 1 never true but once predicted: 0; class 2 absent everywhere: no IoU
    assert scores["IoU"][:2].tolist() == [0.75, 0.0] and math.isnan(scores["IoU"][2])
    assert scores["mIoU"].item() == pytest.approx(0.375) and scores["aAcc"].item() == pytest.approx(0.75)


def test_validation_miou_is_accumulated_over_the_split_at_the_annotations_size(ade20k_tree, tmp_path):
    module, data = _module(), _data(ade20k_tree, val_batch_size=1)  # one image per batch: no padding, as mmseg
    logged = make_trainer(tmp_path).validate(module, datamodule=data, verbose=False)[0]
    # the definition, image by image: logits of the resized image upsampled to the annotation, one confusion matrix
    confusion = torch.zeros(150, 150, dtype=torch.long)
    module.eval()
    with torch.no_grad():
        for sample in (data.val_set[i] for i in range(len(data.val_set))):
            logits = F.interpolate(module(sample["image"][None]), size=sample["mask"].shape, mode="bilinear")
            truth, prediction = sample["mask"].flatten(), logits.argmax(1).flatten()
            keep = truth != 255
            confusion += torch.bincount(truth[keep] * 150 + prediction[keep], minlength=150 ** 2).view(150, 150)
    expected = segmentation_scores(confusion)
    assert logged["val/mIoU"] == pytest.approx(expected["mIoU"].item(), rel=1e-5)
    assert logged["val/aAcc"] == pytest.approx(expected["aAcc"].item(), rel=1e-5)
    present = [i for i, iou in enumerate(expected["IoU"].tolist()) if not math.isnan(iou)]
    names = {f"val/IoU/{data.class_names[i].replace(' ', '_')}" for i in present}
    assert names == {key for key in logged if key.startswith("val/IoU/")}


def test_sliding_windows_larger_than_the_images_give_the_whole_image_scores(ade20k_tree, tmp_path):
    data = _data(ade20k_tree)
    whole = _module()
    slide = _module(inference="slide", slide_crop=512, slide_stride=341)
    slide.load_state_dict(whole.state_dict())
    scores = [make_trainer(tmp_path).validate(m, datamodule=data, verbose=False)[0]["val/mIoU"] for m in (whole, slide)]
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)


def test_upernet_trains_on_the_main_loss_plus_0_4_of_the_auxiliary_one():
    module = _module(head="upernet", head_settings={"channels": 32, "aux_channels": 16, "dropout": 0.0})
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 64, 64), "mask": torch.randint(0, 150, (2, 64, 64))}
    batch["mask"][:, :8] = 255
    module.train()
    loss = module.training_step(batch, 0)
    logits, aux = module.model.forward_with_aux(batch["image"])
    expected = F.cross_entropy(logits, batch["mask"], ignore_index=255) \
        + 0.4 * F.cross_entropy(aux, batch["mask"], ignore_index=255)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lr_follows_the_global_batch_and_norms_get_no_decay(ade20k_tree, tmp_path):
    module = _module(lr=2e-4, base_batch_size=16, weight_decay=1e-4, warmup_steps=0)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=_data(ade20k_tree, batch_size=2))
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert all(g["initial_lr"] == pytest.approx(2e-4 * 2 / 16) for g in groups.values())
    assert groups["decay"]["weight_decay"] == 1e-4 and groups["no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    names = dict(module.model.named_parameters())
    assert all(id(names[n]) in no_decay for n in no_weight_decay_names(module.model))
    norms = [m.weight for m in module.model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d,
                                                                        torch.nn.GroupNorm))]
    assert norms and all(id(w) in no_decay for w in norms)


def test_a_published_checkpoint_starts_the_backbone_as_the_reference_computes_it(conformance, tmp_path):
    fixture = torch.load(conformance / "g4_tiny.pt", weights_only=False)
    path = tmp_path / "published.pth"
    torch.save({"model": fixture["state_dict"]}, path)  # the reference layout, classifier included
    settings = official_kwargs_to_ours(**fixture["official_kwargs"])
    settings.pop("num_classes")
    module = _module(backbone=GLNetArgs(**settings), num_classes=11, init_weights=str(path))
    module.load_init_weights()
    with torch.no_grad():
        stages = module.model.eval().backbone(fixture["input"])
    for ours, reference in zip(stages, fixture["stage_outputs"], strict=True):
        assert (ours - reference).abs().max().item() <= 1e-4 * max(1.0, reference.abs().max().item())
