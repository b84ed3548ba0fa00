"""Every private Lightning attribute the project reaches (glnet_lightning/lit/lightning_internals.py) exists on
the installed Lightning and does what the project uses it for: one test per attribute, each failing with a
message that names the Lightning version and the attribute. Run this file first on a new Lightning release.

One tiny fit of Lightning's ``BoringModel`` (two steps) calls every accessor from inside the run, where the
project calls them, and keeps each result, or the error it raised, for the test of that attribute."""
from __future__ import annotations

import re
import signal
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from glnet_lightning.lit import lightning_internals as internals

VERSION = lightning.__version__
PACKAGE = Path(internals.__file__).resolve().parents[1]


def where(attribute: str) -> str:
    return f"lightning {VERSION}: {attribute}"


class Batches:
    """A stateful train loader (``state_dict`` / ``load_state_dict``, as torchdata's and litdata's are):
    batch ``i`` is a (2, 32) tensor filled with ``i``, and the state is the next batch to yield."""

    def __init__(self, count: int = 6) -> None:
        self.count = count
        self.next = 0

    def __iter__(self):
        return self._from(self.next)  # the position is taken when the iterator is made, as a sampler's is

    def _from(self, start: int):
        for i in range(start, self.count):
            self.next = i + 1
            yield torch.full((2, 32), float(i))
        self.next = 0

    def __len__(self) -> int:
        return self.count

    def state_dict(self) -> dict:
        return {"next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.next = state["next"]


def _keep(results: dict, key: str, call) -> None:
    try:
        results[key] = call()
    except Exception as exc:  # kept for the test of that attribute
        results[key] = exc


class CallAccessors(Callback):
    """Calls each accessor where the project does: at the start of training and after a step."""

    def __init__(self, before) -> None:
        self.before = before  # the SIGTERM handler in place before the fit
        self.results: dict = {}
        self.first_batches: list[float] = []

    def on_train_start(self, trainer, pl_module):
        keep = lambda key, call: _keep(self.results, key, call)  # noqa: E731
        keep("trainer", lambda: internals.attached_trainer(pl_module))
        keep("handlers", lambda: internals.sigterm_handlers_besides_lightnings(trainer))
        keep("loaders", lambda: internals.train_loaders(trainer))
        keep("states", lambda: internals.train_loader_states(trainer))
        self.loader_state = pl_module.loader.state_dict()
        keep("load", lambda: internals.load_train_loader_states(trainer, [{"next": 3}]))
        self.loaded = pl_module.loader.state_dict()
        keep("pending", lambda: list(getattr(trainer.fit_loop, "_combined_loader_states_to_load")))
        keep("restart", lambda: internals.restart_train_iterator(trainer))
        checkpoint = trainer.checkpoint_callback
        keep("epoch_end", lambda: internals.saves_on_train_epoch_end(checkpoint, trainer))
        keep("skipped_at_start", lambda: internals.last_checkpoint_skipped(checkpoint, trainer))
        keep("flag_before", lambda: trainer.received_sigterm)
        keep("flag", lambda: internals.mark_sigterm_received(trainer) or trainer.received_sigterm)
        getattr(trainer, "_signal_connector").received_sigterm = False  # or Lightning stops after the batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.first_batches.append(float(batch[0, 0]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != 1:
            return
        checkpoint = trainer.checkpoint_callback
        _keep(self.results, "skipped_before_save", lambda: internals.last_checkpoint_skipped(checkpoint, trainer))
        _keep(self.results, "save", lambda: internals.save_last_checkpoint(checkpoint, trainer))
        self.saved = (checkpoint.last_model_path, Path(checkpoint.last_model_path).is_file())
        _keep(self.results, "skipped_after_save", lambda: internals.last_checkpoint_skipped(checkpoint, trainer))


class StatefulBoring(BoringModel):
    def __init__(self, loader: Batches) -> None:
        super().__init__()
        self.loader = loader

    def train_dataloader(self):
        return self.loader


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One fit of two steps with every accessor called inside it; the SIGTERM handler restored after."""
    root = tmp_path_factory.mktemp("internals")
    loader = Batches()
    before = signal.getsignal(signal.SIGTERM)
    sentinel = lambda signum, frame: None  # noqa: E731  (a handler installed before the fit)
    signal.signal(signal.SIGTERM, sentinel)
    probe = CallAccessors(sentinel)
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0)
    checkpoint.CHECKPOINT_NAME_LAST = "last-{step}"  # the name shows the metrics it was given
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
                      callbacks=[probe, checkpoint])
    try:
        trainer.fit(StatefulBoring(loader))
    finally:
        signal.signal(signal.SIGTERM, before)
    return trainer, probe, loader


def result(run, key: str):
    """What the accessor returned inside the run; the error it raised, raised again (it names the version
    and the attribute)."""
    value = run[1].results[key]
    if isinstance(value, Exception):
        raise value
    return value


def test_lightning_module_trainer(run):
    trainer, probe, _ = run
    assert result(run, "trainer") is trainer, where("LightningModule._trainer is not the Trainer it is attached to")
    assert internals.attached_trainer(LightningModule()) is None, where("LightningModule._trainer of a lone module")


def test_trainer_signal_connector(run):
    assert result(run, "flag_before") is False
    assert result(run, "flag") is True, where("Trainer._signal_connector.received_sigterm does not set "
                                               "trainer.received_sigterm")


def test_signal_connector_sigterm_notifier_fn(run):
    trainer = run[0]
    notifier = getattr(type(getattr(trainer, "_signal_connector")), "_sigterm_notifier_fn")
    handlers = result(run, "handlers")
    assert not any(getattr(h, "__func__", None) is notifier for h in handlers), \
        where("_SignalConnector._sigterm_notifier_fn is not what Lightning's SIGTERM handler calls")


def test_handlers_compose_signal_handlers(run):
    assert run[1].before in result(run, "handlers"), \
        where("_HandlersCompose.signal_handlers no longer holds the SIGTERM handler found before the fit")


def test_model_checkpoint_should_skip_saving_checkpoint(run):
    assert result(run, "skipped_at_start") is True, where("ModelCheckpoint._should_skip_saving_checkpoint "
                                                          "does not skip step 0")
    assert result(run, "skipped_before_save") is False
    assert result(run, "skipped_after_save") is True, where("ModelCheckpoint._should_skip_saving_checkpoint "
                                                            "does not skip a step already saved")


def test_model_checkpoint_should_save_on_train_epoch_end(run):
    # no validation: ModelCheckpoint saves at the end of the training epoch
    assert result(run, "epoch_end") is True, where("ModelCheckpoint._should_save_on_train_epoch_end")


def test_model_checkpoint_monitor_candidates(run):
    result(run, "save")
    assert Path(run[1].saved[0]).name == "last-step=1.ckpt", where("ModelCheckpoint._monitor_candidates does not "
                                                                   "give the step to the checkpoint's name")


def test_model_checkpoint_save_last_checkpoint(run):
    result(run, "save")
    path, written = run[1].saved
    assert written and Path(path).parent == Path(run[0].checkpoint_callback.dirpath), \
        where("ModelCheckpoint._save_last_checkpoint does not write the last checkpoint and record it as last_model_path")


def test_fit_loop_combined_loader(run):
    loader = run[2]
    assert result(run, "loaders") == [loader], where("_FitLoop._combined_loader.flattened is not the train loader")


def test_combined_loader_state_dicts(run):
    assert result(run, "states") == [run[1].loader_state], where("CombinedLoader._state_dicts is not the "
                                                                 "stateful loaders' state_dict()")


def test_combined_loader_load_state_dicts(run):
    result(run, "load")
    assert run[1].loaded == {"next": 3}, where("CombinedLoader._load_state_dicts does not load the stateful loaders")


def test_fit_loop_combined_loader_states_to_load(run):
    result(run, "load")
    assert result(run, "pending") == [], where("_FitLoop._combined_loader_states_to_load is not what "
                                               "Lightning loads into the train loaders")


def test_fit_loop_data_fetcher(run):
    result(run, "restart")
    # Lightning had made (and prefetched from) the iterator at batch 0; training went on at the loaded batch 3
    assert run[1].first_batches == [3.0, 4.0], where("_FitLoop._data_fetcher: iter() does not make the train "
                                                     "iterator anew from the loaders' state")


def test_set_sampler_epoch():
    dataset = TensorDataset(torch.arange(8))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True)
    for loader in (DataLoader(dataset, sampler=sampler), DataLoader(dataset, batch_size=2, sampler=sampler)):
        internals.set_sampler_epoch(loader, 5)
        assert sampler.epoch == 5, where("lightning.fabric.utilities.data._set_sampler_epoch")
        sampler.set_epoch(0)


#: The test of each attribute of internals.ATTRIBUTES.
TESTS = {
    "LightningModule._trainer": test_lightning_module_trainer,
    "Trainer._signal_connector": test_trainer_signal_connector,
    "_SignalConnector._sigterm_notifier_fn": test_signal_connector_sigterm_notifier_fn,
    "_HandlersCompose.signal_handlers": test_handlers_compose_signal_handlers,
    "ModelCheckpoint._should_skip_saving_checkpoint": test_model_checkpoint_should_skip_saving_checkpoint,
    "ModelCheckpoint._should_save_on_train_epoch_end": test_model_checkpoint_should_save_on_train_epoch_end,
    "ModelCheckpoint._monitor_candidates": test_model_checkpoint_monitor_candidates,
    "ModelCheckpoint._save_last_checkpoint": test_model_checkpoint_save_last_checkpoint,
    "_FitLoop._combined_loader": test_fit_loop_combined_loader,
    "_FitLoop._combined_loader_states_to_load": test_fit_loop_combined_loader_states_to_load,
    "_FitLoop._data_fetcher": test_fit_loop_data_fetcher,
    "CombinedLoader._state_dicts": test_combined_loader_state_dicts,
    "CombinedLoader._load_state_dicts": test_combined_loader_load_state_dicts,
    "lightning.fabric.utilities.data._set_sampler_epoch": test_set_sampler_epoch,
}


def test_every_attribute_has_its_test():
    assert set(TESTS) == set(internals.ATTRIBUTES)


def test_no_private_lightning_name_outside_the_internals_module():
    private = {a.rpartition(".")[2] for a in internals.ATTRIBUTES}
    pattern = re.compile(r"\.(%s)\b|from lightning[\w.]* import [^\n]*\b_[a-z]" % "|".join(map(re.escape, private)))
    found = [f"{path.relative_to(PACKAGE.parent)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
             for path in PACKAGE.rglob("*.py") if path.name != "lightning_internals.py"
             for text in [path.read_text()] for m in pattern.finditer(text)]
    assert not found, f"private Lightning names outside lit/lightning_internals.py: {found}"


def test_a_missing_attribute_names_the_version_and_the_attribute():
    with pytest.raises(internals.LightningInternalsError,
                       match=rf"^lightning {re.escape(VERSION)}: _FitLoop._combined_loader is gone"):
        internals.train_loaders(type("Moved", (), {"fit_loop": object()})())
