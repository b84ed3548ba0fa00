"""Optuna studies end to end on a tiny Fashion-MNIST GLNet: run, resume, share, fail, report.

Each trial is a real in-process ``glnet fit`` (2 train batches, 1 val batch of 8 images at 32 px),
about 10 s on 2 shared CPU cores.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from glnet_lightning.cli.sweep import report_main
from glnet_lightning.sweeps.optuna_study import open_study
from glnet_lightning.sweeps.optuna_sweep import load_optuna_sweep
from testkit import subprocess_env
from testkit.studies import SPACE, load_study, run_study, study_command, study_file, study_storage

pytestmark = pytest.mark.usefixtures("fashion_mnist")  # every trial trains on it


@pytest.mark.slow
def test_study_runs_resumes_and_reports(tmp_path, capsys):
    path = study_file(tmp_path, SPACE)
    assert run_study(path, "--n-trials", "2") == 0
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        assert t.params["num_slots"] in SPACE["num_slots"] and t.params["kernel_size"] in SPACE["kernel_size"]
        assert 0.0 <= t.value <= 1.0
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == tmp_path / "runs" / "tiny" / f"trial_{t.number:04d}"
        assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "checkpoints" / "last.ckpt").is_file()
        trained = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert trained["model"]["backbone"]["init_args"]["num_slots"] == t.params["num_slots"]
        assert trained["model"]["backbone"]["init_args"]["kernel_size"] == t.params["kernel_size"]
        assert trained["trainer"]["limit_train_batches"] == 2  # --set applied
        assert t.user_attrs["params_m"] > 0 and t.user_attrs["gmacs"] > 0 and t.user_attrs["throughput"] > 0

    assert run_study(path, "--n-trials", "1") == 0  # same command again: resumes, finished trials are kept
    study = load_study(tmp_path)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert study.trials[0].datetime_complete == trials[0].datetime_complete  # not re-run

    capsys.readouterr()
    assert report_main(["--storage", study_storage(tmp_path), "--study-name", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "3 trials (3 complete)" in out and "best 3 trial(s)" in out
    for t in study.trials:
        assert t.user_attrs["run_dir"] in out
    assert (tmp_path / "runs" / "tiny" / "tiny_report.html").is_file()


@pytest.mark.slow
def test_failing_trial_does_not_stop_a_pareto_study(tmp_path):
    # num_slots 5 is not a square: the pooled slot init refuses it, that trial fails, the other runs.
    path = study_file(tmp_path, {"num_slots": [5, 4], "kernel_size": [3]}, sampler="grid",
                      objectives=["val/acc1", "gmacs"])
    assert run_study(path, "--n-trials", "2") == 0
    study = load_study(tmp_path)
    by_slots = {t.params["num_slots"]: t for t in study.trials}
    assert by_slots[5].state == optuna.trial.TrialState.FAIL
    assert "perfect square" in by_slots[5].user_attrs["error"]
    assert by_slots[4].state == optuna.trial.TrialState.COMPLETE and len(by_slots[4].values) == 2
    assert by_slots[4].values[1] == pytest.approx(by_slots[4].user_attrs["gmacs"])
    assert [t.number for t in study.best_trials] == [by_slots[4].number]


def test_pruned_trial_is_recorded_through_the_lightning_integration(tmp_path):
    # Every top-1 is below 1.1, so the threshold pruner stops the trial at its first validation.
    path = study_file(tmp_path, SPACE, pruner={"name": "threshold", "lower": 1.1})
    assert run_study(path, "--n-trials", "1") == 0
    (trial,) = load_study(tmp_path).trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.intermediate_values and 0.0 <= trial.intermediate_values[0] <= 1.0
    assert Path(trial.user_attrs["run_dir"]).is_dir() and "error" not in trial.user_attrs


@pytest.mark.slow
def test_stale_running_trial_is_failed_and_retried(tmp_path):
    """A worker killed mid-trial leaves a RUNNING trial; the next run marks it FAIL and retries its parameters."""
    heartbeat = {"interval": 1, "grace_period": 2, "max_retry": 1}
    path = study_file(tmp_path, SPACE, heartbeat=heartbeat)
    study = open_study(load_optuna_sweep(path), study_storage(tmp_path))
    dead = study.ask({"num_slots": optuna.distributions.CategoricalDistribution(SPACE["num_slots"]),
                      "kernel_size": optuna.distributions.CategoricalDistribution(SPACE["kernel_size"])})
    study._storage.record_heartbeat(dead._trial_id)  # what the dead worker's heartbeat thread did
    time.sleep(3)
    assert run_study(path, "--n-trials", "1") == 0
    trials = load_study(tmp_path).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[1].state == optuna.trial.TrialState.COMPLETE
    assert trials[1].params == trials[0].params  # the retry ran the interrupted configuration


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path):
    path = study_file(tmp_path, SPACE)
    args = [sys.executable, "-m", "glnet_lightning", "sweep", "optuna", *study_command(path, "--n-trials", "1")]
    env = subprocess_env(OMP_NUM_THREADS="1")
    workers = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    trials = load_study(tmp_path).trials
    assert sorted(t.number for t in trials) == [0, 1]  # 2 workers x 1 trial, none lost or duplicated
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["run_dir"] for t in trials}) == 2


def test_a_run_whose_trials_all_failed_exits_1_and_says_so(tmp_path, capsys):
    # num_slots 5 is not a square: every trial fails in the pooled slot init (the base itself is fine)
    path = study_file(tmp_path, {"num_slots": [5], "kernel_size": [3]}, sampler="grid")
    assert run_study(path, "--n-trials", "2") == 1
    assert [t.state for t in load_study(tmp_path).trials] == [optuna.trial.TrialState.FAIL]
    err = capsys.readouterr().err
    assert "all 1 trial(s) of this run failed; trial 0:" in err and "perfect square" in err


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_diverging_trial_follows_the_modules_nonfinite_policy(policy, tmp_path):
    """lr 1e30: the second step's loss is not finite. The trial reacts as ``glnet fit`` does, through the
    module's one guard: ``stop`` fails it with the guard's message, ``skip`` skips the step and the trial
    completes."""
    path = study_file(tmp_path, {"num_slots": [4], "kernel_size": [5]})
    code = run_study(path, "--n-trials", "1", "--set", "model.lr=1e30", "--set", f"model.nonfinite_loss={policy}")
    (trial,) = load_study(tmp_path).trials
    if policy == "stop":
        assert code == 1 and trial.state == optuna.trial.TrialState.FAIL
        assert trial.user_attrs["error"].startswith("TrainingDiverged: non-finite training loss")
    else:
        assert code == 0 and trial.state == optuna.trial.TrialState.COMPLETE
