"""Sweeps: an Optuna worker SIGKILLed in the middle of a trial leaves that trial RUNNING; once its
heartbeat is stale the next worker marks it FAIL and runs its parameters again, continuing the dead
trial's run directory from its ``last.ckpt``, so no configuration of the search is lost and no step is
trained twice. The study helpers are testkit.studies. (The same in process, without a checkpoint:
tests/sweeps/test_optuna_study.py::test_stale_running_trial_is_failed_and_retried; three workers sharing
a study: tests/e2e/test_shared_study.py.)"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch

from testkit import scalars, signal_when, subprocess_env
from testkit.studies import SPACE, STUDY_SETS, load_study, study_command, study_file, trials_so_far

pytestmark = pytest.mark.slow

HEARTBEAT = {"interval": 1, "grace_period": 2, "max_retry": 1}
STEPS = 20


def test_worker_killed_mid_trial_is_failed_and_retried_from_its_checkpoint(fashion_mnist, tmp_path):
    from glnet_lightning.cli.sweep import optuna_main

    path = study_file(tmp_path, SPACE, heartbeat=HEARTBEAT)
    # a trial long enough to be killed while training, with a step checkpoint every 5 steps
    sets = [s for s in STUDY_SETS if not s.startswith("trainer.limit_train_batches")]
    sets += [f"trainer.limit_train_batches={STEPS}", "checkpoint.last_every_n_steps=5", "trainer.log_every_n_steps=1"]
    command = study_command(path, "--n-trials", "1", sets=sets)
    last = tmp_path / "runs" / "tiny" / "trial_0000" / "checkpoints" / "last.ckpt"
    worker = subprocess.Popen([sys.executable, "-m", "glnet_lightning", "sweep", "optuna", *command],
                              env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    signal_when(worker, last.is_file, signal.SIGKILL)
    killed_at = time.monotonic()
    assert worker.returncode == -signal.SIGKILL
    (killed,) = trials_so_far(tmp_path)
    assert killed.state == optuna.trial.TrialState.RUNNING  # nobody could record its end
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 5 <= saved_step < STEPS

    time.sleep(max(0.0, killed_at + HEARTBEAT["grace_period"] + 1 - time.monotonic()))  # the heartbeat goes stale
    assert optuna_main(command) == 0  # the next worker, in process
    killed, retry = load_study(tmp_path).trials
    assert killed.state == optuna.trial.TrialState.FAIL and retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == killed.params  # the interrupted configuration ran again
    assert retry.system_attrs.get("failed_trial") == killed.number
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    assert retry.user_attrs["resumed_from"] == str(last)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == STEPS
    # the retry's own events begin after the checkpoint's step: nothing was trained twice
    newest = max(last.parent.parent.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert min(step for step, _ in scalars(newest, "train/loss")) > saved_step - 1
