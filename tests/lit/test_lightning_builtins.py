"""Why the project keeps its own EMA, pre-emption save and non-finite loss guard, shown on Lightning itself.

Each requirement runs on the project's part and on the Lightning built-in that would replace it
(``EMAWeightAveraging``, ``OnExceptionCheckpoint`` / ``ModelCheckpoint(save_on_exception=True)`` /
Lightning's SIGTERM handler, ``SpikeDetection``). The built-in's case is an expected failure, strictly: a
Lightning release that meets the requirement fails the test, so that the built-in is looked at again.
docs/architecture.md, "Lightning built-ins: adopted or not"."""
from __future__ import annotations

import copy
import os
import signal
import warnings

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch import callbacks as lightning_callbacks
from lightning.pytorch.callbacks import OnExceptionCheckpoint, SpikeDetection

from glnet_lightning.lit import GLNetModule, NonFiniteLossGuard, PreemptionCheckpoint, RunCheckpoint
from glnet_lightning.models.glnet import glnet_stl
from glnet_lightning.models.weights import read_weights
from testkit import same, tiny
from testkit.data import RandomImages, make_trainer
from testkit.probes import PoisonBatch


def lightning(reason: str, name: str = "lightning"):
    """The built-in's case: fails today for ``reason``."""
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"Lightning's built-in {reason}"))


def make_module(cls: type[GLNetModule] = GLNetModule, **kwargs) -> GLNetModule:
    settings = dict(num_classes=10, drop_path_rate=0.0, mixup=0.0, cutmix=0.0, slot_map_every_n_epochs=0,
                    warmup_epochs=0, lr=0.05, ema_decay=None)
    return cls(glnet_stl(**tiny()), **{**settings, **kwargs})


def finite(module) -> bool:
    return all(torch.isfinite(p).all() for p in module.model.parameters())


