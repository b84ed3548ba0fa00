"""The Optuna runner: a study's storage, sampler and pruner, and the trial runner.

Storage, sampler and pruner of an Optuna study, built so several workers can share it safely.

Why these choices:
- default storage is ``sqlite:///<runs_dir>/<study_name>/study.db``: embedded, nothing to start;
  SQLite is opened with a long busy timeout so two local workers wait for the write lock instead of
  failing with "database is locked";
- any other URL (``postgresql://``, ``mysql+pymysql://``) is passed to ``RDBStorage`` unchanged, so
  workers on many machines join one study by running the same command with the same URL;
- ``journal:PATH`` is Optuna's ``JournalStorage`` on a file (``JournalFileBackend``, whose default
  lock works on NFS): the choice for a cluster with a shared file system and no database server,
  where SQLite must not be used (its locking is unreliable on network file systems);
- heartbeats: each running trial stamps the storage every ``interval`` s (Optuna's own heartbeat
  thread; for the journal, :class:`HeartbeatJournalStorage` keeps the stamp as a trial attribute,
  so hosts sharing a journal need synchronised clocks, as NTP gives); a trial whose worker died
  (killed, machine lost) goes stale after ``grace_period`` s and the next trial start marks it FAIL,
  and ``RetryFailedTrialCallback`` enqueues its parameters again -- interrupted work is never lost;
- creating the schema and the study is serialised with a lock file for SQLite, because two workers
  started at the same moment would otherwise race on ``CREATE TABLE``.

One Optuna trial = one full ``glnet fit`` of the base config with the trial's parameters, in process.

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

import contextlib
import fcntl
import gc
import inspect
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from glnet_lightning.bench.cost import (DEFAULT_BATCH_SIZE, DEFAULT_REPEATS, DEFAULT_WARMUP, inference_throughput,
                                        measure_cost)
from glnet_lightning.config_edit import apply_edits

from .optuna_sweep import OptunaSweep, OptunaSweepError

__all__ = ["default_storage_url", "sqlite_path", "journal_path", "storage_folder", "make_storage", "make_sampler",
           "make_pruner", "open_study", "load_study", "HeartbeatJournalStorage", "NonFiniteObjectiveError",
           "TrialRunner"]


# Optuna 4.9 renamed RetryFailedTrialCallback (and RDBStorage's failed_trial_callback); use what exists.
_RetryCallback = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
    optuna.storages.RetryFailedTrialCallback
_STALE_ARG = ("heartbeat_stale_trial_callback"
              if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage.__init__).parameters
              else "failed_trial_callback")

SQLITE_TIMEOUT_S = 120


def default_storage_url(sweep: OptunaSweep) -> str:
    return f"sqlite:///{(sweep.study_dir / 'study.db').resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other storages or in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return Path(path) if path and path != ":memory:" else None


def journal_path(url: str) -> Path | None:
    """The journal file of a ``journal:PATH`` storage (None for other storages)."""
    return Path(url[len("journal:"):]).expanduser() if url.startswith("journal:") else None


def storage_folder(url: str) -> Path | None:
    """The folder holding a file storage (SQLite or journal), where reports are written beside it."""
    path = sqlite_path(url) or journal_path(url)
    return path.parent if path is not None else None


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """``JournalStorage`` with Optuna's heartbeat protocol, which only ``RDBStorage`` implements.

    Why: on a cluster sharing a file system, a worker killed mid-trial (pre-emption, node loss)
    must not leave its trial RUNNING for ever; with this, ``study.optimize`` stamps running trials
    and fails (and, through the callback, retries) stale ones exactly as with a database.
    """

    HEARTBEAT_ATTR = "glnet:heartbeat"

    def __init__(self, backend, heartbeat_interval: int, grace_period: int, stale_trial_callback) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, self.HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        deadline = time.time() - self._grace_period
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # a retried trial starts with the dead trial's attributes: its own start counts as a beat
            beats = [trial.system_attrs.get(self.HEARTBEAT_ATTR),
                     trial.datetime_start.timestamp() if trial.datetime_start is not None else None]
            beat = max((b for b in beats if b is not None), default=None)
            if beat is not None and beat < deadline:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self._stale_trial_callback

    def get_failed_trial_callback(self):  # Optuna < 4.9 asks by this name
        return self._stale_trial_callback


def _journal_storage(url: str, heartbeat: dict[str, Any] | None) -> JournalStorage:
    path = journal_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(path))
    interval = int((heartbeat or {}).get("interval", 60))
    if interval <= 0:
        return JournalStorage(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = _RetryCallback(max_retry=int(heartbeat.get("max_retry", 1)))
    return HeartbeatJournalStorage(backend, interval, int(heartbeat.get("grace_period", 3 * interval)), callback)


@contextlib.contextmanager
def _sqlite_lock(url: str):
    path = sqlite_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_storage(url: str, heartbeat: dict[str, Any] | None = None) -> optuna.storages.BaseStorage:
    """``RDBStorage`` (or the journal) with heartbeats (``heartbeat: {interval: 0}`` turns them off)."""
    heartbeat = dict(heartbeat or {})
    if journal_path(url) is not None:
        return _journal_storage(url, heartbeat)
    interval = int(heartbeat.get("interval", 60))
    kwargs: dict[str, Any] = {}
    if interval > 0:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, but stable since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs[_STALE_ARG] = _RetryCallback(max_retry=int(heartbeat.get("max_retry", 1)))
        kwargs["heartbeat_interval"] = interval
        kwargs["grace_period"] = int(heartbeat.get("grace_period", 3 * interval))
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    with _sqlite_lock(url):
        for attempt in range(5):  # a non-SQLite server may briefly refuse a new schema/connection
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many types here
                if attempt == 4 or sqlite_path(url) is not None:
                    raise OptunaSweepError(f"cannot open Optuna storage {url}: {exc}") from exc
                time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def make_sampler(sweep: OptunaSweep) -> optuna.samplers.BaseSampler:
    options = dict(sweep.sampler)
    name = str(options.pop("name", "tpe")).lower()
    if name == "grid":
        return optuna.samplers.GridSampler(sweep.space.grid(), **options)
    factories = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    return _build_named("sampler", name, factories, options, also=["grid"])


def make_pruner(sweep: OptunaSweep) -> optuna.pruners.BasePruner:
    """Pruning needs one objective that is reported during training (Optuna cannot prune multi-objective)."""
    options = dict(sweep.pruner)
    name = str(options.pop("name", "median")).lower()
    if name in ("none", "nop") or sweep.multi_objective or sweep.objectives[0].measured:
        return optuna.pruners.NopPruner()
    factories = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "threshold": optuna.pruners.ThresholdPruner,
    }
    return _build_named("pruner", name, factories, options, also=["none"])


def _build_named(kind: str, name: str, factories: dict, options: dict, also: list[str]):
    """Instantiate the sweep file's sampler/pruner by name, turning bad names/options into sweep errors."""
    if name not in factories:
        raise OptunaSweepError(f"unknown {kind} {name!r}; choose from {[*also, *factories]}")
    try:
        return factories[name](**options)
    except TypeError as exc:
        raise OptunaSweepError(f"{kind} {name}: {exc}") from exc


