"""``GLNetCLI``: the LightningCLI behind ``glnet fit|validate|test|predict`` and ``lightning ...``.

Why a subclass: it fixes the project's run layout and defaults in one place —
- one directory per run: TensorBoard events, ``config.yaml`` and ``checkpoints/`` all go straight
  into ``--trainer.default_root_dir`` (default ``runs/<backbone name>``; no ``lightning_logs/version_N``
  nesting), unless the user configures ``--trainer.logger`` themselves;
- checkpoints: ``checkpoints/last.ckpt`` (every epoch, :class:`~glnet_lightning.lit.RunCheckpoint`)
  and ``checkpoints/best.ckpt`` (by ``val/acc1``), written atomically
  (:class:`~glnet_lightning.lit.AtomicCheckpointIO`), so ``--ckpt_path last`` resumes;
- ``data.num_classes`` (when the data module has it) sets ``model.num_classes``;
- bad values (parse errors, a model or data module refusing its arguments, an image size the
  model's stride does not divide, a missing ``--model.init_weights`` file) surface as one
  :class:`ConfigError` before any data is read,
  which ``cli.main`` prints as a single line;
- failures during a run that have a clear fix — a diverged loss, a full disk while saving, a
  checkpoint (or ``init_weights`` file) that does not fit the configured model — are reported the
  same way (:class:`RunError`);
- SIGTERM (SLURM pre-emption) saves ``last.ckpt`` (:class:`~glnet_lightning.lit.PreemptionCheckpoint`)
  and exits with status 143 (128 + SIGTERM) after one line saying how to resume.
  See docs/reliability.md.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
import warnings

import torch
import yaml
from jsonargparse import ArgumentError, DefaultHelpFormatter
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

import glnet_lightning.data  # noqa: F401  (the data modules' short names: --data ImageNetDataModule, --data.help ...)
from glnet_lightning.lit import AtomicCheckpointIO, GLNetModule, PredictionWriter
from glnet_lightning.lit.checkpoint_check import checkpoint_mismatch
from glnet_lightning.lit.checkpoint_io import CheckpointWriteError
from glnet_lightning.models.backbone import check_backbone, named_backbones, resolve_backbone
from glnet_lightning.lit.nonfinite import TrainingDiverged
from glnet_lightning.lit.preemption import PreemptionCheckpoint
from glnet_lightning.lit.run_checkpoint import RunCheckpoint

from glnet_lightning.errors import UserError, close_matches
from glnet_lightning.models.weights import WeightsError

from .errors import SIGTERM_EXIT_CODE, option_strings, unknown_options

__all__ = ["GLNetCLI", "GLNetTrainer", "ConfigError", "RunError", "CHECKPOINT_DEFAULTS", "build_cli",
           "check_run_config"]

#: Defaults of the ``--checkpoint.*`` group (a ModelCheckpoint every run has).
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "monitor": "val/acc1",
    "mode": "max",
    "save_top_k": 1,
    "save_last": True,
    "filename": "best",
    "auto_insert_metric_name": False,
    # a resumed run overwrites its own best.ckpt / last.ckpt (a fresh fit into a used directory is refused)
    "enable_version_counter": False,
}

#: Where a run goes when neither the config nor the command line says: ``runs/<backbone name>``.
RUNS_DIR = "runs"

# Errors that mean "the configuration is wrong", as opposed to a bug or a failure during training.
_CONFIG_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, KeyError, ArgumentError,
                  MisconfigurationException)



class ConfigError(UserError):
    """A configuration the CLI cannot run; the message is meant to be shown as is, on one line."""


class RunError(ConfigError):
    """A run stopped for a reason the user can fix (diverged loss, disk full, checkpoint that does not
    fit); a ``ConfigError`` so that ``cli.main`` prints it as one ``error:`` line with status 2."""


class SaveFitConfig(SaveConfigCallback):
    """Save ``config.yaml`` for ``fit`` only: validating or testing a run's checkpoint inside the
    run directory must not overwrite the configuration the run was trained with."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


