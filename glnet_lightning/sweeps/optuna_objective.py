"""One Optuna trial = one full ``glnet fit`` of the base config with the trial's parameters, in process.

Why in process: Optuna's Lightning pruning callback must call ``trial.report``/``should_prune`` from
inside the fit, and building the run through :class:`GLNetCLI` (``run=False``) gives each trial
exactly what ``glnet fit --config <run_dir>/trial_config.yaml`` would: its own TensorBoard dir,
``config.yaml`` and ``checkpoints/{best,last}.ckpt`` under ``<runs_dir>/<study>/trial_NNNN``.

A trial that raises (bad config, out of memory, a non-finite training loss under the module's
``nonfinite_loss`` policy...) records the error in its user attributes and is left to
``study.optimize(catch=...)`` to mark FAIL, so the study goes on. A NaN/inf loss is the module's
own guard's call (:class:`~glnet_lightning.lit.nonfinite.NonFiniteLossGuard`): ``stop`` fails the
trial, ``skip`` trains on, exactly as in ``glnet fit``; the runner only refuses a non-finite
objective value.
"""
from __future__ import annotations

import gc
import json
import math
from pathlib import Path
from typing import Any

import optuna
import yaml

from glnet_lightning.bench.cost import (DEFAULT_BATCH_SIZE, DEFAULT_REPEATS, DEFAULT_WARMUP, inference_throughput,
                                        measure_cost)
from glnet_lightning.cli.config_edit import apply_edits
from .optuna_sweep import OptunaSweep

__all__ = ["NonFiniteObjectiveError", "TrialRunner"]


class NonFiniteObjectiveError(RuntimeError):
    """An objective came out NaN/inf; the trial is recorded as failed."""


