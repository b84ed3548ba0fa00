"""Optuna across machines, for real: three ``glnet sweep optuna`` workers run at once on one study,
as the README tells cluster users to, one is SIGKILLed mid-trial, and the study still ends with
every configuration COMPLETE exactly once (plus the killed attempt, FAILed by the heartbeat and
retried). Once on a throwaway PostgreSQL server, once on Optuna's journal file (the shared file
system choice). Each worker trains a tiny Fashion-MNIST GLNet per trial."""
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
GRID = {"num_slots": [4, 9], "kernel_size": [3, 5]}  # four configurations, one per trial
HEARTBEAT = {"interval": 1, "grace_period": 2, "max_retry": 1}
SETS = [
    "model.model_kwargs={depths: [1, 1, 1, 1], dims: [16, 32, 48, 64], head_dim: 16, "
    "stage_mixers: [glmix, glmix, glmix, glmix]}",
    "model.warmup_epochs=0", "model.slot_map_every_n_epochs=0",
    # long enough that the grace period has passed when the survivors start their next trial
    "trainer.max_epochs=1", "trainer.limit_train_batches=40", "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "data.batch_size=16", "data.num_workers=0", "data.val_size=64",
]


def _sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "fashion_mnist.yaml"), "study_name": "shared",
        "runs_dir": str(tmp_path / "runs"), "search_space": GRID, "sampler": {"name": "grid"},
        "pruner": {"name": "none"}, "objectives": ["val/acc1"], "measure": {"throughput": False},
        "heartbeat": HEARTBEAT, "n_trials": 2,
    }))
    return path


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    from glnet_lightning.sweeps.optuna_study import make_storage

    try:
        return optuna.load_study(study_name="shared", storage=make_storage(storage, {"interval": 0})).trials
    except Exception:  # noqa: BLE001 - not created yet
        return []


def _run_shared_study(storage: str, tmp_path: Path, console, subprocess_env) -> None:
    path = _sweep_file(tmp_path)
    # The README's command, once per worker (OMP threads: 3 workers share 2 cores here).
    command = [*console("glnet"), "sweep", "optuna", str(path), "--storage", storage,
               *(arg for text in SETS for arg in ("--set", text))]
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
    # every configuration of the grid COMPLETE exactly once: nothing lost, nothing run twice
    assert sorted((t.params["num_slots"], t.params["kernel_size"]) for t in complete) == \
        [(s, k) for s in GRID["num_slots"] for k in GRID["kernel_size"]], output
    (retry,) = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params
    assert len(trials) == len(complete) + 1
    for t in complete:
        assert 0.0 <= t.value <= 1.0 and (Path(t.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt").is_file()

    report = subprocess.run([*console("glnet"), "sweep", "report", "--storage", storage, "--study-name", "shared",
                             "--html", str(tmp_path / "report.html")],
                            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"{len(trials)} trials (4 complete" in report.stdout
    assert all(t.user_attrs["run_dir"] in report.stdout for t in complete)
    assert (tmp_path / "report.html").is_file()


def test_three_workers_share_a_postgresql_study_and_survive_a_killed_one(postgres_url, fashion_mnist, tmp_path,
                                                                       console, subprocess_env):
    _run_shared_study(postgres_url, tmp_path, console, subprocess_env)


def test_three_workers_share_a_journal_file_and_survive_a_killed_one(fashion_mnist, tmp_path, console,
                                                                    subprocess_env):
    _run_shared_study(f"journal:{tmp_path / 'shared' / 'study.journal'}", tmp_path, console, subprocess_env)
