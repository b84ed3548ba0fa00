"""GLNetModule: recipe wiring (lr scaling, schedule, mixup, metrics), EMA and checkpoints."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from glnet_lightning.lit import GLNetModule
from glnet_lightning.models.glnet import glnet_stl
from testkit import tiny
from testkit.data import RandomImages, make_trainer


def make_module(tiny_kwargs, **kwargs) -> GLNetModule:
    defaults = dict(backbone=glnet_stl(**tiny_kwargs), num_classes=10, drop_path_rate=0.0,
                    mixup=0.0, cutmix=0.0, ema_decay=None, slot_map_every_n_epochs=0)
    defaults.update(kwargs)
    return GLNetModule(**defaults)


class RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))


def test_lr_is_scaled_by_global_batch_and_follows_warmup_cosine(tmp_path):
    # batch 16 x accumulate 2 = 32 images per step; quoted lr 1e-2 for 64 -> peak 5e-3.
    tiny_kwargs = tiny()
    module = make_module(tiny_kwargs, lr=1e-2, base_batch_size=64, warmup_epochs=1, min_lr=1e-4, warmup_lr=0.0)
    recorder = RecordLR()
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=8, limit_val_batches=0,
                           accumulate_grad_batches=2, callbacks=[recorder])
    trainer.fit(module, datamodule=RandomImages(batch_size=16))
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert trainer.lr_scheduler_configs[0].interval == "step"
    assert schedule.base_lr == pytest.approx(5e-3)
    assert (schedule.warmup_steps, schedule.total_steps) == (4, 12)  # 8 batches / 2 per step, 3 epochs
    seen = dict(recorder.lrs)  # lr in force when each optimizer step's batches run
    assert sorted(seen) == list(range(12))
    for step, lr in seen.items():
        assert lr == pytest.approx(schedule.lr_at(step)), step
    assert seen[0] == 0.0 and seen[4] == pytest.approx(5e-3)


def test_mixup_and_losses_follow_the_settings():
    tiny_kwargs = tiny()
    mixed = make_module(tiny_kwargs, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    assert isinstance(mixed.mixup_fn, Mixup) and isinstance(mixed.train_criterion, SoftTargetCrossEntropy)
    plain = make_module(tiny_kwargs, mixup=0.0, cutmix=0.0, label_smoothing=0.1)
    assert plain.mixup_fn is None and isinstance(plain.train_criterion, LabelSmoothingCrossEntropy)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    mixed.log = lambda *a, **k: None  # no Trainer attached
    assert torch.isfinite(mixed.training_step((x, y), 0))
    assert torch.isfinite(mixed.training_step((x[:3], y[:3]), 0))  # odd batch: unmixed soft targets


def test_metrics_and_predict(tmp_path):
    tiny_kwargs = tiny()
    data = RandomImages()
    module = make_module(tiny_kwargs)
    trainer = make_trainer(tmp_path, limit_train_batches=2)
    trainer.fit(module, datamodule=data)
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert {"val/loss", "val/acc1", "val/acc5"} <= set(metrics)
    assert "val_ema/acc1" not in metrics  # no EMA configured
    test = trainer.test(module, datamodule=data, verbose=False)[0]
    assert {"test/acc1", "test/acc5", "test/loss"} <= set(test)
    out = trainer.predict(module, datamodule=data)
    probs = torch.cat([o["probs"] for o in out])
    assert probs.shape == (128, 10) and torch.allclose(probs.sum(1), torch.ones(128), atol=1e-5)
    assert torch.equal(torch.cat([o["preds"] for o in out]), probs.argmax(1))


def test_no_top5_below_five_classes():
    tiny_kwargs = tiny()
    module = make_module(tiny_kwargs, num_classes=3)
    assert list(module.val_metrics.keys()) == ["val/acc1"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(backbone="glnet_nope"), "unknown model"),
    (dict(backbone={"class_path": "glnet_stl", "init_args": {"num_slots": 5}}), "perfect square"),
    (dict(backbone={"class_path": "glnet_stl", "init_args": {"kernel_size": 4}}), "odd"),
    (dict(backbone={"class_path": "glnet_stl", "init_args": {"bogus": 1}}), "bogus"),
    (dict(backbone={"class_path": "glnet_stl", "init_args": {"num_classes": 3}}), "model.num_classes"),
    (dict(lr=0.0), "lr > 0"),
    (dict(ema_decay=1.5), "ema_decay"),
])
def test_bad_settings_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GLNetModule(**{"backbone": "glnet_stl", "num_classes": 10, **kwargs})


class CaptureEma(Callback):
    """EMA weights as the module holds them when training (re)starts and when it ends."""

    def on_train_start(self, trainer, pl_module):
        self.at_start = {k: v.clone() for k, v in pl_module.ema.state_dict().items()}
        self.start_step = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        self.at_end = {k: v.clone() for k, v in pl_module.ema.state_dict().items()}


def test_ema_is_validated_saved_and_restored_exactly(tmp_path):
    tiny_kwargs = tiny()
    data = RandomImages()
    module = make_module(tiny_kwargs, ema_decay=0.5)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = CaptureEma()
    trainer = make_trainer(tmp_path, limit_train_batches=3, limit_val_batches=2, enable_checkpointing=True,
                           callbacks=[ckpt_cb, first])
    trainer.fit(module, datamodule=data)
    assert "val_ema/acc1" in trainer.callback_metrics

    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    ema_saved = ckpt["ema_state_dict"]
    assert all(torch.equal(ema_saved[k], first.at_end[k]) for k in ema_saved)
    raw = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert raw.keys() == ema_saved.keys()
    assert not torch.equal(raw["head.weight"], ema_saved["head.weight"])  # EMA lags the raw weights

    # load_from_checkpoint rebuilds model + EMA with no other information
    loaded = GLNetModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert torch.equal(loaded.model.head.weight, module.model.head.weight)
    assert torch.equal(loaded.ema_model.head.weight, ema_saved["head.weight"])

    # resume: EMA, optimizer, scheduler and step continue where they stopped
    resumed = CaptureEma()
    module2 = make_module(tiny_kwargs, ema_decay=0.5)
    trainer2 = make_trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=2,
                            enable_checkpointing=True,
                            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), resumed])
    with pytest.warns(UserWarning, match="checkpoint's lr schedule.*--model.init_weights CHECKPOINT"):
        trainer2.fit(module2, datamodule=data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.start_step == 3
    assert all(torch.equal(resumed.at_start[k], ema_saved[k]) for k in ema_saved)
    assert trainer2.global_step == 6
    sched = trainer2.lr_scheduler_configs[0].scheduler
    # exact resume keeps the checkpoint's 3-step curve although max_epochs grew (and warns about it)
    assert sched.last_epoch == 6 and sched.lr_lambdas[0].total_steps == 3
    assert int(trainer2.optimizers[0].state[module2.model.head.weight]["step"]) == 6


def test_validate_with_ema_checkpoint_reports_ema_metrics(tmp_path):
    tiny_kwargs = tiny()
    data = RandomImages()
    module = make_module(tiny_kwargs, ema_decay=0.9)
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=2)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    fresh = make_module(tiny_kwargs, ema_decay=0.9)
    metrics = make_trainer(tmp_path, limit_val_batches=2).validate(
        fresh, datamodule=data, ckpt_path=tmp_path / "m.ckpt", verbose=False)[0]
    assert metrics["val_ema/acc1"] == pytest.approx(trainer.callback_metrics["val_ema/acc1"].item())
    assert metrics["val/acc1"] == pytest.approx(trainer.callback_metrics["val/acc1"].item())


@pytest.mark.slow
def test_compile_option_compiles_the_backbone_in_place(tmp_path):
    """``compile`` reaches torch.compile (the eager backend: tracing without minutes of codegen), training
    runs through the compiled forward, and checkpoints keep the eager model's parameter names."""
    data = RandomImages()
    tiny_kwargs = tiny()
    import torch._dynamo

    torch._dynamo.reset()
    module = GLNetModule(glnet_stl(**tiny_kwargs), num_classes=10, warmup_epochs=0, ema_decay=0.5,
                         slot_map_every_n_epochs=0, compile={"backend": "eager", "dynamic": False})
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert module.model._compiled_call_impl is not None
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    names = set(torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"])
    assert names == {f"model.{k}" for k in module.model.state_dict()} and not any("_orig_mod" in n for n in names)


def test_compile_auto_compiles_on_cuda_only_decided_from_the_trainers_device(tmp_path, caplog):
    """The ImageNet configs' ``compile: auto``: torch.compile defaults on CUDA, eager on this CPU run."""
    data = RandomImages()
    tiny_kwargs = tiny()
    from glnet_lightning.lit.module import resolve_compile

    assert resolve_compile("auto", torch.device("cuda", 3)) == {}
    assert resolve_compile("auto", torch.device("cpu")) is None
    assert resolve_compile({"mode": "max-autotune"}, torch.device("cpu")) == {"mode": "max-autotune"}
    assert resolve_compile(None, torch.device("cuda")) is None
    module = GLNetModule(glnet_stl(**tiny_kwargs), num_classes=10, warmup_epochs=0, ema_decay=None,
                         slot_map_every_n_epochs=0, compile="auto")
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1).fit(module, datamodule=data)
    assert getattr(module.model, "_compiled_call_impl", None) is None
    assert "compile: auto -> eager on cpu" in caplog.text


@pytest.mark.parametrize("compile, message", [({"mode": "fastest"}, "compile.mode='fastest'"),
                                              ({"fullgrap": True}, "unknown torch.compile option"),
                                              ("always", "compile must be true, false, auto")])
def test_bad_compile_options_fail_at_construction(compile, message):
    tiny_kwargs = tiny()
    with pytest.raises(ValueError, match=message):
        GLNetModule(glnet_stl(**tiny_kwargs), num_classes=10, compile=compile)