def image_size_of(config: dict[str, Any], default: int = 224) -> int:
    """The training resolution from a LightningCLI config's data block."""
    data = config.get("data") or {}
    args = data.get("init_args", data) if isinstance(data, dict) else {}
    return int(args.get("image_size") or default)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class TrialRunner:
    """The objective: ``runner(trial)`` trains one configuration and returns its objective value(s)."""

    def __init__(self, sweep: OptunaSweep, base_config: dict, sets: dict[str, Any] | None = None) -> None:
        self.sweep = sweep
        self.base_config = base_config
        self.sets = dict(sets or {})
        self._datamodules: dict[str, Any] = {}  # data config (YAML) -> data module, reused across trials

    # ------------------------------------------------------------------ config
    def trial_config(self, overrides: dict[str, Any], run_dir: Path) -> dict:
        """base < sweep budget < --set < trial parameters; the run dir is always the trial's own.

        ``test_after_fit`` is switched off: a search must not look at the test set (and the trial's
        saved config should say what really ran).
        """
        fixed: dict[str, Any] = {"trainer.default_root_dir": str(run_dir)}
        if "test_after_fit" in self.base_config:
            fixed["test_after_fit"] = False
        return apply_edits(self.base_config, self.sweep.budget, self.sets, overrides, fixed)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        overrides = self.sweep.space.suggest(trial)
        duplicate = self._duplicate_of(trial) if self.sweep.skip_duplicates else None
        if duplicate is not None:
            for key, value in duplicate.user_attrs.items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("duplicate_of", duplicate.number)
            return duplicate.values if self.sweep.multi_objective else duplicate.value
        resume = self._checkpoint_to_resume(trial)
        run_dir = Path(trial.user_attrs["run_dir"]) if resume else self.sweep.study_dir / f"trial_{trial.number:04d}"
        if resume:
            trial.set_user_attr("resumed_from", str(resume))
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", _jsonable(overrides))
        config = self.trial_config(overrides, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "trial_config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            return self._fit(trial, config, config_path, resume)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            raise
        finally:
            gc.collect()

    # ------------------------------------------------------------------ the run
    @staticmethod
    def _checkpoint_to_resume(trial: optuna.Trial) -> Path | None:
        """A heartbeat retry (same parameters) continues the dead trial's run from its ``last.ckpt``.

        Optuna's retry callback copies the failed trial's user attributes, its ``run_dir`` included;
        a retry whose run left no checkpoint starts afresh in its own directory.
        """
        retried = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        if retried is None or not trial.user_attrs.get("run_dir"):
            return None
        from .grid import find_last_checkpoint

        return find_last_checkpoint(Path(trial.user_attrs["run_dir"]))

    def _fit(self, trial: optuna.Trial, config: dict, config_path: Path, resume: Path | None = None
             ) -> float | list[float]:
        from glnet_lightning.cli.lightning_cli import build_cli

        cli = build_cli(["--config", str(config_path)])
        trainer, module = cli.trainer, cli.model
        datamodule = self._datamodule(config, cli.datamodule)
        image_size = image_size_of(config)
        self._record(trial, measure_cost(module.model, image_size, throughput=False).figures())

        pruning = self._pruning_callback(trial)
        if pruning is not None:
            trainer.callbacks.append(pruning)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        if pruning is not None:
            trainer.callbacks.remove(pruning)
        metrics = self._logged_metrics(trainer, module, datamodule)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        trial.set_user_attr("checkpoint", best or str(config_path.parent / "checkpoints" / "last.ckpt"))

        if self.sweep.measure.get("throughput", True) or any(o.name == "throughput" for o in self.sweep.objectives):
            # measured, not looked up: the slots / kernel trade-off is against speed on this hardware
            m = self.sweep.measure
            speed = inference_throughput(module.model, image_size,
                                         batch_size=int(m.get("batch_size", DEFAULT_BATCH_SIZE)),
                                         warmup=int(m.get("warmup", DEFAULT_WARMUP)),
                                         repeats=int(m.get("repeats", DEFAULT_REPEATS)))
            self._record(trial, {"throughput": speed.median, "ms_per_batch": speed.ms_per_batch})
        values = []
        for objective in self.sweep.objectives:
            value = trial.user_attrs.get(objective.name) if objective.measured else metrics.get(objective.name)
            if value is None:
                raise KeyError(f"objective {objective.name!r} was not logged; logged metrics: {sorted(metrics)}")
            if not math.isfinite(value):
                raise NonFiniteObjectiveError(f"objective {objective.name} is {value}")
            values.append(float(value))
        return values if self.sweep.multi_objective else values[0]

    def _datamodule(self, config: dict, fresh):
        """Reuse a data module already set up for the same data config (saves re-reading the data set)."""
        key = yaml.safe_dump(config.get("data"), sort_keys=True)
        return self._datamodules.setdefault(key, fresh)

    def _pruning_callback(self, trial: optuna.Trial):
        objective = self.sweep.objectives[0]
        if self.sweep.multi_objective or objective.measured:
            return None
        if isinstance(trial.study.pruner, optuna.pruners.NopPruner):
            return None
        from optuna_integration import PyTorchLightningPruningCallback

        return PyTorchLightningPruningCallback(trial, monitor=objective.name)

    @staticmethod
    def _logged_metrics(trainer, module, datamodule) -> dict[str, float]:
        """Logged metrics after fit; the checkpointed best replaces the last value of the monitored one.

        A budget that ends before the first validation (``max_steps`` inside epoch 0) gets one
        validation pass now, so the trial still has a score.
        """
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        if not any(k.startswith("val") for k in metrics):
            trainer.validate(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.monitor and checkpoint.best_model_score is not None:
            metrics[checkpoint.monitor] = float(checkpoint.best_model_score)
        return metrics

    @staticmethod
    def _record(trial: optuna.Trial, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            trial.set_user_attr(key, float(value))

    # ------------------------------------------------------------------ duplicates
    @staticmethod
    def _duplicate_of(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
        """A finished trial with the same parameters: the categorical space is small and a full fit costly."""
        for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if other.params == trial.params and other.number != trial.number:
                return other
        return None
