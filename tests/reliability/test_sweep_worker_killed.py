"""Sweeps: an Optuna worker SIGKILLed in the middle of a trial leaves that trial RUNNING; once its
heartbeat is stale the next worker marks it FAIL and runs its parameters again, so no configuration
of the search is lost. Reuses the study helpers of tests/sweeps/test_optuna_study.py."""
from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch
import pytest

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location(
    "reliability_optuna_study", Path(__file__).resolve().parents[1] / "sweeps" / "test_optuna_study.py")
study_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study_tests)

HEARTBEAT = {"interval": 1, "grace_period": 3, "max_retry": 1}


def _trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return study_tests.load(tmp_path).trials
    except Exception:  # noqa: BLE001  (the worker has not created the study yet)
        return []


def test_worker_killed_mid_trial_is_failed_and_retried(fashion_mnist, env, signal_when, tmp_path):
    path = study_tests.sweep_file(tmp_path, study_tests.SPACE, heartbeat=HEARTBEAT)
    # the killed worker gets a long trial, so it is surely killed while training
    sets = [s for s in study_tests.TINY_SETS if not s.startswith("trainer.limit_train_batches")]
    sets.append("trainer.limit_train_batches=500")
    worker = subprocess.Popen([sys.executable, "-m", "glnet_lightning.sweeps.cli", "optuna", str(path), "--n-trials",
                               "1", *(a for s in sets for a in ("--set", s))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "tiny" / "trial_0000"
    started = []

    def training_for_a_while() -> bool:  # the trial is stored and training, then a few more seconds
        if not started and list(run_dir.glob("events.out.tfevents.*")) and _trials(tmp_path):
            started.append(time.monotonic())
        return bool(started) and time.monotonic() > started[0] + 2

    signal_when(worker, training_for_a_while, signal.SIGKILL)
    assert worker.returncode == -signal.SIGKILL
    (killed,) = _trials(tmp_path)
    assert killed.state == optuna.trial.TrialState.RUNNING  # nobody could record its end

    time.sleep(HEARTBEAT["grace_period"] + 1)
    assert study_tests.run(path, "--n-trials", "1") == 0  # the next worker (short trials)
    trials = study_tests.load(tmp_path).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[1].params == trials[0].params  # the interrupted configuration ran again
    assert trials[1].system_attrs.get("failed_trial") == trials[0].number


def test_retried_trial_continues_from_the_dead_trials_checkpoint(fashion_mnist, env, signal_when, tmp_path):
    """The retry of a killed trial resumes its run directory's ``last.ckpt`` (written every 5 steps
    here) with the same parameters, instead of training again from step 0."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = study_tests.sweep_file(tmp_path, study_tests.SPACE, heartbeat=HEARTBEAT)
    sets = [s for s in study_tests.TINY_SETS if not s.startswith("trainer.limit_train_batches")]
    sets += ["trainer.limit_train_batches=40", "checkpoint.last_every_n_steps=5", "trainer.log_every_n_steps=1"]
    command = [sys.executable, "-m", "glnet_lightning.sweeps.cli", "optuna", str(path), "--n-trials", "1",
               *(a for s in sets for a in ("--set", s))]
    last = tmp_path / "runs" / "tiny" / "trial_0000" / "checkpoints" / "last.ckpt"
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signal_when(worker, last.is_file, signal.SIGKILL)
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 5 <= saved_step < 40

    time.sleep(HEARTBEAT["grace_period"] + 1)
    assert subprocess.run(command, env=env, capture_output=True, timeout=600).returncode == 0
    killed, retry = study_tests.load(tmp_path).trials
    assert killed.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == killed.params and retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    assert retry.user_attrs["resumed_from"] == str(last)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 40
    # the retry's own events begin after the checkpoint's step: nothing was trained twice
    newest = max(last.parent.parent.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    events = EventAccumulator(str(newest), size_guidance={"scalars": 0})
    events.Reload()
    assert min(e.step for e in events.Scalars("train/loss")) > saved_step - 1