def _backbone_message(text: str) -> str | None:
    """jsonargparse's report on ``model.backbone`` as one line naming the setting and what to write instead."""
    m = re.match(r'Parser key "([^"]*backbone)": (.*)$', text)
    if not m:
        return None
    key, rest = m.groups()
    if "Expected a dot import path string" in rest or "does not correspond to a subclass" in rest:
        given = re.search(r"import path string: (\S+)", rest) or re.search(r"path (\S+) does not", rest)
        name = given.group(1) if given else "?"
        close = close_matches(name, named_backbones())
        hint = f"did you mean {close[0]}? " if close else ""
        return (f"{key}: unknown model {name!r}; {hint}named GLNet models are {named_backbones()} "
                f"(or GLNetArgs, TimmModel, a full class path)")
    m = re.match(r"Problem with given class_path '([^']+)': (.*)$", rest)
    if not m:
        return None
    class_path, reason = m.groups()
    short = class_path.rpartition(".")[2]
    option = re.match(r"Option '([^']+)' is not accepted", reason)
    if option:
        try:
            settings = list(resolve_backbone(class_path).settings())
        except (ValueError, TypeError):
            settings = []
        close = close_matches(option.group(1), settings)
        hint = f"; did you mean {close[0]}?" if close else f"; its settings are {settings}"
        return f"{key}.{option.group(1)}: {short} has no such setting{hint}"
    nested = re.match(r'Parser key "([^"]+)": (.*)$', reason)
    if nested:
        return _union_reason(f'Parser key "{key}.{nested.group(1)}": {nested.group(2)}')
    return f"{key} ({short}): {reason}"


def _module_option_message(text: str) -> str | None:
    """An unknown option of a module chosen by class path (``--model.lrr``) as one line naming the closest one."""
    m = re.search(r"Problem with given class_path '([^']+)': Option '([^']+)' is not accepted", text)
    if not text.startswith('Parser key "model":') or not m:
        return None
    import inspect

    class_path, option = m.groups()
    cls = _module_class(class_path)
    if cls is None:
        return None
    options = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
    close = close_matches(option, options)
    hint = f"did you mean {close[0]}?" if close else f"its options are {options}"
    return f"model.{option}: {class_path.rpartition('.')[2]} has no such option; {hint}"


def _unknown_key_message(parser: LightningArgumentParser, args: Any, text: str) -> str | None:
    """An unknown option (``--trainer.max_step``) or config key (``trainer: {max_step: 3}``) as one line naming
    the closest real one."""
    text = " ".join(text.split())
    config_key = re.match(r"Subcommand '(\w+)' does not accept option '([^']+)'", text)
    if config_key:  # a key of a config file, in the form of the option that sets it
        text = f"unrecognized arguments: --{config_key.group(2)}"
    elif not text.startswith("unrecognized arguments: "):
        return None
    first = next((word for word in text.split()[2:] if word.startswith("-")), "")
    if first.split("=")[0] == "--model.help":  # a classification run: the model is not chosen by class
        return ("this run's model is GLNetModule: its options are in glnet fit --help (--model.*); the network's "
                "settings: --model.backbone.help glnet_stl (or any named model, GLNetArgs, TimmModel); a config "
                "whose model names a class_path (the ade20k_* and coco_* configs) takes --model.help CLASS")
    subparsers = _subcommand_parsers(parser)
    subcommand = config_key.group(1) if config_key else next(
        (a for a in (args or []) if isinstance(a, str) and a in subparsers), None)
    message = unknown_options(text, option_strings(subparsers.get(subcommand, parser)))
    where = f"{parser.prog} {subcommand} --help" if subcommand else f"{parser.prog} --help"
    return message and f"{message} (see {where})"


def _subcommand_parsers(parser: Any) -> dict[str, Any]:
    """``{"fit": parser, ...}``: argparse keeps sub-parsers as the ``choices`` of its sub-command action."""
    for action in getattr(parser, "_actions", []):
        if isinstance(getattr(action, "choices", None), dict):
            return dict(action.choices)
    return {}


def _one_line(exc: BaseException) -> str:
    """The message on one line; jsonargparse's union-type reports are cut down to the real reason, and an
    error re-raised from a DataLoader worker (whose message is the worker's whole traceback) to its own."""
    text = str(exc)
    if "Original Traceback" in text and text.strip():  # torch's ExceptionWrapper: the last line is the error
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", text.strip().splitlines()[-1])
    text = " ".join(text.split())
    text = re.sub(r"^Call to compute_fn of link '[^']*' with args .*?\) failed: ", "", text)
    backbone = _backbone_message(text) or _module_option_message(text)
    text = _union_reason(backbone if backbone is not None else text)
    # jsonargparse's 'Parser key "a.b": reason' as 'a.b: reason', the form of every other config error
    return re.sub(r'^Parser key "([^"]+)": ', r"\1: ", text) or type(exc).__name__


