"""Parameters, GMACs and CPU throughput of each run's model, rebuilt from its checkpoint.

Why measured per run: runs of a sweep differ in slots, kernels or branches, and the trade-off the
paper reports (accuracy against speed) must be re-checked on the models actually trained, by the
project's one cost protocol (``bench.cost.measure_cost``). Only the architecture is rebuilt (from
the checkpoint's hyper-parameters); the weights do not change the cost.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from glnet_lightning.models.weights import read_checkpoint

from .checkpoints import CheckpointError, lightning_preprocess

__all__ = ["run_checkpoint", "measure_run", "measure_runs"]

_PREFERRED = ("best.ckpt", "last.ckpt")


def run_checkpoint(run_dir: Path) -> Path | None:
    """The run's best checkpoint, else its last, else any ``.ckpt`` below it (newest); None if none."""
    found = [p for p in Path(run_dir).rglob("*.ckpt") if p.is_file()]
    for name in _PREFERRED:
        named = [p for p in found if p.name == name]
        if named:
            return max(named, key=lambda p: p.stat().st_mtime)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def measure_run(checkpoint: Path, throughput: bool = True, **protocol: int) -> dict[str, float]:
    """``params_m``, ``gmacs`` (and ``throughput`` im/s) of the model a ``fit`` checkpoint describes
    (``protocol``: ``batch_size`` / ``warmup`` / ``repeats`` of :func:`~glnet_lightning.bench.cost.measure_cost`)."""
    from glnet_lightning.bench.cost import measure_cost
    from glnet_lightning.models.backbone import resolve_backbone

    saved = read_checkpoint(checkpoint, CheckpointError)
    hp = saved["hyper_parameters"]
    size = lightning_preprocess(saved).size
    model = resolve_backbone(hp["backbone"]).build(int(hp["num_classes"]))
    figures = measure_cost(model, size, throughput=throughput, **protocol).figures()
    figures.pop("ms_per_batch", None)
    return {**figures, "image_size": float(size)}


def measure_runs(runs: dict[str, Path], throughput: bool = True, **protocol: int) -> pd.DataFrame:
    """One row per run with a checkpoint (index = run name): params_m, gmacs, throughput, image_size."""
    rows = {}
    for name, folder in runs.items():
        checkpoint = run_checkpoint(folder)
        if checkpoint is not None:
            rows[name] = measure_run(checkpoint, throughput=throughput, **protocol)
    return pd.DataFrame.from_dict(rows, orient="index")
