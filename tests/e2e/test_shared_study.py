"""Optuna across machines, for real: three ``glnet sweep optuna`` workers run the README's command
at once on one study of sweeps/optuna_slots_kernel_imagenet.yaml, one is SIGKILLed mid-trial, and
the study still ends with every trial COMPLETE and no configuration run twice, except the killed
attempt, FAILed by the heartbeat and retried. Once on a throwaway PostgreSQL server, once on
Optuna's journal file (the shared file system choice). CPU overrides as in test_shipped_paths; the
only change to the sweep file is a 2 s heartbeat grace period instead of 10 minutes."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "sweeps" / "optuna_slots_kernel_imagenet.yaml"
STUDY = "slots_kernel_imagenet_stl"
TRIALS_PER_WORKER = 2


def _sweep_file(tmp_path: Path) -> Path:
    """The shipped sweep file with a short heartbeat (a test cannot wait for a 10-minute grace)."""
    sweep = yaml.safe_load(SWEEP.read_text())
    sweep["base"] = str(REPO / sweep["base"])
    sweep["heartbeat"] = {"interval": 1, "grace_period": 2, "max_retry": 1}
    path = tmp_path / SWEEP.name
    path.write_text(yaml.safe_dump(sweep))
    return path


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    from glnet_lightning.sweeps.optuna_study import make_storage

    try:
        return optuna.load_study(study_name=STUDY, storage=make_storage(storage, {"interval": 0})).trials
    except Exception:  # noqa: BLE001 - not created yet
        return []


def _run_shared_study(storage: str, tmp_path: Path, tree: Path, overrides: dict, console, subprocess_env,
                      set_args) -> None:
    path = _sweep_file(tmp_path)
    # The README's command, once per worker (OMP threads: 3 workers share 2 cores here).
    command = [*console("glnet"), "sweep", "optuna", str(path), "--storage", storage, "--runs-dir",
               str(tmp_path / "runs"), "--n-trials", str(TRIALS_PER_WORKER),
               *set_args({"data.root": tree, **overrides})]
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(3)]
    workers = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO) for log in logs]
    try:
        deadline = time.monotonic() + 240
        while True:  # kill worker 0 once every worker is inside a trial that is training
            running = [t for t in _trials(storage) if t.state == optuna.trial.TrialState.RUNNING]
            dirs = [Path(t.user_attrs.get("run_dir", "/nonexistent")) for t in running]
            if len(running) == 3 and all(list(d.glob("events.out.tfevents.*")) for d in dirs):
                break
            assert all(w.poll() is None for w in workers), "a worker ended before all three trials ran"
            assert time.monotonic() < deadline, "the three workers never ran three trials at once"
            time.sleep(0.3)
        workers[0].send_signal(signal.SIGKILL)
        codes = [w.wait(timeout=600) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        for log in logs:
            log.close()
    output = "\n".join((tmp_path / f"worker{i}.log").read_text()[-2000:] for i in range(3))
    assert codes == [-signal.SIGKILL, 0, 0], output

    trials = _trials(storage)
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
    (killed,) = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # the two survivors ran all their trials, one of them the killed configuration again
    assert len(complete) == 2 * TRIALS_PER_WORKER and len(trials) == len(complete) + 1, output
    configurations = [(t.params["num_slots"], t.params["kernel_size"]) for t in complete]
    assert len(set(configurations)) == len(configurations)  # no configuration run twice
    (retry,) = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params
    for t in complete:
        accuracy, throughput = t.values
        assert 0.0 <= accuracy <= 1.0 and throughput > 0
        assert (Path(t.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt").is_file()

    report = subprocess.run([*console("glnet"), "sweep", "report", "--storage", storage, "--study-name", STUDY,
                             "--html", str(tmp_path / "report.html")],
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"{len(trials)} trials ({len(complete)} complete" in report.stdout
    assert all(t.user_attrs["run_dir"] in report.stdout for t in complete)
    assert (tmp_path / "report.html").is_file()


def test_three_workers_share_a_postgresql_study_and_survive_a_killed_one(postgres_url, imagenet_tree, cpu_overrides,
                                                                       tmp_path, console, subprocess_env, set_args):
    _run_shared_study(postgres_url, tmp_path, imagenet_tree, cpu_overrides, console, subprocess_env, set_args)


def test_three_workers_share_a_journal_file_and_survive_a_killed_one(imagenet_tree, cpu_overrides, tmp_path,
                                                                    console, subprocess_env, set_args):
    _run_shared_study(f"journal:{tmp_path / 'shared' / 'study.journal'}", tmp_path, imagenet_tree, cpu_overrides,
                      console, subprocess_env, set_args)