def open_study(sweep: OptunaSweep, storage_url: str) -> optuna.Study:
    """Create the study or load it (``load_if_exists``), checking it optimises the same directions."""
    storage = make_storage(storage_url, sweep.heartbeat)
    with _sqlite_lock(storage_url):
        study = optuna.create_study(
            storage=storage,
            study_name=sweep.study_name,
            directions=sweep.directions,
            sampler=make_sampler(sweep),
            pruner=make_pruner(sweep),
            load_if_exists=True,
        )
    existing = [d.name.lower() for d in study.directions]
    if existing != sweep.directions:
        raise OptunaSweepError(f"study {sweep.study_name!r} in {storage_url} optimises {existing}, but the sweep "
                               f"asks for {sweep.directions} ({[o.name for o in sweep.objectives]}); "
                               "use another --study-name")
    stored = study.user_attrs.get("objectives")
    names = [o.name for o in sweep.objectives]
    if stored is None:
        study.set_user_attr("objectives", names)
        study.set_user_attr("sweep_file", str(sweep.path))
    elif stored != names:
        raise OptunaSweepError(f"study {sweep.study_name!r} optimises {stored}, not {names}; use another --study-name")
    return study


def load_study(storage_url: str, study_name: str | None) -> optuna.Study:
    """An existing study for reading; ``study_name`` may be omitted when the storage holds exactly one."""
    file = sqlite_path(storage_url) or journal_path(storage_url)
    if file is not None and not file.is_file():
        raise OptunaSweepError(f"no study database at {file}")
    storage = make_storage(storage_url, {"interval": 0})
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name is None:
        if len(names) != 1:
            raise OptunaSweepError(f"{storage_url} holds studies {names}; pick one with --study-name")
        study_name = names[0]
    if study_name not in names:
        raise OptunaSweepError(f"no study {study_name!r} in {storage_url} (it holds {names})")
    return optuna.load_study(study_name=study_name, storage=storage)


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

    def __init__(self, sweep: OptunaSweep, base_config: dict, sets: dict[str, Any] | None = None, *,
                 build_run: Callable[[list[str]], Any]) -> None:
        self.sweep = sweep
        # ``glnet fit``'s builder (cli.lightning_cli.build_cli): args -> object with trainer, model and
        # datamodule, nothing run. Passed in by the command, as this layer sits below the CLI.
        self.build_run = build_run
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
        cli = self.build_run(["--config", str(config_path)])
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
