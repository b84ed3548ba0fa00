"""Every run's TensorBoard scalars as one pandas DataFrame, read with TensorBoard's own reader.

Why one long table (run, tag, step, wall_time, value): learning curves, final metrics and joins
with sweep files are then ordinary pandas. A run is a directory holding event files (the
``default_root_dir`` of a ``fit``, ``RUNS/NAME`` of a grid sweep, ``trial_NNNN`` of an Optuna
study); a resumed run's several event files are read together and a re-logged step keeps its
latest value.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["find_runs", "read_scalars", "summarise_runs", "ACCURACY_TAGS"]

#: Top-1 tags in order of preference (as ``glnet ablation table``): test beats val.
ACCURACY_TAGS = ("test/acc1", "val/acc1")
_COLUMNS = ["run", "tag", "step", "wall_time", "value"]


def find_runs(runs_dir: str | Path) -> dict[str, Path]:
    """Run name (path below ``runs_dir``; its own name if ``runs_dir`` is itself a run) -> directory."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory {root} does not exist")
    folders = sorted({p.parent for p in root.rglob("events.out.tfevents.*") if p.is_file()})
    return {(f.relative_to(root).as_posix() if f != root else root.name): f for f in folders}


def _scalars_of(folder: Path) -> list[tuple[str, int, float, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(tag, e.step, e.wall_time, e.value)
            for tag in accumulator.Tags().get("scalars", []) for e in accumulator.Scalars(tag)]


def read_scalars(runs_dir: str | Path) -> pd.DataFrame:
    """Long table of all scalars of all runs below ``runs_dir`` (columns run, tag, step, wall_time, value)."""
    rows = [(name, *event) for name, folder in find_runs(runs_dir).items() for event in _scalars_of(folder)]
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    frame = frame.sort_values("wall_time").drop_duplicates(["run", "tag", "step"], keep="last")
    return frame.sort_values(["run", "tag", "step"]).reset_index(drop=True)


def summarise_runs(scalars: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the last value of every tag (columns = tags), ``steps`` (the last step logged)
    and ``top1`` in % (last test/acc1, else last val/acc1) with ``top1_tag`` naming its source."""
    if scalars.empty:
        return pd.DataFrame(columns=["steps", "top1", "top1_tag"])
    last = scalars.sort_values("step").groupby(["run", "tag"])["value"].last().unstack("tag")
    last["steps"] = scalars.groupby("run")["step"].max()
    last["top1"], last["top1_tag"] = float("nan"), None
    for tag in reversed(ACCURACY_TAGS):  # the preferred tag is written last and wins
        if tag in last:
            found = last[tag].notna()
            value = last.loc[found, tag]
            last.loc[found, "top1"] = value.where(value > 1.0, value * 100.0)
            last.loc[found, "top1_tag"] = tag
    last.columns.name = None
    return last
