"""Optuna across machines, for real: three ``glnet sweep optuna`` workers run the README's command
at once on one study of sweeps/optuna_slots_kernel_imagenet.yaml, one is SIGKILLed mid-trial, and
the study still ends with every trial COMPLETE and no configuration run twice, except the killed
attempt, FAILed by the heartbeat and retried. Once on a throwaway PostgreSQL server, once on
Optuna's journal file (the shared file system choice).

What is tested is the sharing, not the shipped network: the trials train the tiny model on 32 px
images for one batch (``--set``), and hold at their first training batch until the test has killed
one worker inside its trial (``testkit.probes.HoldFirstBatch``). The only change to the sweep file is
a 2 s heartbeat grace period instead of 10 minutes."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml

from glnet_lightning.cli.main import main as glnet
from glnet_lightning.sweeps.optuna_study import make_storage
from testkit import CPU_OVERRIDES, console, set_args, subprocess_env, tiny_sets
from testkit.probes import HoldFirstBatch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "sweeps" / "optuna_slots_kernel_imagenet.yaml"
STUDY = "slots_kernel_imagenet_stl"
TRIALS_PER_WORKER = 2
HEARTBEAT = {"interval": 1, "grace_period": 2, "max_retry": 1}
#: one training and one validation batch of 4 images at 32 px per trial
SHORT = {**CPU_OVERRIDES, "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1, "data.image_size": 32}


def _sweep_file(tmp_path: Path) -> Path:
    """The shipped sweep file with a short heartbeat (a test cannot wait for a 10-minute grace)."""
    sweep = yaml.safe_load(SWEEP.read_text())
    sweep["base"] = str(REPO / sweep["base"])
    sweep["heartbeat"] = HEARTBEAT
    path = tmp_path / SWEEP.name
    path.write_text(yaml.safe_dump(sweep))
    return path


def _study(storage: str, heartbeat: dict | None = None) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=STUDY, storage=make_storage(storage, heartbeat or {"interval": 0}))
    except Exception:  # noqa: BLE001 - not created yet
        return None


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    study = _study(storage)
    return study.trials if study is not None else []


class _Watch:
    """The study's trials while the workers run, through one storage connection (opening one per look
    costs the workers CPU they need)."""

    def __init__(self, storage: str) -> None:
        self.storage = storage
        self.study: optuna.Study | None = None

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        self.study = self.study or _study(self.storage)
        return self.study.get_trials(deepcopy=False) if self.study is not None else []


def _wait(condition, workers: list[subprocess.Popen], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(w.poll() is None for w in workers), f"a worker ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.3)


def _run_shared_study(storage: str, tmp_path: Path, tree: Path, capsys) -> None:
    path = _sweep_file(tmp_path)
    release = tmp_path / "release"
    hold = f"[{{class_path: testkit.probes.HoldFirstBatch, init_args: {{release: {release}}}}}]"
    # The README's command, once per worker (OMP threads: 3 workers share 2 cores here).
    command = [*console("glnet"), "sweep", "optuna", str(path), "--storage", storage, "--runs-dir",
               str(tmp_path / "runs"), "--n-trials", str(TRIALS_PER_WORKER),
               *set_args({"data.root": tree, **SHORT, "trainer.callbacks": hold}), *set_args(tiny_sets())]
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(3)]
    workers = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO) for log in logs]
    try:
        watch = _Watch(storage)

        def all_three_training() -> bool:
            running = [t for t in watch.trials() if t.state == optuna.trial.TrialState.RUNNING]
            return len(running) == 3 and all((Path(t.user_attrs.get("run_dir", "/nonexistent")) /
                                              HoldFirstBatch.MARKER).is_file() for t in running)

        _wait(all_three_training, workers, "the three workers were training at once")
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=60)
        # the survivors go on once the dead trial's heartbeat is stale, so their next trial start fails it
        study = _study(storage, HEARTBEAT)
        _wait(lambda: study._storage._get_stale_trial_ids(study._study_id), workers[1:], "the killed trial went stale")
        release.touch()
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

    capsys.readouterr()
    assert glnet(["sweep", "report", "--storage", storage, "--study-name", STUDY,
                  "--html", str(tmp_path / "report.html")]) == 0
    report = capsys.readouterr().out
    assert f"{len(trials)} trials ({len(complete)} complete" in report
    assert all(t.user_attrs["run_dir"] in report for t in complete)
    assert (tmp_path / "report.html").is_file()


def test_three_workers_share_a_postgresql_study_and_survive_a_killed_one(postgres_url, imagenet_tree, tmp_path,
                                                                       capsys):
    _run_shared_study(postgres_url, tmp_path, imagenet_tree, capsys)


def test_three_workers_share_a_journal_file_and_survive_a_killed_one(imagenet_tree, tmp_path, capsys):
    _run_shared_study(f"journal:{tmp_path / 'shared' / 'study.journal'}", tmp_path, imagenet_tree, capsys)
