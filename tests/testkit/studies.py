"""Optuna sweeps on the tiny Fashion-MNIST run: a sweep file in a temp dir, the in-process worker, its study.

Each trial is a real in-process ``glnet fit`` (2 train batches, 1 val batch of 8 images at 32 px)."""
from __future__ import annotations

from pathlib import Path

import optuna
import yaml

from . import CONFIGS, tiny_flow

#: The study's search space: the paper's two knobs, at tiny values.
SPACE = {"num_slots": [4, 9, 16], "kernel_size": [3, 5, 7]}
#: ``--set`` edits that make each trial a few seconds: the tiny model, two training batches.
STUDY_SETS = [
    f"model.backbone={tiny_flow()}",
    "model.warmup_epochs=0", "model.slot_map_every_n_epochs=0",
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "data.batch_size=8", "data.num_workers=0", "data.val_size=64",
]


def study_file(tmp_path: Path, space: dict, *, sampler: str = "random", objectives=None, heartbeat=None,
               pruner=None) -> Path:
    """A sweep file of a study called ``tiny`` on configs/fashion_mnist.yaml, its runs under ``tmp_path/runs``."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(CONFIGS / "fashion_mnist.yaml"), "study_name": "tiny", "runs_dir": str(tmp_path / "runs"),
        "search_space": space, "sampler": {"name": sampler, "seed": 0}, "pruner": pruner or {"name": "median"},
        "objectives": objectives or ["val/acc1"], "skip_duplicates": False,
        "measure": {"batch_size": 4, "warmup": 0, "repeats": 1},
        "heartbeat": heartbeat or {"interval": 5, "grace_period": 10},
    }))
    return path


def study_command(path: Path, *extra: str, sets=STUDY_SETS) -> list[str]:
    """The arguments of ``glnet sweep optuna`` for the sweep file, with the tiny ``--set`` edits."""
    return [str(path), *extra, *(a for s in sets for a in ("--set", s))]


def run_study(path: Path, *extra: str) -> int:
    """One worker of the study, in process; its exit code."""
    from glnet_lightning.cli.sweep import optuna_main

    return optuna_main(study_command(path, *extra))


def study_storage(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'runs' / 'tiny' / 'study.db').resolve()}"


def load_study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=study_storage(tmp_path))


def trials_so_far(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or [] while no worker has created it yet."""
    try:
        return load_study(tmp_path).trials
    except Exception:  # noqa: BLE001 - not created yet (KeyError), or its tables are being created right now
        return []
