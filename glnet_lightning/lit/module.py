"""``GLNetModule``: a GLNet (or any timm model) trained with the paper's ImageNet recipe.

Why one module owns the whole recipe (docs/design.md, section 2): the optimizer groups, the
batch-scaled warm-up/cosine schedule, Mixup/CutMix with the matching loss (or token labeling with
its own), and the EMA copy all depend on each other and on the model; everything is a constructor
argument so a config file (LightningCLI) can change any of it, and ``save_hyperparameters`` lets
``GLNetModule.load_from_checkpoint(path)`` rebuild the model with no config at all.
Gradient clipping, precision and devices are Trainer settings, not module arguments.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from glnet_lightning.models.backbone import Backbone, resolve_backbone
from glnet_lightning.models.layers import channels_last_conv_weights
from glnet_lightning.models.weights import WEIGHTS_CHOICES, load_weights
from glnet_lightning.token_labeling import TokenLabelError, TokenLabelLoss, token_label_targets

from .ema import EMA_CHECKPOINT_KEY, EmaWeights
from .lightning_internals import attached_trainer
from .mixing import build_mixup, build_train_criterion, one_hot_smoothed
from .nonfinite import NonFiniteLossGuard
from .optim import build_adamw
from .schedule import WarmupCosine, global_batch_size, planned_steps, scale_lr

__all__ = ["GLNetModule", "RecipeModule", "TokenLabeling"]


class RecipeModule(LightningModule):
    """What the three task modules (classification here, ``SegmentationModule``, ``DetectionModule``) share
    around their networks: the weights they start from and the callbacks every run gets.

    A subclass sets ``nonfinite_guard`` (:class:`NonFiniteLossGuard`), ``optimizer_step_skipped`` (its flag)
    and ``_init_weights_pending`` (``init_weights`` given) in ``__init__``, and says in
    :meth:`_load_start_weights` how ``hparams.init_weights`` goes into its network.

    Why the weights are not loaded in ``__init__``: ``load_from_checkpoint`` and ``--ckpt_path`` rebuild the
    module from hyper-parameters that still name the file, which may be gone by then, and the checkpoint's
    weights must win. The Trainer restores a checkpoint after ``setup``, so the hooks below load them at the
    start of fit / validate / test / predict, after any restore (``on_load_checkpoint`` clears the pending
    load). Call :meth:`load_init_weights` yourself to use the module without a Trainer.
    """

    nonfinite_guard: NonFiniteLossGuard
    optimizer_step_skipped: bool = False
    _init_weights_pending: bool = False

    def _load_start_weights(self) -> str:
        """Load ``hparams.init_weights`` into the network; returns the line to log."""
        raise NotImplementedError

    def load_init_weights(self) -> None:
        """Load ``init_weights`` once, unless a checkpoint has given the weights."""
        if not self._init_weights_pending:
            return
        rank_zero_info(self._load_start_weights())
        self._init_weights_pending = False

    def on_fit_start(self) -> None:
        self.load_init_weights()

    def on_validation_start(self) -> None:
        self.load_init_weights()

    def on_test_start(self) -> None:
        self.load_init_weights()

    def on_predict_start(self) -> None:
        self.load_init_weights()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._init_weights_pending = False  # the checkpoint's weights, not init_weights

    def configure_callbacks(self):
        """The non-finite loss guard, and exact resume unless the Trainer already has it."""
        from .exact_resume import ExactResume

        callbacks = [self.nonfinite_guard]
        if not any(isinstance(cb, ExactResume) for cb in self.trainer.callbacks):
            callbacks.append(ExactResume())
        return callbacks

    def global_batch_size(self) -> int:
        """Images per optimizer step over all devices (:func:`~glnet_lightning.lit.schedule.global_batch_size`)."""
        return global_batch_size(self.trainer)


@dataclass
class TokenLabeling:
    """The token-labeling recipe (LV-ViT; docs/design.md, section 6): the class output is scored
    against the crop's soft label and every token of the auxiliary head against its own, both read from the
    label maps the training batches carry (``--data.token_labels DIR``). Needs a model with ``use_aux_head``
    (``glnet_4g_tklb``, ``glnet_9g_tklb``); MixToken takes the place of Mixup/CutMix.

    Args:
        dense_weight: weight of the mean token loss (0.5 in GLNet's recipe).
        cls_weight: weight of the class-output loss.
        label_size: side of the token-label grid; must be the model's final grid at the training image
            size (224 px / stride 32 = 7).
        ground_truth: blend the crop-level label with the image's class (LV-ViT's ``--ground-truth``).
    """

    dense_weight: float = 0.5
    cls_weight: float = 1.0
    label_size: int = 7
    ground_truth: bool = False

    def __post_init__(self) -> None:
        if self.dense_weight < 0 or self.cls_weight < 0 or self.label_size < 1:
            raise ValueError(f"model.token_labeling: need dense_weight >= 0, cls_weight >= 0 and label_size >= 1, "
                             f"got {self}")


def _token_labeling(value: TokenLabeling | dict[str, Any] | None) -> TokenLabeling | None:
    """The setting as a :class:`TokenLabeling`: checkpoints store it as a plain dict (readable with
    ``weights_only``), which ``load_from_checkpoint`` passes back."""
    return TokenLabeling(**value) if isinstance(value, dict) else value



def _accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 (and top-5 when there are at least 5 classes) accuracy over all samples (micro average)."""
    metrics = {"acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes >= 5:
        metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


#: What ``compile`` may pass to ``torch.compile``.
COMPILE_OPTIONS = ("mode", "fullgraph", "dynamic", "backend", "options")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compile_options(compile: bool | str | dict[str, Any]) -> dict[str, Any] | str | None:
    """``compile`` as ``torch.compile`` keyword arguments, ``"auto"``, or None for eager; bad values fail now."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return {}
    if compile == "auto":
        return "auto"
    if not isinstance(compile, dict):
        raise ValueError(f"compile must be true, false, auto or a mapping of torch.compile options, got {compile!r}")
    unknown = sorted(set(compile) - set(COMPILE_OPTIONS))
    if unknown:
        raise ValueError(f"compile: unknown torch.compile option(s) {unknown}; choose from {list(COMPILE_OPTIONS)}")
    if compile.get("mode", "default") not in COMPILE_MODES:
        raise ValueError(f"compile.mode={compile['mode']!r}: choose one of {list(COMPILE_MODES)}")
    return dict(compile)


def resolve_compile(options: dict[str, Any] | str | None, device: torch.device) -> dict[str, Any] | None:
    """What ``compile: auto`` means on ``device``: compile with defaults on CUDA, eager elsewhere.

    Decided when the Trainer has placed the run, from the device it trains on, not from one host's
    measurements: inductor's GPU kernels are where compiling pays, while on a CPU the first steps spend
    minutes compiling for little or no gain (docs/benchmarks.md)."""
    if options != "auto":
        return options
    return {} if device.type == "cuda" else None


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class GLNetModule(RecipeModule):
    """Image classification with the GLNet recipe.

    Args:
        backbone: the network, every setting of it: a named GLNet (``glnet_stl``, ``glnet_4g``, ... with any
            field changed, e.g. ``num_slots``), ``GLNetArgs`` for a GLNet of your own, or ``TimmModel`` for any
            other timm model (models/backbone.py). Checkpoints store it whole and rebuild exactly this network.
        num_classes: classifier width (the CLI links it to the data module's ``num_classes``).
        drop_path_rate: stochastic depth (0.1 / 0.15 / 0.3 / 0.4 for STL / 4G / 9G / 16G).
        lr: peak learning rate for a global batch of ``base_batch_size``; scaled linearly by the
            actual global batch (per-device batch x devices x nodes x gradient accumulation).
        weight_decay: AdamW decay for weights; norms, biases, ``tau`` and learned slots get none.
        warmup_epochs: linear warm-up length (fractions allowed), then cosine down to ``min_lr``.
        label_smoothing / mixup / cutmix / mixup_prob / mixup_switch_prob: timm ``Mixup`` settings;
            mixing is off when both alphas (or the probability) are 0.
        ema_decay: EMA of the weights (validated as ``val_ema/*``, saved in checkpoints); None disables.
        ema_warmup: timm's EMA decay warm-up (useful for short runs).
        slot_map_every_n_epochs: log slot assignment images every N epochs (0 disables).
        nonfinite_loss: a NaN/inf training loss ``stop``s the run (naming the step and the last
            checkpoint) or is ``skip``ped without changing weights, optimizer or EMA (lit/nonfinite.py).
        init_weights: weights to start from: a published checkpoint (reference GLNet layout), a state
            dict or a ``fit`` checkpoint (any layout ``models/weights.py`` reads). A classifier of another
            ``num_classes`` is re-initialised (and logged). Loaded when the Trainer first uses the model,
            unless a checkpoint is restored (``--ckpt_path``, ``load_from_checkpoint``): see
            :meth:`load_init_weights`.
        init_weights_key: which weights of the ``init_weights`` file: ``raw``, ``ema``, or ``auto`` (the
            raw ``model`` of a published / plain file, the EMA of a ``fit`` checkpoint that has one).
        compile: ``torch.compile`` the backbone for training and evaluation: ``true`` (defaults),
            options, e.g. ``{mode: max-autotune-no-cudagraphs}`` (keys: :data:`COMPILE_OPTIONS`), or
            ``auto``: compile on CUDA, eager on other devices (:func:`resolve_compile`; the ImageNet
            configs use it). Compiled in place, so checkpoints and the EMA are those of the eager model.
            (Token labeling trains through ``forward_train``, which stays eager.)
        cooldown_epochs: the last epochs of the run are held at ``min_lr`` after the cosine (10 of 310 in
            the token-labeling recipe).
        token_labeling: train with token labels (:class:`TokenLabeling`; the ``*_tklb`` configs), or None.
            Validation is unchanged: the model's eval output against the class labels.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int = 1000,
        drop_path_rate: float = 0.1,
        lr: float = 2e-3,
        base_batch_size: int = 2048,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5.0,
        warmup_lr: float = 1e-6,
        min_lr: float = 1e-5,
        label_smoothing: float = 0.1,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        ema_decay: float | None = 0.9999,
        ema_warmup: bool = False,
        slot_map_every_n_epochs: int = 1,
        nonfinite_loss: str = "stop",
        init_weights: str | None = None,
        init_weights_key: str = "auto",
        compile: bool | str | dict[str, Any] = False,
        cooldown_epochs: float = 0.0,
        token_labeling: TokenLabeling | None = None,
    ) -> None:
        super().__init__()
        if lr <= 0 or base_batch_size < 1 or weight_decay < 0 or warmup_epochs < 0 or min_lr < 0 or cooldown_epochs < 0:
            raise ValueError(f"need lr > 0, base_batch_size >= 1, weight_decay >= 0, warmup_epochs >= 0, min_lr >= 0, "
                             f"cooldown_epochs >= 0; got lr={lr}, base_batch_size={base_batch_size}, "
                             f"weight_decay={weight_decay}, warmup_epochs={warmup_epochs}, min_lr={min_lr}, "
                             f"cooldown_epochs={cooldown_epochs}")
        if num_classes < 2:  # (torchmetrics would stop later with its own words)
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes; an ImageNet-style "
                             f"--data.root needs at least 2 class folders under train/ and val/")
        if slot_map_every_n_epochs < 0:
            raise ValueError(f"slot_map_every_n_epochs must be >= 0, got {slot_map_every_n_epochs}")
        if init_weights_key not in WEIGHTS_CHOICES:
            raise ValueError(f"init_weights_key={init_weights_key!r}: choose one of {list(WEIGHTS_CHOICES)}")
        self._compile_options = _compile_options(compile)
        self.nonfinite_guard = NonFiniteLossGuard(nonfinite_loss)  # validates the policy
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = resolve_backbone(backbone)
        self.save_hyperparameters()
        # the whole description as plain data, so a checkpoint rebuilds this network whatever the defaults become
        self.hparams["backbone"] = self.backbone.describe()
        self.token_labeling = _token_labeling(token_labeling)
        if self.token_labeling is not None:
            self.hparams["token_labeling"] = dataclasses.asdict(self.token_labeling)
        self.model = self.backbone.build(num_classes, drop_path_rate)
        self.mixup_fn = build_mixup(num_classes, mixup, cutmix, mixup_prob, mixup_switch_prob, label_smoothing)
        self.train_criterion = build_train_criterion(self.mixup_fn is not None, label_smoothing)
        self.token_label_loss: TokenLabelLoss | None = None
        #: MixToken's boxes are drawn from this generator, whose state (per rank) travels in checkpoints
        #: (lit/exact_resume.py), so a resumed run draws the boxes the uninterrupted one would have
        self.mix_token_generator: torch.Generator | None = None
        if self.token_labeling is not None:
            self._check_token_labeling(mixup=self.mixup_fn is not None, label_smoothing=label_smoothing)
            tl = self.token_labeling
            self.token_label_loss = TokenLabelLoss(tl.dense_weight, tl.cls_weight, tl.ground_truth)
            self.mix_token_generator = torch.Generator()
        self.ema = EmaWeights(ema_decay, ema_warmup) if ema_decay is not None else None
        self._init_weights_pending = init_weights is not None  # cleared once loaded or a checkpoint is restored
        self.optimizer_step_skipped = False  # set by NonFiniteLossGuard: keep the EMA out of a skipped step
        self.val_metrics = _accuracy_metrics(num_classes, "val/")
        self.val_ema_metrics = _accuracy_metrics(num_classes, "val_ema/")
        self.test_metrics = _accuracy_metrics(num_classes, "test/")
        self.test_ema_metrics = _accuracy_metrics(num_classes, "test_ema/")

    # ------------------------------------------------------------------ model
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def ema_model(self) -> nn.Module | None:
        """The EMA weights as a model (created on first use), or None without EMA state."""
        if self.ema is None or not self.ema.has_state:
            return None
        return self.ema.attach(self.model)

    def _load_start_weights(self) -> str:
        return load_weights(self.model, self.hparams.init_weights, self.hparams.init_weights_key,
                            what="init_weights", option="--model.init_weights_key")

    def configure_callbacks(self):
        """The recipe's callbacks: :class:`RecipeModule`'s and the slot-map images (unless the Trainer has them)."""
        from .slot_maps import SlotMapCallback

        callbacks = super().configure_callbacks()
        every = self.hparams.slot_map_every_n_epochs
        if every == 0 or any(isinstance(cb, SlotMapCallback) for cb in self.trainer.callbacks):
            return callbacks
        return [*callbacks, SlotMapCallback(every_n_epochs=every)]

    # ------------------------------------------------------------------ token labeling
    def _check_token_labeling(self, mixup: bool, label_smoothing: float) -> None:
        """The settings token labeling cannot train with, each named with its fix, before any data is read."""
        if not getattr(self.model, "use_aux_head", False):
            raise TokenLabelError(f"model.token_labeling needs a model with an auxiliary token head (use_aux_head), "
                                  f"e.g. glnet_4g_tklb or glnet_9g_tklb; {self.backbone.name} has none: set "
                                  f"--model.token_labeling null or choose such a model")
        if mixup or label_smoothing:
            raise TokenLabelError("model.token_labeling trains without Mixup/CutMix and label smoothing (MixToken and "
                                  "the soft token labels take their place): set --model.mixup 0 --model.cutmix 0 "
                                  "--model.label_smoothing 0")

    def random_generators(self) -> dict[str, torch.Generator]:
        """The module's own random generators, for :class:`~glnet_lightning.lit.exact_resume.ExactResume`
        to save and restore per rank like the global random state."""
        return {"mix_token": self.mix_token_generator} if self.mix_token_generator is not None else {}

    def setup(self, stage: str) -> None:
        """Before a fit reads any data: the data and the recipe agree on label maps and on the label grid;
        MixToken's generator gets a seed of this run and rank (a restored checkpoint replaces its state)."""
        if stage != "fit":
            return
        data = self.trainer.datamodule
        gives_maps = getattr(data, "token_labels", None) is not None
        tl = self.token_labeling
        if tl is None:
            if gives_maps:
                raise TokenLabelError("data.token_labels is set but the model does not train with token labels: "
                                      "set --model.token_labeling (configs/imagenet_glnet_4g_tklb.yaml does), or drop "
                                      "--data.token_labels")
            return
        if data is not None and hasattr(data, "token_labels") and not gives_maps:
            raise TokenLabelError("model.token_labeling needs the label maps: give --data.token_labels DIR (README, "
                                  "Token labeling), or set --model.token_labeling null to train on class labels")
        size, stride = getattr(data, "image_size", None), self._total_stride()
        if isinstance(size, int) and size // stride != tl.label_size:
            raise TokenLabelError(f"model.token_labeling.label_size={tl.label_size} does not match the model's final "
                                  f"grid at data.image_size={size} ({size} / stride {stride} = {size // stride}): set "
                                  f"--model.token_labeling.label_size {size // stride}")
        seed = hash((torch.initial_seed(), self.trainer.global_rank)) & (2**63 - 1)
        self.mix_token_generator.manual_seed(seed)

    def _total_stride(self) -> int:
        """The model's reduction from pixels to its final grid (32 for GLNet)."""
        reductions = [f.get("reduction") for f in getattr(self.model, "feature_info", None) or [] if isinstance(f, dict)]
        return max((r for r in reductions if r), default=32)

    def _token_labeling_loss(self, images: torch.Tensor, label_maps: torch.Tensor) -> torch.Tensor:
        if label_maps.dim() != 5:
            raise TokenLabelError("model.token_labeling needs label maps in the training batches (images, (B, 3, k, "
                                  "S, S)), got class labels: give --data.token_labels DIR")
        outputs = self.model.forward_train(images, generator=self.mix_token_generator)
        target = token_label_targets(label_maps, self.hparams.num_classes, self.token_labeling.label_size)
        return self.token_label_loss(outputs, target)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        total_steps, steps_per_epoch = planned_steps(self.trainer)
        warmup_steps = min(total_steps, round(hp.warmup_epochs * steps_per_epoch))
        cooldown_steps = min(total_steps - warmup_steps, round(hp.cooldown_epochs * steps_per_epoch))
        global_batch = self.global_batch_size()
        lr = scale_lr(hp.lr, global_batch, hp.base_batch_size)
        rank_zero_info(f"lr {hp.lr:g} x global batch {global_batch} / {hp.base_batch_size} = {lr:.4g}; "
                       f"{warmup_steps} warm-up of {total_steps} optimizer steps"
                       + (f", the last {cooldown_steps} at min_lr" if cooldown_steps else ""))
        optimizer = build_adamw(self.model, lr=lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        schedule = WarmupCosine(lr, total_steps, warmup_steps, min_lr=min(hp.min_lr, lr), warmup_lr=min(hp.warmup_lr, lr),
                                cooldown_steps=cooldown_steps)
        scheduler = LambdaLR(optimizer, schedule)
        self._planned_schedule = repr(schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.token_labeling is not None:
            loss = self._token_labeling_loss(images, labels)
        else:
            loss = self._class_label_loss(images, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _class_label_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() == 5:
            raise TokenLabelError("the training batches carry label maps (data.token_labels) but the model does not "
                                  "train with token labels: set --model.token_labeling, or drop --data.token_labels")
        if self.mixup_fn is not None:
            if images.shape[0] % 2 == 0:
                images, targets = self.mixup_fn(images, labels)
            else:  # timm's batch mixing needs pairs; an odd leftover batch is trained unmixed
                targets = one_hot_smoothed(labels, self.hparams.num_classes, self.hparams.label_smoothing)
        else:
            targets = labels
        return self.train_criterion(self(images), targets)

    def configure_model(self) -> None:
        # GLNet's activations are channels_last, so conv weight gradients arrive channels_last; DDP's
        # gradient buckets take the parameters' layout, and a mismatch costs a copy per parameter per
        # step ("Grad strides do not match bucket view strides"). Same values, matching strides.
        channels_last_conv_weights(self.model)
        # in place (nn.Module.compile): parameter names, checkpoints and the EMA copy stay those of the eager model
        trainer = attached_trainer(self)
        device = trainer.strategy.root_device if trainer is not None else self.device
        options = resolve_compile(self._compile_options, device)
        if self._compile_options == "auto":
            rank_zero_info(f"compile: auto -> {'torch.compile' if options is not None else 'eager'} on {device.type}")
        if options is not None and getattr(self.model, "_compiled_call_impl", None) is None:
            self.model.compile(**options)

    def on_fit_start(self) -> None:
        super().on_fit_start()  # the start weights first: the EMA copies them
        if self.ema is not None:
            self.ema.attach(self.model)

    def on_train_start(self) -> None:
        # A resumed run keeps the checkpoint's lr curve (exact resume); say so if this run's settings
        # (e.g. a larger max_epochs) would have planned a different one.
        scheduler = self.lr_schedulers()
        restored = repr(scheduler.lr_lambdas[0]) if scheduler is not None else None
        planned = getattr(self, "_planned_schedule", None)
        if restored and planned and restored != planned:
            rank_zero_warn(f"resuming with the checkpoint's lr schedule {restored}; the current settings would "
                           f"give {planned}. To train on a new schedule, start from the checkpoint's weights with "
                           f"--model.init_weights CHECKPOINT (not --ckpt_path).")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # here, not in on_train_batch_end: step checkpoints are written in the callbacks'
        # on_train_batch_end, which runs before the module's, and must hold this step's average
        if self.ema is not None and not self.optimizer_step_skipped:
            # Lightning counts the step once this hook returns: this is optimizer step global_step + 1
            self.ema.update(self.model, step=self.trainer.global_step + 1)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: Any, metrics: MetricCollection, ema_metrics: MetricCollection, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True,
                 batch_size=images.shape[0])
        metrics.update(logits, labels)
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")
        ema = self.ema_model
        if ema is not None:
            ema_metrics.update(ema(images), labels)
            self.log_dict(ema_metrics, on_epoch=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_ema_metrics, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_ema_metrics, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Class probabilities (B, num_classes) and predicted class indices (B,)."""
        probs = self(_images(batch)).float().softmax(dim=-1)
        return {"probs": probs, "preds": probs.argmax(dim=-1)}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and self.ema.has_state:
            checkpoint[EMA_CHECKPOINT_KEY] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(EMA_CHECKPOINT_KEY)
        if self.ema is not None and state is not None:
            self.ema.load_state_dict(state)