def _union_reason(text: str) -> str:
    """A jsonargparse union-type report cut down to the real reason, or the text as it is."""
    if "Does not validate against any of the Union subtypes" in text and " Errors: - " in text:
        key = re.match(r'Parser key "([^"]+)":', text)
        errors = text.split(" Errors: - ", 1)[1].split(" Given value type: ")[0]
        reasons = [r for r in errors.split(" - ") if "NoneType" not in r]
        given = re.search(r" Given value: (.*)$", text)
        text = "; ".join(reasons) or text
        if given and len(given.group(1)) <= 80:
            text += f" (given: {given.group(1)})"
        if key:
            text = f"{key.group(1)}: {text}"
    return text


def plain(text: str) -> str:
    """Docstring markup as plain words: ``x`` and :role:`x` -> x, :class:`~a.b.C` -> C."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rpartition(".")[2] if m.group(0)[m.group(0).index("`") + 1] == "~"
                  else m.group(1), text)
    return re.sub(r"``([^`]+)``", r"\1", text)


class PlainHelpFormatter(DefaultHelpFormatter):
    """``--help`` in plain words: the help of Lightning's and our classes comes from docstrings written
    for Sphinx."""

    def add_text(self, text: str | None) -> None:
        super().add_text(plain(text) if text else text)

    def start_section(self, heading: str | None) -> None:
        super().start_section(plain(heading) if heading else heading)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Line breaks of descriptions and the epilog stay (lists, aligned options); long lines wrap."""
        return "\n".join(indent + line if line.startswith(" ") else
                         super(PlainHelpFormatter, self)._fill_text(line, width, indent) for line in text.splitlines())

    def _get_help_string(self, action) -> str | None:
        text = super()._get_help_string(action)
        return plain(text) if text else text


#: The end of ``glnet fit|validate|test|predict --help``: the data options live in the data module
#: chosen by ``--data`` (or the config), which the generic help cannot list.
DATA_EPILOG = """data: the config's data module, or --data CLASS: FashionMNISTDataModule (configs/fashion_mnist.yaml)
or ImageNetDataModule (configs/imagenet_*.yaml: an ImageNet-style folder tree or litdata shards). Their options:
  --data.root DIR          where the images are (ImageNet: DIR/train/<class>/*, DIR/val/<class>/*)
  --data.batch_size N      images per device and step
  --data.image_size PX     input side in pixels (a multiple of the model's stride, 32)
  --data.num_workers N     loader processes
every option with its default: --data.help ImageNetDataModule (or FashionMNISTDataModule)
the network's settings: --model.backbone.help glnet_stl
a config with every value: --print_config
no GPU here? add --trainer.accelerator cpu --trainer.devices 1 --trainer.strategy auto
--trainer.precision 32-true"""


class GLNetTrainer(Trainer):
    """Lightning's Trainer: devices, precision, epochs and steps, logging.

    Why a subclass: its batch-count options are typed ``int | float`` in that order. Lightning annotates them ``Optional[Union[int, float]]``, but ``typing`` caches unions by
    unordered equality, so depending on what was imported first the annotation comes back as
    ``Union[float, int, None]``, and jsonargparse then reads ``--trainer.limit_train_batches 1`` as
    1.0: the whole epoch instead of one batch. A ``|`` union keeps its order.

    Args:
        limit_train_batches: training batches per epoch: a count (int) or a fraction of the epoch (float).
        limit_val_batches: validation batches: a count (int) or a fraction (float).
        limit_test_batches: test batches: a count (int) or a fraction (float).
        limit_predict_batches: prediction batches: a count (int) or a fraction (float).
        overfit_batches: train and validate on this many batches (int) or this fraction (float) of the training set.
        val_check_interval: validate every this many training batches (int) or fraction of an epoch (float).
    """

    def __init__(self, *, limit_train_batches: int | float | None = None, limit_val_batches: int | float | None = None,
                 limit_test_batches: int | float | None = None, limit_predict_batches: int | float | None = None,
                 overfit_batches: int | float = 0.0, val_check_interval: int | float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
                         limit_test_batches=limit_test_batches, limit_predict_batches=limit_predict_batches,
                         overfit_batches=overfit_batches, val_check_interval=val_check_interval, **kwargs)


def _config_files(args: Any) -> list[str]:
    """The ``--config FILE`` values of a command line, in order (``--config=FILE`` too)."""
    words = [a for a in (args or []) if isinstance(a, str)]
    files = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--config"]
    return files + [w.split("=", 1)[1] for w in words if w.startswith("--config=")]