# ------------------------------------------------------------------------------------ EMA
class Watch(Callback):
    """The EMA at each batch start, the raw and EMA weights after the last batch, and whether validation
    during the fit ran on the raw weights."""

    def __init__(self, ema_of) -> None:
        self.ema_of = ema_of
        self.ema_at: dict[int, dict] = {}
        self.validated_raw: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ema_at[trainer.global_step] = copy.deepcopy(self.ema_of(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.raw = copy.deepcopy(pl_module.model.state_dict())
        self.ema = copy.deepcopy(self.ema_of(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.validated_raw.append(torch.equal(pl_module.model.head.weight, self.raw["head.weight"]))


@pytest.fixture(scope="module")
def ema_runs(tmp_path_factory):
    """The same 5 steps (validation after step 4, the batch of step 2 NaN and skipped) with the project's EMA
    and with ``EMAWeightAveraging``, both at decay 0.9, each saving ``last.ckpt`` through ``RunCheckpoint``."""
    if not hasattr(lightning_callbacks, "EMAWeightAveraging"):
        pytest.skip("this Lightning has no EMAWeightAveraging (new in 2.6)")
    runs = {}
    for kind in ("ours", "lightning"):
        root = tmp_path_factory.mktemp(f"ema_{kind}")
        if kind == "ours":
            module, callbacks = make_module(ema_decay=0.9, nonfinite_loss="skip"), []
            watch = Watch(lambda m: m.ema.state_dict())
        else:
            averaging = lightning_callbacks.EMAWeightAveraging(decay=0.9)
            module, callbacks = make_module(nonfinite_loss="skip"), [averaging]
            watch = Watch(lambda m: averaging._average_model.module.model.state_dict())
        checkpoint = RunCheckpoint(dirpath=root, save_last=True, monitor="val/loss")
        trainer = make_trainer(root, max_steps=5, max_epochs=None, limit_val_batches=1, val_check_interval=4,
                               enable_checkpointing=True, callbacks=[*callbacks, PoisonBatch(2), watch, checkpoint])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skipped step; EMAWeightAveraging on configure_model
            trainer.fit(module, datamodule=RandomImages())
        runs[kind] = (module, watch, root / "last.ckpt")
    return runs


EMA_CASES = ["ours", lightning("swaps the averaged weights in for validation and after fit, saves the average as "
                               "state_dict, and folds a skipped step in")]


@pytest.mark.parametrize("kind", EMA_CASES)
def test_validation_in_fit_runs_on_the_raw_weights(ema_runs, kind):
    _, watch, _ = ema_runs[kind]
    assert watch.validated_raw and all(watch.validated_raw)  # the EMA is validated beside them, as val_ema/*


@pytest.mark.parametrize("kind", EMA_CASES)
def test_a_skipped_step_leaves_the_ema_alone(ema_runs, kind):
    _, watch, _ = ema_runs[kind]
    assert same(watch.ema_at[2], watch.ema_at[3]) and not same(watch.ema_at[3], watch.ema_at[4])


@pytest.mark.parametrize("kind", EMA_CASES)
def test_the_final_last_ckpt_keeps_the_raw_weights(ema_runs, kind):
    _, watch, path = ema_runs[kind]
    saved = torch.load(path, weights_only=False, map_location="cpu")
    layouts = [saved["state_dict"], saved.get("current_model_state", {})]  # Lightning's keeps them aside
    raw = [{k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")} for state in layouts]
    assert any(same(state, watch.raw) for state in raw)


@pytest.mark.parametrize("kind", EMA_CASES)
def test_a_fit_checkpoint_gives_models_weights_the_raw_and_the_ema(ema_runs, kind):
    _, watch, path = ema_runs[kind]
    assert same(read_weights(path, "raw").state_dict, watch.raw)
    assert same(read_weights(path, "ema").state_dict, watch.ema)


@pytest.mark.parametrize("kind", EMA_CASES)
def test_the_module_holds_the_raw_weights_after_fit(ema_runs, kind):
    module, watch, _ = ema_runs[kind]
    assert same(module.model.state_dict(), watch.raw)


# ------------------------------------------------------------------------------------ pre-emption
class FailInStep(Callback):
    """An error in the middle of step 2, after backward and before the optimizer step (as a CUDA OOM)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 2:
            raise RuntimeError("error in the middle of a step")


def _preemption_save(kind: str, root):
    """The part that saves a pre-empted run, and the run's checkpoint callback."""
    if kind == "save_on_exception":
        return [], RunCheckpoint(dirpath=root, save_last=True, save_on_exception=True)
    part = PreemptionCheckpoint() if kind == "ours" else OnExceptionCheckpoint(root)
    return [part], RunCheckpoint(dirpath=root, save_last=True)


@pytest.mark.parametrize("kind", ["ours", lightning("OnExceptionCheckpoint saves on any exception"),
                                  lightning("ModelCheckpoint(save_on_exception) saves on any exception",
                                            "save_on_exception")])
def test_an_error_in_the_middle_of_a_step_saves_nothing(tmp_path, kind):
    """Only a SIGTERM (raised by Lightning between batches) saves: a state from the middle of a step must not
    become the newest checkpoint, which ``--ckpt_path last`` resumes."""
    parts, checkpoint = _preemption_save(kind, tmp_path / "checkpoints")
    trainer = make_trainer(tmp_path, max_steps=4, max_epochs=None, limit_val_batches=0, enable_checkpointing=True,
                           callbacks=[FailInStep(), *parts, checkpoint])
    with pytest.raises(RuntimeError, match="middle of a step"):
        trainer.fit(make_module(), datamodule=RandomImages())
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


class StartStep(Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


@pytest.mark.parametrize("kind", ["ours", lightning("OnExceptionCheckpoint turns every fit into ckpt_path='last'")])
def test_a_fit_without_ckpt_path_starts_afresh_and_quietly(tmp_path, kind):
    for steps in (2, 4):  # a second fit into the same directory, without ckpt_path
        parts, checkpoint = _preemption_save(kind, tmp_path / "checkpoints")
        start = StartStep()
        trainer = make_trainer(tmp_path, max_steps=steps, max_epochs=None, limit_val_batches=0,
                               enable_checkpointing=True, callbacks=[*parts, checkpoint, start])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(make_module(), datamodule=RandomImages())
        assert start.step == 0
        assert not [str(w.message) for w in caught if "fit(ckpt_path" in str(w.message)]


# ------------------------------------------------------------------------------------ SIGTERM under DDP
def _rank(rank: int, port: int, handler: str, results) -> None:
    """Rank 1 is inside a gradient all-reduce when rank 0 runs its SIGTERM handler; then both agree whether
    to stop, as ``PreemptionCheckpoint`` does at the end of a batch."""
    import time
    from datetime import timedelta

    import torch.distributed as dist
    from lightning.pytorch import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), RANK=str(rank),
                      WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=5))
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    part = PreemptionCheckpoint()
    try:
        part.on_train_start(trainer, None)  # installs its handler (this is the main thread, world size 2)
        grads = torch.ones(1000)
        if rank == 0:
            time.sleep(1.0)  # rank 1 is waiting in the all-reduce by now
            if handler == "ours":
                signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
            else:
                getattr(trainer, "_signal_connector")._sigterm_notifier_fn(signal.SIGTERM, None)
        dist.all_reduce(grads)
        part.on_train_batch_end(trainer, None, None, None, 0)
        results.put((rank, bool((grads == 2).all()) and trainer.received_sigterm))
    except Exception as exc:  # noqa: BLE001  (reported to the test)
        results.put((rank, repr(exc)[:200]))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("handler", ["ours", lightning("SIGTERM handler broadcasts from inside the signal handler")])
def test_sigterm_while_another_rank_is_in_an_all_reduce_stops_both_ranks_together(handler):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(rank, port, handler, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    try:
        outcome = dict(results.get(timeout=120) for _ in ranks)
    finally:
        for process in ranks:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert outcome == {0: True, 1: True}, outcome


# ------------------------------------------------------------------------------------ non-finite loss
class WithoutGuard(GLNetModule):
    """GLNetModule without its NonFiniteLossGuard, for Lightning's SpikeDetection to watch instead."""

    def configure_callbacks(self):
        return [cb for cb in super().configure_callbacks() if not isinstance(cb, NonFiniteLossGuard)]


def _guarded(kind: str):
    """The module and the callbacks that watch its loss."""
    return (make_module(), []) if kind == "ours" else (make_module(WithoutGuard), [SpikeDetection()])


@pytest.mark.parametrize("at_step", [0, 3])
@pytest.mark.parametrize("kind", ["ours", lightning("SpikeDetection looks at the loss after the optimizer step, "
                                                    "and not at the first batch of an epoch")])
def test_a_nan_loss_stops_the_run_before_it_reaches_the_weights(tmp_path, kind, at_step):
    module, callbacks = _guarded(kind)
    trainer = make_trainer(tmp_path, max_steps=6, max_epochs=None, limit_val_batches=0,
                           callbacks=[PoisonBatch(at_step), *callbacks])
    with pytest.raises(Exception):  # noqa: B017  (each part has its own)
        trainer.fit(module, datamodule=RandomImages())
    assert trainer.global_step == at_step and finite(module)


@pytest.mark.parametrize("kind", ["ours", lightning("SpikeDetection.load_state_dict reads an attribute it "
                                                    "does not have")])
def test_a_checkpoint_written_with_the_guard_resumes(tmp_path, kind):
    module, callbacks = _guarded(kind)
    trainer = make_trainer(tmp_path, max_steps=2, max_epochs=None, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(module, datamodule=RandomImages())
    trainer.save_checkpoint(tmp_path / "guarded.ckpt")
    module, callbacks = _guarded(kind)
    resumed = make_trainer(tmp_path, max_steps=3, max_epochs=None, limit_val_batches=0, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lr schedule of the checkpoint, the plain loader's position
        resumed.fit(module, datamodule=RandomImages(), ckpt_path=tmp_path / "guarded.ckpt")
    assert resumed.global_step == 3
