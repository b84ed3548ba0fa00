"""``SegmentationModule``: a GLNet backbone with a Semantic FPN or UperNet head, trained with mmseg's ADE20K recipes.

Why a module of its own rather than options of ``GLNetModule``: everything around the network differs from
classification -- per-pixel batches of whole images of different sizes, an iteration-based schedule
(mmcv's: linear warm-up multiplying a cosine or poly decay counted from step 0), the auxiliary loss, mIoU
accumulated over the whole split, sliding-window inference. What is the same is shared: the backbone
description and checkpoint rebuild (``save_hyperparameters``), the one weights loader (through
``models/dense.py``), the weight-decay groups, the batch-scaled learning rate, the non-finite loss guard and
exact resume.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import draw_segmentation_masks, make_grid

from glnet_lightning.models.backbone import Backbone, resolve_backbone
from glnet_lightning.models.dense import load_backbone_weights
from glnet_lightning.models.segmentation import build_segmentation_model, slide_inference
from glnet_lightning.models.weights import WEIGHTS_CHOICES

from .nonfinite import NonFiniteLossGuard
from .optim import build_adamw
from .module import RecipeModule
from .schedule import WarmupDecay, planned_steps, scale_lr
from .slot_maps import slot_palette, to_uint8_images

__all__ = ["SegmentationModule", "render_masks", "save_masks", "segmentation_scores"]

IGNORE_INDEX = 255
INFERENCE_MODES = ("whole", "slide")


def segmentation_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """mmseg's scores from a confusion matrix accumulated over the whole split (rows: truth, columns: prediction):
    per-class IoU (NaN for a class neither in the truth nor predicted), mIoU (mean over the other classes),
    aAcc (all pixels) and per-class / mean accuracy."""
    confusion = confusion.double()
    hits = confusion.diag()
    truth, predicted = confusion.sum(1), confusion.sum(0)
    iou = hits / (truth + predicted - hits)  # 0 / 0 = NaN: the class is absent
    accuracy = hits / truth
    return {"IoU": iou, "mIoU": iou.nanmean(), "aAcc": hits.sum() / confusion.sum().clamp(min=1),
            "Acc": accuracy, "mAcc": accuracy.nanmean()}


def _tag(name: str) -> str:
    return name.strip().replace(" ", "_").replace("/", "_")


class SegmentationModule(RecipeModule):
    """Semantic segmentation with a GLNet (or any) backbone; the defaults are the Semantic FPN recipe.

    The loss is cross entropy averaged over the labelled pixels (255 ignored; mmseg's default divides by all
    pixels), plus ``aux_weight`` times the auxiliary head's (UperNet). Validation and test accumulate one
    confusion matrix over the split and log mmseg's ``mIoU``, ``aAcc``, ``mAcc`` and ``IoU/<class>``
    (:func:`segmentation_scores`).

    Args:
        backbone: the network (as ``GLNetModule``'s: a named GLNet with any setting changed, ``GLNetArgs``,
            ``TimmModel``); checkpoints store its whole description.
        num_classes: classes of the data (the CLI links it to the data module's ``num_classes``).
        head: ``semfpn`` (Semantic FPN) or ``upernet`` (UperNet with the auxiliary FCN head on stage 3).
        head_settings: the head's sizes changed (``models/segmentation.py``: semfpn ``pyramid_channels``,
            ``segmentation_channels``, ``dropout``; upernet ``channels``, ``dropout``, ``aux_channels``,
            ``aux_weight``); the defaults are mmseg's.
        drop_path_rate: the backbone's stochastic depth (0.15 for Semantic FPN, 0.3 for UperNet on GLNet-4G).
        lr: peak learning rate for a global batch of ``base_batch_size``, scaled linearly by the actual one.
        weight_decay / betas: AdamW's (no decay on norms, biases and the backbone's ``no_weight_decay`` names).
        schedule: ``cosine`` (Semantic FPN) or ``poly`` (UperNet), per optimizer step over the run
            (``trainer.max_steps``), see :class:`WarmupDecay`.
        warmup_steps / warmup_ratio: linear warm-up length and starting factor (1000 from 0.1 / 1500 from 1e-6).
        poly_power / min_lr_ratio: the poly exponent and the floor of either decay, as a fraction of ``lr``.
        inference: ``whole`` image, or ``slide``: windows of ``slide_crop`` every ``slide_stride`` pixels.
        mask_images: validation images drawn with their true and predicted masks to TensorBoard (0: none).
        nonfinite_loss: a NaN/inf loss ``stop``s the run or its step is ``skip``ped (lit/nonfinite.py).
        init_weights: classification weights for the backbone (a published checkpoint, a state dict, a ``fit``
            checkpoint of ``GLNetModule``); the classifier and what else a dense backbone lacks are dropped,
            the rest loaded strictly. Loaded when the Trainer first uses the module, unless a checkpoint is
            restored.
        init_weights_key: ``raw``, ``ema`` or ``auto`` (the EMA of a ``fit`` checkpoint that has one).
    """

    #: The metric and direction ``glnet fit`` keeps ``best.ckpt`` by.
    CHECKPOINT_MONITOR = ("val/mIoU", "max")

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 150,
        head: str = "semfpn",
        head_settings: dict[str, Any] | None = None,
        drop_path_rate: float = 0.15,
        lr: float = 2e-4,
        base_batch_size: int = 16,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        schedule: str = "cosine",
        warmup_steps: int = 1000,
        warmup_ratio: float = 0.1,
        poly_power: float = 1.0,
        min_lr_ratio: float = 0.0,
        inference: str = "whole",
        slide_crop: int = 512,
        slide_stride: int = 341,
        mask_images: int = 4,
        nonfinite_loss: str = "stop",
        init_weights: str | None = None,
        init_weights_key: str = "auto",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: segmentation needs at least 2 classes")
        if lr <= 0 or base_batch_size < 1 or weight_decay < 0 or warmup_steps < 0 or mask_images < 0:
            raise ValueError(f"need lr > 0, base_batch_size >= 1, weight_decay >= 0, warmup_steps >= 0, "
                             f"mask_images >= 0; got {lr}, {base_batch_size}, {weight_decay}, {warmup_steps}, "
                             f"{mask_images}")
        WarmupDecay(1, 0, warmup_ratio, schedule, poly_power, min_lr_ratio)  # checks the schedule's settings now
        if inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {list(INFERENCE_MODES)}, got {inference!r}")
        if not 1 <= slide_stride <= slide_crop:
            raise ValueError(f"need 1 <= slide_stride <= slide_crop, got {slide_stride}, {slide_crop}")
        if init_weights_key not in WEIGHTS_CHOICES:
            raise ValueError(f"init_weights_key={init_weights_key!r}: choose one of {list(WEIGHTS_CHOICES)}")
        self.nonfinite_guard = NonFiniteLossGuard(nonfinite_loss)
        description = resolve_backbone(backbone)
        self.save_hyperparameters()
        # the whole description as plain data: a checkpoint rebuilds this network whatever the defaults become
        self.hparams["backbone"] = description.describe()
        self.model = build_segmentation_model(head, description, num_classes, drop_path_rate, **(head_settings or {}))
        self.class_names = [str(i) for i in range(num_classes)]
        self._init_weights_pending = init_weights is not None
        self.optimizer_step_skipped = False  # set by NonFiniteLossGuard
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self._drawn: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ------------------------------------------------------------------ model
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits (B, num_classes, H, W) of normalised images of any size."""
        return self.model(images)

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Logits by the configured ``inference``: the whole image at once, or sliding windows."""
        hp = self.hparams
        if hp.inference == "slide":
            return slide_inference(self.model, images, hp.num_classes, hp.slide_crop, hp.slide_stride)
        return self.model(images)

    def _load_start_weights(self) -> str:
        return load_backbone_weights(self.model.backbone, self.hparams.init_weights, self.hparams.init_weights_key,
                                     what="init_weights")

    def setup(self, stage: str) -> None:
        """Per-class metric names from the data module's ``class_names`` when it has them."""
        data = self.trainer.datamodule if self.trainer is not None else None
        names = getattr(data, "class_names", None)
        if names is not None and len(names) == self.hparams.num_classes:
            self.class_names = [str(n) for n in names]

    def configure_optimizers(self):
        hp = self.hparams
        total_steps, _ = planned_steps(self.trainer)
        global_batch = self.global_batch_size()
        lr = scale_lr(hp.lr, global_batch, hp.base_batch_size)
        warmup = min(hp.warmup_steps, total_steps)
        schedule = WarmupDecay(total_steps, warmup, hp.warmup_ratio, hp.schedule, hp.poly_power, hp.min_lr_ratio)
        rank_zero_info(f"lr {hp.lr:g} x global batch {global_batch} / {hp.base_batch_size} = {lr:.4g}; {schedule}")
        optimizer = build_adamw(self.model, lr=lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        scheduler = LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        logits, aux = self.model.forward_with_aux(images)
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        if aux is not None:
            aux_loss = F.cross_entropy(aux, masks, ignore_index=IGNORE_INDEX)
            self.log("train/aux_loss", aux_loss, on_step=True, on_epoch=False, batch_size=images.shape[0])
            loss = loss + self.model.aux_weight * aux_loss
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=images.shape[0])
        return loss

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def _sizes(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[int]]]:
        """Each image's (height, width) in the padded batch and its annotation's; both the batch's without
        :func:`~glnet_lightning.data.ade20k.pad_collate`'s ``image_size`` / ``mask_size``."""
        count = len(batch["image"])
        image_sizes = batch["image_size"].tolist() if "image_size" in batch else [list(batch["image"].shape[-2:])] * count
        mask_sizes = batch["mask_size"].tolist() if "mask_size" in batch else image_sizes
        return image_sizes, mask_sizes

    def _per_image_logits(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each image's logits (1, C, H, W) at its annotation's size, as mmseg scores them: the padded batch's
        logits cropped to the image, upsampled (bilinear) to the original size when the image was resized."""
        logits = self.infer(batch["image"])
        out = []
        for i, ((h, w), (mask_h, mask_w)) in enumerate(zip(*self._sizes(batch))):
            one = logits[i:i + 1, :, :h, :w]
            if (h, w) != (mask_h, mask_w):
                one = F.interpolate(one, size=(mask_h, mask_w), mode="bilinear", align_corners=False)
            out.append(one)
        return out

    def _evaluate(self, batch: dict[str, torch.Tensor], confusion: MulticlassConfusionMatrix, stage: str) -> None:
        image_sizes, mask_sizes = self._sizes(batch)
        losses = []
        for i, one in enumerate(self._per_image_logits(batch)):
            (h, w), (mask_h, mask_w) = image_sizes[i], mask_sizes[i]
            truth = batch["mask"][i:i + 1, :mask_h, :mask_w]
            prediction = one.argmax(1)
            confusion.update(prediction, truth)
            if (truth != IGNORE_INDEX).any():
                losses.append(F.cross_entropy(one.float(), truth, ignore_index=IGNORE_INDEX))
            if len(self._drawn) < self.hparams.mask_images and self.trainer.is_global_zero:
                image = F.interpolate(batch["image"][i:i + 1, :, :h, :w].float(), size=(mask_h, mask_w),
                                      mode="bilinear", align_corners=False)
                self._drawn.append((image.cpu(), truth.cpu(), prediction.cpu()))
        if losses:
            self.log(f"{stage}/loss", torch.stack(losses).mean(), on_epoch=True, sync_dist=True,
                     batch_size=len(losses))

    def _log_scores(self, confusion: MulticlassConfusionMatrix, stage: str) -> None:
        scores = segmentation_scores(confusion.compute())
        confusion.reset()
        for name in ("mIoU", "aAcc", "mAcc"):
            value = scores[name]
            self.log(f"{stage}/{name}", 0.0 if torch.isnan(value) else value.float(), sync_dist=True,
                     prog_bar=name == "mIoU")
        for name, iou in zip(self.class_names, scores["IoU"].tolist()):
            if not math.isnan(iou):  # a class absent from the split and never predicted has no IoU
                self.log(f"{stage}/IoU/{_tag(name)}", iou, sync_dist=True)
        self._draw_masks(stage)

    def _draw_masks(self, stage: str) -> None:
        drawn, self._drawn = self._drawn, []
        logger = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if not drawn or logger is None or self.trainer.sanity_checking:
            return
        rows = [render_masks(image, truth, prediction, self.hparams.num_classes)
                for image, truth, prediction in drawn]
        for i, row in enumerate(rows):
            logger.experiment.add_image(f"{stage}/masks/{i}", row, global_step=self.global_step)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_confusion, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_confusion, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_confusion, "test")

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_confusion, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, list]:
        """The predicted class of every pixel of each image at its original size, ``{"masks": [(H, W) uint8],
        "names": [stem]}``; ``glnet predict`` writes them as PNGs (:func:`save_masks`)."""
        masks = [one.argmax(1)[0].to(torch.uint8).cpu() for one in self._per_image_logits(batch)]
        names = batch.get("name") or [f"{batch_idx:06d}_{i}" for i in range(len(masks))]
        return {"masks": masks, "names": list(names)}

    def write_predictions(self, prediction: dict[str, list], folder: str) -> list:
        """``glnet predict`` output of a batch (``PredictionWriter``): each mask as ``folder/<image>.png``."""
        save_masks(prediction, folder)
        return []


def save_masks(prediction: dict[str, list], folder: str) -> None:
    """Write each predicted mask of a :meth:`SegmentationModule.predict_step` output as ``folder/<name>.png``
    (one class index per pixel, 0-based), then drop the masks from ``prediction`` (the predict loop keeps it)."""
    import os

    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for mask, name in zip(prediction.pop("masks"), prediction["names"]):
        Image.fromarray(mask.numpy(), mode="L").save(os.path.join(folder, f"{name}.png"))


def render_masks(image: torch.Tensor, truth: torch.Tensor, prediction: torch.Tensor, num_classes: int,
                 alpha: float = 0.6) -> torch.Tensor:
    """One uint8 (3, H, 3W) picture: the image, the true classes over it, the predicted classes over it
    (ignored pixels left bare)."""
    picture = to_uint8_images(image)[0]
    palette = slot_palette(num_classes)
    classes = torch.arange(num_classes).view(-1, 1, 1)
    views = [picture] + [draw_segmentation_masks(picture, labels[0] == classes, alpha=alpha, colors=palette)
                         for labels in (truth, prediction)]
    return make_grid(views, nrow=3, padding=2, pad_value=255)