def _named_model(args: Any) -> str | None:
    """The model class a command line names: ``--model CLASS`` or a config's ``model: {class_path: ...}``
    (the last one wins, as in LightningCLI); None for the classification configs, which name none."""
    words = [a for a in (args or []) if isinstance(a, str)]
    named = None
    for path in _config_files(args):
        try:
            model = yaml.safe_load(Path(path).expanduser().read_text()).get("model")
        except (OSError, yaml.YAMLError, AttributeError):  # LightningCLI reports a bad config file its own way
            continue
        if isinstance(model, Mapping) and isinstance(model.get("class_path"), str):
            named = model["class_path"]
    for i, word in enumerate(words):
        if word == "--model" and i + 1 < len(words) and not words[i + 1].startswith("-"):
            named = words[i + 1]
        elif word.startswith("--model="):
            named = word.split("=", 1)[1]
    return named


def _model_class(args: Any) -> tuple[type[LightningModule], bool]:
    """``(model_class, subclass_mode)``: :class:`GLNetModule` for the classification configs, any
    LightningModule chosen by class path (``SegmentationModule``, ``DetectionModule``) otherwise.

    Why not always subclass mode: the classification configs and every command the README shows set
    ``model.backbone`` directly; a task module named by ``class_path`` is the only case that needs it."""
    named = _named_model(args)
    if named is None or named.rpartition(".")[2] == GLNetModule.__name__:
        return GLNetModule, named is not None
    return LightningModule, True


def _module_class(class_path: str) -> type | None:
    """The class a ``class_path`` names (a short name: one of ``glnet_lightning.lit``); None when it does not
    import, which LightningCLI then reports in its own words."""
    import importlib

    import glnet_lightning.lit as lit

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module) if module else lit, name, None)
    except ImportError:
        return None


def _checkpoint_defaults(args: Any) -> dict[str, Any]:
    """:data:`CHECKPOINT_DEFAULTS` with the metric the chosen module ranks checkpoints by: its class
    attribute ``CHECKPOINT_MONITOR`` (``("val/mIoU", "max")``), ``val/acc1`` for the classifier."""
    named = _named_model(args)
    cls = _module_class(named) if named is not None else None
    monitor, mode = getattr(cls, "CHECKPOINT_MONITOR", (CHECKPOINT_DEFAULTS["monitor"], CHECKPOINT_DEFAULTS["mode"]))
    return {**CHECKPOINT_DEFAULTS, "monitor": monitor, "mode": mode}


def _model_args(model: Any) -> Any:
    """The module's own arguments in a parsed config: ``model`` itself, or its ``init_args`` in subclass mode."""
    return model.get("init_args", model) if hasattr(model, "get") and model.get("class_path") else model


