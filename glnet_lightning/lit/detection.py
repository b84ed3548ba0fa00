"""``DetectionModule``: object detection and instance segmentation (Mask R-CNN / RetinaNet) over a GLNet
backbone, with the paper's COCO recipes (docs/design.md, section 7) as defaults.

Why the COCO evaluation is pycocotools' ``COCOeval`` run here and not torchmetrics' ``MeanAveragePrecision``:
under DDP Lightning's sampler repeats images to even out the ranks, and the metric's synchronisation needs
the same number of images on every rank; a repeated image would be counted twice. :class:`COCOEvaluation`
gathers every rank's results, keeps each image once (by image id) and evaluates on rank 0 (COCOeval takes
a minute on COCO's 5000 validation images), then shares the figures with every rank.

Mixed precision: the backbone and pyramid run in the Trainer's autocast dtype, the heads in float32
(models/detection.py says why).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from glnet_lightning.models.backbone import Backbone, resolve_backbone
from glnet_lightning.models.dense import load_backbone_weights
from glnet_lightning.models.detection import DETECTOR_KINDS, DetectorSettings, build_detection_model
from glnet_lightning.models.layers import channels_last_conv_weights
from glnet_lightning.models.weights import WEIGHTS_CHOICES

from .exact_resume import gather_objects
from .module import RecipeModule
from .nonfinite import NonFiniteLossGuard
from .optim import build_adamw
from .schedule import WarmupMultiStep, planned_steps, scale_lr

__all__ = ["COCO_STATS", "COCOEvaluation", "DetectionModule", "draw_detections", "save_detections"]

#: COCOeval's first six figures under our metric names: ``<stage>/<bbox|segm>_<name>``.
COCO_STATS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
#: Detections below this score are not drawn (TensorBoard images, ``glnet predict`` pictures).
DRAW_SCORE = 0.5
#: Box and mask colour of each label (cycled).
COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def _rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO RLEs of (N, H, W) binary masks."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    return mask_utils.encode(array)


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    boxes = boxes.detach().float().cpu()
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()


class COCOEvaluation:
    """COCO box (and mask) AP of one evaluation pass over a split, every image counted once.

    ``update`` stores per image its ground truth and detections in COCO's own form (boxes as x y w h,
    masks as RLE: kilobytes per image); ``compute`` gathers the ranks, evaluates with ``COCOeval`` and
    returns ``{"bbox_mAP": ..., "segm_mAP_50": ...}`` (:data:`COCO_STATS`; -1 where the split has no
    object of that size, COCO's convention). Labels are the data's contiguous 1..K on both sides.
    """

    def __init__(self, num_classes: int, masks: bool) -> None:
        self.num_classes = num_classes
        self.iou_types = ("bbox", "segm") if masks else ("bbox",)
        self.images: dict[int, dict[str, Any]] = {}

    def reset(self) -> None:
        self.images = {}

    def update(self, sizes: Sequence[tuple[int, int]], targets: Sequence[dict[str, Any]],
               outputs: Sequence[dict[str, torch.Tensor]]) -> None:
        masks = "segm" in self.iou_types
        for (height, width), target, output in zip(sizes, targets, outputs):
            image_id = int(target["image_id"])
            truth = [{"bbox": box, "category_id": int(label), "iscrowd": int(crowd), "area": float(area)}
                     for box, label, crowd, area in zip(_xywh(target["boxes"]), target["labels"].tolist(),
                                                        target["iscrowd"].tolist(), target["area"].tolist())]
            found = [{"bbox": box, "category_id": int(label), "score": float(score)}
                     for box, label, score in zip(_xywh(output["boxes"]), output["labels"].tolist(),
                                                  output["scores"].tolist())]
            if masks:
                for ann, rle in zip(truth, _rle(target["masks"])):
                    ann["segmentation"] = rle
                for det, rle in zip(found, _rle(output["masks"][:, 0] > 0.5)):
                    det["segmentation"] = rle
            self.images[image_id] = {"size": (int(height), int(width)), "truth": truth, "found": found}

    def compute(self, trainer: Any | None = None) -> dict[str, float]:
        """Evaluate what all ranks saw (``trainer``: gathers under DDP); every rank gets the same figures."""
        images: dict[int, dict[str, Any]] = {}
        for part in (gather_objects(trainer, self.images) if trainer is not None else [self.images]):
            for image_id, entry in part.items():
                images.setdefault(image_id, entry)  # an image a padded sampler gave two ranks: once
        is_zero = trainer is None or trainer.is_global_zero
        stats = self._evaluate(images) if is_zero else None
        if trainer is not None and trainer.world_size > 1:
            stats = trainer.strategy.broadcast(stats, src=0)
        return stats

    def _evaluate(self, images: dict[int, dict[str, Any]]) -> dict[str, float]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        stats: dict[str, float] = {}
        truth = COCO()
        truth.dataset = {
            "images": [{"id": i, "height": e["size"][0], "width": e["size"][1]} for i, e in images.items()],
            "annotations": [{**ann, "id": n, "image_id": i} for n, (i, ann) in enumerate(
                ((i, ann) for i, e in images.items() for ann in e["truth"]), start=1)],
            "categories": [{"id": c} for c in range(1, self.num_classes)],
        }
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
            truth.createIndex()
            for iou_type in self.iou_types:
                found = [{**({k: v for k, v in det.items() if k != "bbox"} if iou_type == "segm" else
                             {k: v for k, v in det.items() if k != "segmentation"}), "image_id": i}
                         for i, e in images.items() for det in e["found"]]
                if not found or not truth.dataset["annotations"]:
                    values = [0.0] * len(COCO_STATS)
                else:
                    # masks: COCO's areas come from the mask when the detection has no box (detectron2 does this too)
                    evaluation = COCOeval(truth, truth.loadRes(found), iou_type)
                    evaluation.params.imgIds = sorted(images)
                    evaluation.evaluate()
                    evaluation.accumulate()
                    evaluation.summarize()
                    values = [float(v) for v in evaluation.stats[: len(COCO_STATS)]]
                stats.update({f"{iou_type}_{name}": value for name, value in zip(COCO_STATS, values)})
        return stats


def draw_detections(image: torch.Tensor, output: dict[str, torch.Tensor], class_names: Sequence[str] | None = None,
                    score: float = DRAW_SCORE) -> torch.Tensor:
    """``image`` (uint8 (3, H, W)) with the detections scoring at least ``score`` drawn: masks filled,
    boxes outlined and named (``class 0.87``)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = output["scores"] >= score
    labels = output["labels"][keep].tolist()
    names = [class_names[k] if class_names is not None and k < len(class_names) else str(k) for k in labels]
    captions = [f"{n} {s:.2f}" for n, s in zip(names, output["scores"][keep].tolist())]
    colours = [COLOURS[k % len(COLOURS)] for k in labels]  # one per class (torchvision's default palette starts black)
    picture = image.detach().cpu()
    if "masks" in output and keep.any():
        masks = output["masks"][keep][:, 0].detach().cpu() > 0.5
        picture = draw_segmentation_masks(picture, masks, alpha=0.45, colors=colours)
    if keep.any():
        picture = draw_bounding_boxes(picture, output["boxes"][keep].detach().cpu(), labels=captions, colors=colours,
                                      width=1 if min(picture.shape[-2:]) < 200 else 2)
    return picture


def save_detections(prediction: list[dict[str, Any]], folder: str, class_names: Sequence[str] | None = None,
                    category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Save each image of a ``predict_step`` output with its detections drawn (``folder/<image>.png``) and
    return the detections in COCO's results format (``category_ids``: the COCO id of labels 1..K). The image
    and masks are dropped from the entries: the Trainer keeps predict outputs until the epoch ends."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    results = []
    for entry in prediction:
        picture = draw_detections(entry["image"], entry, class_names)
        name = os.path.splitext(os.path.basename(entry.get("file_name") or f"{entry['image_id']:012d}"))[0]
        Image.fromarray(picture.permute(1, 2, 0).numpy()).save(os.path.join(folder, f"{name}.png"))
        masks = _rle(entry["masks"][:, 0] > 0.5) if "masks" in entry else [None] * len(entry["boxes"])
        for box, label, score, rle in zip(_xywh(entry["boxes"]), entry["labels"].tolist(), entry["scores"].tolist(),
                                          masks):
            result = {"image_id": entry["image_id"], "score": round(score, 5), "bbox": [round(v, 2) for v in box],
                      "category_id": category_ids[label - 1] if category_ids is not None else label}
            if rle is not None:
                result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            results.append(result)
        entry.pop("image")
        entry.pop("masks", None)
    return results


class DetectionModule(RecipeModule):
    """Mask R-CNN or RetinaNet over a GLNet backbone, trained with the paper's COCO recipe.

    The defaults are the 1x schedule: AdamW lr 1e-4 for a global batch of 16 (scaled by the real one),
    weight decay 0.05 (none on norms, biases, temperatures, slots), linear warm-up over 500 iterations from
    0.001 x, lr x 0.1 after epochs 8 and 11 of 12 (the Trainer's ``max_epochs``), 1333 x 800 images.
    Validation and test log COCO's box AP (``<stage>/bbox_mAP``, ``_50``, ``_75``, ``_s``, ``_m``, ``_l``)
    and for Mask R-CNN the same mask AP (``<stage>/segm_mAP...``), over the whole split; a few validation
    images with their detections go to TensorBoard.

    Args:
        backbone: the network, every setting of it (as GLNetModule's: a named GLNet, ``GLNetArgs``, ``TimmModel``).
        num_classes: categories + 1 (the background; the CLI links it to the data module's ``num_classes``).
        kind: ``maskrcnn`` (boxes and instance masks) or ``retinanet`` (boxes).
        drop_path_rate: stochastic depth of the backbone (0.2 in the paper's detection setups).
        min_size / max_size: images are resized so the short side is ``min_size`` and the long side at most
            ``max_size`` (torchvision's names); a list of short sides is multi-scale training (one drawn per
            image, the last one for evaluation): the 3x schedule's 480..800.
        freeze_batchnorm: keep the backbone's BatchNorm layers as ``init_weights`` gave them (statistics and
            affine parameters fixed); false: they train (use ``--trainer.sync_batchnorm true`` under DDP).
        detector: the parts besides the backbone (``DetectorSettings``: pyramid width, anchors, head widths,
            sampled proposals); torchvision's defaults.
        lr: peak learning rate for a global batch of ``base_batch_size``.
        weight_decay: AdamW decay of weights (RetinaNet's recipe: 1e-4).
        lr_steps: epochs after which the lr is multiplied by ``lr_gamma`` (fractions allowed).
        warmup_iters / warmup_ratio: linear warm-up over that many optimizer steps, from ``warmup_ratio`` x lr.
        nonfinite_loss: ``stop`` or ``skip`` on a NaN/inf loss (lit/nonfinite.py).
        init_weights / init_weights_key: classification weights for the backbone (a published checkpoint, a
            state dict, a ``fit`` checkpoint of GLNetModule; ``raw`` / ``ema`` / ``auto``), loaded when the
            Trainer first uses the module unless a checkpoint is restored. The classifier is not used.
        images_to_log: validation images drawn with their detections into TensorBoard each validation.
        class_names / category_ids: the data's label names (background first) and COCO category ids of labels
            1..K; taken from the data module when not given and kept in checkpoints (``glnet predict`` output).
    """

    CHECKPOINT_MONITOR = ("val/bbox_mAP", "max")

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 81,
        kind: str = "maskrcnn",
        drop_path_rate: float = 0.2,
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        freeze_batchnorm: bool = True,
        detector: DetectorSettings | None = None,
        lr: float = 1e-4,
        base_batch_size: int = 16,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_steps: list[float] = (8, 11),
        lr_gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_ratio: float = 0.001,
        nonfinite_loss: str = "stop",
        init_weights: str | None = None,
        init_weights_key: str = "auto",
        images_to_log: int = 4,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        if kind not in DETECTOR_KINDS:
            raise ValueError(f"kind={kind!r}: choose one of {list(DETECTOR_KINDS)}")
        if lr <= 0 or base_batch_size < 1 or weight_decay < 0 or images_to_log < 0:
            raise ValueError(f"need lr > 0, base_batch_size >= 1, weight_decay >= 0, images_to_log >= 0; got lr={lr}, "
                             f"base_batch_size={base_batch_size}, weight_decay={weight_decay}, "
                             f"images_to_log={images_to_log}")
        if init_weights_key not in WEIGHTS_CHOICES:
            raise ValueError(f"init_weights_key={init_weights_key!r}: choose one of {list(WEIGHTS_CHOICES)}")
        self.nonfinite_guard = NonFiniteLossGuard(nonfinite_loss)
        self.backbone = resolve_backbone(backbone)
        settings = DetectorSettings(**detector) if isinstance(detector, dict) else (detector or DetectorSettings())
        self.save_hyperparameters()
        # plain data, so a checkpoint rebuilds this network and detector whatever the defaults become
        self.hparams["backbone"] = self.backbone.describe()
        self.hparams["detector"] = dataclasses.asdict(settings)
        self.hparams["lr_steps"] = [float(e) for e in lr_steps]
        self.model = build_detection_model(kind, self.backbone, num_classes, drop_path_rate, min_size=min_size,
                                           max_size=max_size, freeze_batchnorm=freeze_batchnorm,
                                           **dataclasses.asdict(settings))
        self.masks = kind == "maskrcnn"
        self.evaluation = COCOEvaluation(num_classes, self.masks)
        self._init_weights_pending = init_weights is not None
        self.optimizer_step_skipped = False  # NonFiniteLossGuard's flag (no EMA here to keep out of a skipped step)
        self._logged_images: list[torch.Tensor] = []

    # ------------------------------------------------------------------ model
    def forward(self, images: list[torch.Tensor] | torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None):
        """torchvision's: losses (training, with targets) or per-image detections in the images' own pixels."""
        return self.model(images, targets)

    def _load_start_weights(self) -> str:
        return load_backbone_weights(self.model.backbone.body, self.hparams.init_weights,
                                     self.hparams.init_weights_key, what="init_weights")

    def setup(self, stage: str) -> None:
        """The data's label names and category ids go into the hyper-parameters (and so checkpoints)."""
        data = self.trainer.datamodule if self.trainer is not None else None
        for name in ("class_names", "category_ids"):
            if self.hparams.get(name) is None and data is not None and getattr(data, name, None) is not None:
                self.hparams[name] = list(getattr(data, name))

    def configure_model(self) -> None:
        channels_last_conv_weights(self.model.backbone)  # GLNet's maps are channels_last (GLNetModule says why)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        total_steps, steps_per_epoch = planned_steps(self.trainer)
        global_batch = self.global_batch_size()
        lr = scale_lr(hp.lr, global_batch, hp.base_batch_size)
        milestones = [round(epoch * steps_per_epoch) for epoch in hp.lr_steps]
        warmup = min(int(hp.warmup_iters), total_steps)
        rank_zero_info(f"lr {hp.lr:g} x global batch {global_batch} / {hp.base_batch_size} = {lr:.4g}; "
                       f"{warmup} warm-up steps, x{hp.lr_gamma:g} at steps {milestones} of {total_steps}")
        optimizer = build_adamw(self.model, lr=lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        schedule = WarmupMultiStep(milestones, hp.lr_gamma, warmup, hp.warmup_ratio)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": LambdaLR(optimizer, schedule), "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _floats(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """uint8 images (what the loaders carry: a quarter of the bytes to move) as floats in [0, 1]."""
        return [image.float().div_(255) if image.dtype == torch.uint8 else image for image in images]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(self._floats(images), targets)
        loss = sum(losses.values())
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(images))
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, on_step=True, on_epoch=False,
                      batch_size=len(images))
        return loss

    def _evaluate(self, batch: Any, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        images, targets = batch
        outputs = self.model(self._floats(images))
        self.evaluation.update([tuple(image.shape[-2:]) for image in images], targets, outputs)
        return outputs

    def on_validation_epoch_start(self) -> None:
        self.evaluation.reset()
        self._logged_images = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        outputs = self._evaluate(batch, batch_idx)
        wanted = self.hparams.images_to_log - len(self._logged_images)
        if wanted > 0 and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            names = self.hparams.class_names
            self._logged_images += [draw_detections(image, output, names)
                                    for image, output in zip(batch[0][:wanted], outputs[:wanted])]

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx)

    def _log_evaluation(self, stage: str) -> None:
        stats = self.evaluation.compute(self.trainer)
        self.log_dict({f"{stage}/{name}": value for name, value in stats.items()}, prog_bar=False)
        self.evaluation.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")
        logger = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is not None:
            for index, picture in enumerate(self._logged_images):
                logger.experiment.add_image(f"val/detections_{index}", picture, global_step=self.global_step)
        self._logged_images = []

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per image: ``image_id``, ``file_name``, the uint8 ``image`` and its detections (``boxes`` x1 y1 x2 y2 in
        its pixels, ``labels`` 1..K, ``scores``, Mask R-CNN's ``masks`` (N, 1, H, W) probabilities); the
        PredictionWriter draws them and writes COCO-format results."""
        images, targets = batch
        outputs = self.model(self._floats(images))
        return [{"image_id": int(t["image_id"]), "file_name": t.get("file_name"), "image": image.cpu(),
                 **{k: v.cpu() for k, v in output.items()}}
                for image, t, output in zip(images, targets, outputs)]

    def write_predictions(self, prediction: list[dict[str, Any]], folder: str) -> list[dict[str, Any]]:
        """``glnet predict`` output of a batch (``PredictionWriter``): each image with its detections drawn as
        ``folder/<image>.png``; returns the detections in COCO's results format (``predictions.json``)."""
        return save_detections(prediction, folder, self.hparams.get("class_names"), self.hparams.get("category_ids"))
