"""``GLNetCLI``: the LightningCLI behind ``glnet fit|validate|test|predict`` and ``lightning ...``.

Why a subclass: it fixes the project's run layout and defaults in one place —
- one directory per run: TensorBoard events, ``config.yaml`` and ``checkpoints/`` all go straight
  into ``--trainer.default_root_dir`` (default ``runs/<model_name>``; no ``lightning_logs/version_N``
  nesting), unless the user configures ``--trainer.logger`` themselves;
- checkpoints: ``checkpoints/last.ckpt`` and ``checkpoints/best.ckpt`` (by ``val/acc1``), written
  atomically (:class:`~glnet_lightning.lit.AtomicCheckpointIO`), so ``--ckpt_path last`` resumes;
- ``data.num_classes`` (when the data module has it) sets ``model.num_classes``;
- bad values (parse errors, a model or data module refusing its arguments) surface as one
  :class:`ConfigError` before any data is read, which ``cli.main`` prints as a single line.
"""
from __future__ import annotations

import os
import re
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from glnet_lightning.lit import AtomicCheckpointIO, GLNetModule, PredictionWriter
from glnet_lightning.lit.factory import check_backbone_config

__all__ = ["GLNetCLI", "ConfigError", "CHECKPOINT_DEFAULTS"]

#: Defaults of the ``--checkpoint.*`` group (a ModelCheckpoint every run has).
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "monitor": "val/acc1",
    "mode": "max",
    "save_top_k": 1,
    "save_last": True,
    "filename": "best",
    "auto_insert_metric_name": False,
}

#: Where a run goes when neither the config nor the command line says: ``runs/<model_name>``.
RUNS_DIR = "runs"

# Errors that mean "the configuration is wrong", as opposed to a bug or a failure during training.
_CONFIG_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, KeyError, ArgumentError,
                  MisconfigurationException)


class ConfigError(Exception):
    """A configuration the CLI cannot run; the message is meant to be shown as is, on one line."""


class SaveFitConfig(SaveConfigCallback):
    """Save ``config.yaml`` for ``fit`` only: validating or testing a run's checkpoint inside the
    run directory must not overwrite the configuration the run was trained with."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


def _one_line(exc: BaseException) -> str:
    """The message on one line; jsonargparse's union-type reports are cut down to the real reason."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^Call to compute_fn of link '[^']*' with args .*?\) failed: ", "", text)
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
    return text or type(exc).__name__


class GLNetCLI(LightningCLI):
    """LightningCLI with :class:`GLNetModule` as the model and any LightningDataModule as ``data``."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        parser_kwargs = {"exit_on_error": False, **kwargs.pop("parser_kwargs", {})}
        kwargs.setdefault("save_config_callback", SaveFitConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # a resumed run rewrites its config
        super().__init__(
            GLNetModule,
            LightningDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            parser_kwargs=parser_kwargs,
            args=args,
            **kwargs,
        )

    # ------------------------------------------------------------------ parsing
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{k}": v for k, v in CHECKPOINT_DEFAULTS.items()})
        parser.link_arguments("data", "model.num_classes", compute_fn=_num_classes_of, apply_on="instantiate")
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
            raise ConfigError(_one_line(exc)) from exc
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        model = config.get("model")
        if model is None:
            return
        if config.get("trainer") is not None and not config.trainer.get("default_root_dir"):
            config.trainer.default_root_dir = os.path.join(RUNS_DIR, model.model_name)
        try:
            check_backbone_config(model.model_name, model.model_kwargs, 1000, model.drop_path_rate)
        except ValueError as exc:
            raise ConfigError(f"model: {_one_line(exc)}") from exc

    # ------------------------------------------------------------------ instantiation
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except _CONFIG_ERRORS as exc:
            raise ConfigError(_one_line(exc)) from exc

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the Trainer method; a missing or malformed data set is reported like a config error."""
        from glnet_lightning.data import DatasetLayoutError, UnreadableImageError

        try:
            super()._run_subcommand(subcommand)
        except (FileNotFoundError, NotADirectoryError, DatasetLayoutError, UnreadableImageError) as exc:
            raise ConfigError(_one_line(exc)) from exc

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(
                save_dir=trainer_config.get("default_root_dir") or os.getcwd(), name="", version="",
                default_hp_metric=False,
            )
        if kwargs.get("logger", trainer_config.get("logger")):
            kwargs["callbacks"] = list(_as_list(trainer_config.get("callbacks"))) + [
                LearningRateMonitor(logging_interval="step")
            ]
        plugins = list(_as_list(trainer_config.get("plugins")))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = plugins + [AtomicCheckpointIO()]
        if self.subcommand == "predict":
            kwargs["callbacks"] = list(kwargs.get("callbacks", _as_list(trainer_config.get("callbacks")))) + [
                PredictionWriter()
            ]
        return super().instantiate_trainer(**kwargs)


def _as_list(value: Any) -> list:
    if value is None or value is False or value is True:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _num_classes_of(data: LightningDataModule) -> int:
    """``data.num_classes`` (the classifier width the data needs); 1000 when the data module has none."""
    num_classes = getattr(data, "num_classes", None)
    return 1000 if num_classes is None else int(num_classes)