class GLNetCLI(LightningCLI):
    """LightningCLI with :class:`GLNetModule` as the model and any LightningDataModule as ``data``;
    a config whose ``model`` names a ``class_path`` (the dense-prediction modules) chooses its module."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        # allow_abbrev: no prefix matching, so a typo (--trainer.max_step) cannot set another option
        # (jsonargparse gives the sub-command parsers the main parser's formatter)
        parser_kwargs = {"exit_on_error": False, "allow_abbrev": False, "formatter_class": PlainHelpFormatter,
                         **kwargs.pop("parser_kwargs", {})}
        kwargs.setdefault("save_config_callback", SaveFitConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites its config
        kwargs.setdefault("trainer_class", GLNetTrainer)
        model_class, subclass_mode = _model_class(args)
        self._subclass_mode_model = subclass_mode
        self._checkpoint_defaults = _checkpoint_defaults(args)
        try:  # LightningCLI runs the subcommand inside __init__
            super().__init__(
                model_class,
                LightningDataModule,
                subclass_mode_model=subclass_mode,
                subclass_mode_data=True,
                auto_configure_optimizers=False,
                parser_kwargs=parser_kwargs,
                args=args,
                **kwargs,
            )
        except (Exception, SIGTERMException) as exc:
            if getattr(self, "trainer", None) is not None:  # built: the error is the run's
                self._raise_run_error(exc)
            raise

    # ------------------------------------------------------------------ parsing
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.epilog = DATA_EPILOG
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{k}": v for k, v in self._checkpoint_defaults.items()})
        target = "model.init_args.num_classes" if self._subclass_mode_model else "model.num_classes"
        parser.link_arguments("data", target, compute_fn=_num_classes_of, apply_on="instantiate")
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="fit only: evaluate the best checkpoint on the test set when training ends")

    def after_fit(self) -> None:
        """LightningCLI hook: ``--test_after_fit`` tests the best checkpoint (or the final weights)."""
        if not self.config[self.subcommand].get("test_after_fit") or self.trainer.interrupted:
            return
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check the backbone config at once: it is cheap and must fail before anything
        else happens (seeding, data module construction, data loading)."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as exc:
            raise ConfigError(_unknown_key_message(parser, args, str(exc)) or _one_line(exc)) from exc
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        model = _model_args(config.get("model"))
        if model is None or model.get("backbone") is None:
            return
        try:
            description = resolve_backbone(model.backbone)
            backbone = check_backbone(description, 1000, model.drop_path_rate)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.backbone: {_one_line(exc)}") from exc
        if config.get("trainer") is not None and not config.trainer.get("default_root_dir"):
            config.trainer.default_root_dir = os.path.join(RUNS_DIR, description.name)
        if subcommand == "fit":
            _check_run_dir(config)
        _check_image_size(config.get("data"), backbone)
        init_weights = model.get("init_weights")
        if init_weights and not config.get("ckpt_path") and not Path(init_weights).expanduser().is_file():
            raise ConfigError(f"model.init_weights: file {init_weights} does not exist")

    # ------------------------------------------------------------------ instantiation
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except _CONFIG_ERRORS as exc:
            raise ConfigError(_one_line(exc)) from exc

    def _raise_run_error(self, exc: BaseException) -> None:
        """What ended the Trainer method, when the user can act on it: a missing or malformed data set, a
        diverged loss, a failed checkpoint write or a checkpoint (or init_weights file) of another
        architecture is one error line; SIGTERM exits with 143. Returns for anything else."""
        from glnet_lightning.data import DatasetLayoutError, UnreadableImageError

        if isinstance(exc, SIGTERMException):
            self._report_preemption()
            raise SystemExit(SIGTERM_EXIT_CODE) from None
        if isinstance(exc, (FileNotFoundError, NotADirectoryError, DatasetLayoutError, UnreadableImageError)):
            raise ConfigError(_one_line(exc)) from exc
        if isinstance(exc, (TrainingDiverged, CheckpointWriteError, WeightsError, UserError)):
            raise RunError(_one_line(exc)) from exc
        # A strict load failed. (An explicit --ckpt_path FILE cannot get here: LightningCLI rebuilds the
        # model from the file's hyper-parameters; "last"/"best"/"hpc" are resolved later.)
        if isinstance(exc, RuntimeError) and self.trainer.ckpt_path and "Error(s) in loading state_dict" in str(exc):
            reason = checkpoint_mismatch(self.trainer.ckpt_path, self.model)
            if reason:
                raise RunError(reason) from exc

    def _report_preemption(self) -> None:
        saved = next((cb for cb in self.trainer.callbacks if isinstance(cb, PreemptionCheckpoint)), None)
        if not self.trainer.is_global_zero:
            return
        if saved is not None and saved.saved_path:
            what = f"saved {saved.saved_path} at global step {saved.saved_step}; resume with --ckpt_path last"
        else:
            what = "nothing to save outside training"
        print(f"{self.parser.prog}: stopped by SIGTERM: {what}", file=sys.stderr, flush=True)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config.get("trainer") or {}
        _check_devices(trainer_config)  # after the data module: a wrong --data.root is named first
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(
                save_dir=trainer_config.get("default_root_dir") or os.getcwd(), name="", version="",
                default_hp_metric=False,
            )
        if kwargs.get("logger", trainer_config.get("logger")):
            kwargs["callbacks"] = list(_as_list(trainer_config.get("callbacks"))) + [
                LearningRateMonitor(logging_interval="step")
            ]
        if self.subcommand in ("fit", None):  # a SIGTERM (pre-emption) saves last.ckpt; None: run=False (sweeps)
            callbacks = kwargs.get("callbacks", _as_list(trainer_config.get("callbacks")))
            kwargs["callbacks"] = list(callbacks) + [PreemptionCheckpoint()]
        plugins = list(_as_list(trainer_config.get("plugins")))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = plugins + [AtomicCheckpointIO()]
        if self.subcommand == "predict":
            kwargs["callbacks"] = list(kwargs.get("callbacks", _as_list(trainer_config.get("callbacks")))) + [
                PredictionWriter()
            ]
        return super().instantiate_trainer(**kwargs)


def build_cli(args: list[str]) -> GLNetCLI:
    """``GLNetCLI(args, run=False)``: model, data module and trainer built, nothing run.

    LightningCLI's warning that the process's own command line (a sweep runner's options) is not
    what it parses is silenced: ``args`` is the whole configuration.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return GLNetCLI(args=args, run=False)


def check_run_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` (one line) unless ``glnet fit --config`` could start on ``config``.

    Why: a sweep must not burn its trials on a mistake common to all of them (a bad ``--set``, a
    missing data root, a GPU trainer on a CPU machine). This builds what the fit builds -- the
    parsed config, the model, the data module with its class list (the folder layout is checked,
    no image is decoded) and the trainer -- in a throwaway run directory.
    """
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to N" belongs to the fit
    level = seed_log.level
    with tempfile.TemporaryDirectory(prefix="glnet-check-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No seed found")
        checked = {**dict(config), "trainer": {**dict(config.get("trainer") or {}), "default_root_dir": tmp}}
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(checked, sort_keys=False))
        seed_log.setLevel(logging.WARNING)
        try:
            build_cli(["--config", str(path)])
        finally:
            seed_log.setLevel(level)


#: What makes a GPU recipe run on this machine's CPU instead (stated next to the commands in the README).
CPU_OVERRIDES = "--trainer.accelerator cpu --trainer.devices 1 --trainer.strategy auto --trainer.precision 32-true"


def _check_devices(trainer: Any) -> None:
    """A GPU recipe (the ImageNet configs: 8 GPUs, DDP, bf16) on a machine without as many CUDA GPUs
    stops with one line naming the overrides that run it here, instead of Lightning's "No supported
    gpu backend found!"."""
    if trainer is None or str(trainer.get("accelerator")) not in ("gpu", "cuda"):
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = trainer.get("devices")
    wanted = len(devices) if isinstance(devices, (list, tuple)) else \
        int(devices) if isinstance(devices, int) or str(devices).isdigit() else None
    if found == 0:
        raise ConfigError(f"trainer.accelerator={trainer.get('accelerator')} but this machine has no CUDA GPU; "
                          f"to run on its CPU add {CPU_OVERRIDES}")
    if wanted is not None and wanted > found:
        raise ConfigError(f"trainer.devices={devices} but this machine has {found} CUDA GPU(s); add "
                          f"--trainer.devices {found} (the learning rate follows the global batch) or run where "
                          f"there are {wanted}")


def _check_run_dir(config: Any) -> None:
    """One directory is one run: a fresh ``fit`` into a directory that holds a run's ``last.ckpt`` stops with
    one line saying how to resume it or where to write instead (rather than mixing two runs' events and
    checkpoints, or versioning them as ``last-v1.ckpt``)."""
    trainer = config.get("trainer") or {}
    root = trainer.get("default_root_dir")
    if config.get("ckpt_path") or not root:
        return
    last = Path(root).expanduser() / "checkpoints" / "last.ckpt"
    if last.is_file():
        raise ConfigError(f"{root} already holds a run ({last}): resume it with --ckpt_path last, or start another "
                          f"in a new directory with --trainer.default_root_dir DIR")


def _as_list(value: Any) -> list:
    if value is None or value is False or value is True:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_image_size(data_config: Any, backbone: Any) -> None:
    """The data's ``image_size`` must be a multiple of the model's total stride (32 for GLNet), else
    the stages floor odd sizes away and the run trains on a different geometry than the paper's."""
    init_args = (data_config or {}).get("init_args") if hasattr(data_config, "get") else None
    size = init_args.get("image_size") if init_args is not None else None
    strides = [f.get("reduction") for f in getattr(backbone, "feature_info", None) or [] if isinstance(f, dict)]
    stride = max((s for s in strides if s), default=None)
    if not isinstance(size, int) or not stride or size % stride == 0:
        return
    lower, upper = (size // stride) * stride, (size // stride + 1) * stride
    suggestion = f"{lower} or {upper}" if lower else str(upper)
    raise ConfigError(f"data.image_size={size} is not divisible by the model's total stride {stride} "
                      f"(stem and downsampling layers); use e.g. {suggestion}")


def _num_classes_of(data: LightningDataModule) -> int:
    """``data.num_classes`` (the classifier width the data needs); 1000 when the data module has none."""
    num_classes = getattr(data, "num_classes", None)
    return 1000 if num_classes is None else int(num_classes)
