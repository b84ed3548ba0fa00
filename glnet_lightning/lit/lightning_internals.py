"""Every private Lightning attribute the project uses, reached here and nowhere else.

Why: Lightning does not keep its private names from one release to the next, and these needs have no
public API (docs/architecture.md, "Lightning built-ins: adopted or not"): the train loader's state and
iterator for an exact resume, ``ModelCheckpoint``'s own write of ``last.ckpt``, the SIGTERM flag and
handler under DDP, and whether a module has a Trainer yet. Each private name is read by one accessor below; a release that moves it fails with
:class:`LightningInternalsError` naming the Lightning version and the attribute, and
``tests/lit/test_lightning_internals.py`` checks each one (:data:`ATTRIBUTES`) on the installed Lightning.
"""
from __future__ import annotations

import signal
from typing import Any, Callable

import lightning

from glnet_lightning.errors import UserError

__all__ = ["ATTRIBUTES", "LightningInternalsError", "attached_trainer", "last_checkpoint_skipped",
           "load_train_loader_states", "mark_sigterm_received", "restart_train_iterator", "save_last_checkpoint",
           "saves_on_train_epoch_end", "set_sampler_epoch", "sigterm_handlers_besides_lightnings",
           "train_loader_states", "train_loaders"]

#: The private attributes reached here, as ``Owner.name``: one test each in tests/lit/test_lightning_internals.py.
ATTRIBUTES = (
    "LightningModule._trainer",
    "Trainer._signal_connector",
    "_SignalConnector._sigterm_notifier_fn",
    "_HandlersCompose.signal_handlers",
    "ModelCheckpoint._should_skip_saving_checkpoint",
    "ModelCheckpoint._should_save_on_train_epoch_end",
    "ModelCheckpoint._monitor_candidates",
    "ModelCheckpoint._save_last_checkpoint",
    "_FitLoop._combined_loader",
    "_FitLoop._combined_loader_states_to_load",
    "_FitLoop._data_fetcher",
    "CombinedLoader._state_dicts",
    "CombinedLoader._load_state_dicts",
    "lightning.fabric.utilities.data._set_sampler_epoch",
)


class LightningInternalsError(UserError, RuntimeError):
    """A private Lightning attribute the project relies on is not where this Lightning release keeps it."""


def _missing(attribute: str, problem: str = "is gone") -> LightningInternalsError:
    return LightningInternalsError(
        f"lightning {lightning.__version__}: {attribute} {problem}; glnet_lightning relies on it. Install a "
        "lightning version setup.cfg allows, or adapt glnet_lightning/lit/lightning_internals.py to this release")


def _get(obj: Any, name: str, owner: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _missing(f"{owner}.{name}") from None


def _set(obj: Any, name: str, owner: str, value: Any) -> None:
    """Assign an attribute Lightning itself set up (a missing one would be created silently, not used)."""
    _get(obj, name, owner)
    setattr(obj, name, value)


# ------------------------------------------------------------------------------------ LightningModule
def attached_trainer(module) -> Any | None:
    """The module's Trainer, or None when it is not attached (``module.trainer`` raises then)."""
    return _get(module, "_trainer", "LightningModule")


# ------------------------------------------------------------------------------------ SIGTERM
def mark_sigterm_received(trainer) -> None:
    """Set the flag ``trainer.received_sigterm`` reads (the Trainer has no public setter)."""
    connector = _get(trainer, "_signal_connector", "Trainer")
    _set(connector, "received_sigterm", "_SignalConnector", True)


def sigterm_handlers_besides_lightnings(trainer) -> list[Callable | int | None]:
    """What the SIGTERM handler in place calls, except Lightning's own notifier for ``trainer``.

    Lightning installs one handler composed of its notifier and the handler found before it; a handler
    that is not Lightning's is returned whole."""
    from lightning.pytorch.trainer.connectors import signal_connector

    connector = _get(trainer, "_signal_connector", "Trainer")
    notifier = _get(type(connector), "_sigterm_notifier_fn", "_SignalConnector")
    composed = _get(signal_connector, "_HandlersCompose", "lightning.pytorch.trainer.connectors.signal_connector")
    current = signal.getsignal(signal.SIGTERM)
    if not isinstance(current, composed):
        return [current]
    handlers = _get(current, "signal_handlers", "_HandlersCompose")
    return [h for h in handlers if getattr(h, "__func__", None) is not notifier]


# ------------------------------------------------------------------------------------ ModelCheckpoint
def last_checkpoint_skipped(callback, trainer) -> bool:
    """``ModelCheckpoint``'s own reasons not to save now: not fitting, sanity check, fast_dev_run, or this
    step is saved already."""
    return bool(_get(callback, "_should_skip_saving_checkpoint", "ModelCheckpoint")(trainer))


def saves_on_train_epoch_end(callback, trainer) -> bool:
    """Whether ``ModelCheckpoint`` saves at the end of the training epoch (else at the end of validation)."""
    return bool(_get(callback, "_should_save_on_train_epoch_end", "ModelCheckpoint")(trainer))


def save_last_checkpoint(callback, trainer) -> None:
    """``ModelCheckpoint``'s own write of ``last.ckpt`` (its name, version counter, ``save_last="link"``,
    removal of the previous file, ``last_model_path``) with the metrics it would use."""
    candidates = _get(callback, "_monitor_candidates", "ModelCheckpoint")(trainer)
    _get(callback, "_save_last_checkpoint", "ModelCheckpoint")(trainer, candidates)


# ------------------------------------------------------------------------------------ the train loader
def _combined_loader(trainer):
    return _get(trainer.fit_loop, "_combined_loader", "_FitLoop")


def train_loaders(trainer) -> list[Any] | None:
    """The fit's train loaders as Lightning iterates them, or None before Lightning made them."""
    combined = _combined_loader(trainer)
    return None if combined is None else list(combined.flattened)


def train_loader_states(trainer) -> list[dict[str, Any]]:
    """The states of this rank's stateful train loaders ([] without any), as Lightning would save them."""
    combined = _combined_loader(trainer)
    return [] if combined is None else _get(combined, "_state_dicts", "CombinedLoader")()


def load_train_loader_states(trainer, states: list[dict[str, Any]]) -> None:
    """Load saved loader states into the fit's train loaders now, and stop Lightning loading its own later."""
    combined = _combined_loader(trainer)
    _get(combined, "_load_state_dicts", "CombinedLoader")(states)
    _set(trainer.fit_loop, "_combined_loader_states_to_load", "_FitLoop", [])


def restart_train_iterator(trainer) -> None:
    """Make the fit's train iterator anew, from the loaders' current state and sampler epoch."""
    fetcher = _get(trainer.fit_loop, "_data_fetcher", "_FitLoop")
    if fetcher is None:
        raise _missing("_FitLoop._data_fetcher", "is None at the start of training")
    iter(fetcher)


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Set the epoch of the loader's sampler(s) exactly as Lightning does at the start of an epoch."""
    from lightning.fabric.utilities import data

    _get(data, "_set_sampler_epoch", "lightning.fabric.utilities.data")(loader, epoch)
