"""Every run's TensorBoard scalars as one pandas DataFrame, read with TensorBoard's own reader, and
the project's one rule for which logged scalar is a run's top-1.

Why one long table (run, tag, step, wall_time, value): learning curves, final metrics and joins
with sweep files are then ordinary pandas. A run is a directory holding event files (the
``default_root_dir`` of a ``fit``, ``RUNS/NAME`` of a grid sweep, ``trial_NNNN`` of an Optuna
study); a resumed run's several event files are read together and a re-logged step keeps its
latest value. pandas is imported only where a frame is built: ``glnet ablation table`` reads top-1
through :func:`read_top1`, and pandas is an optional (``analysis``) dependency.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["find_runs", "read_scalars", "read_top1", "summarise_runs", "top1_of", "ACCURACY_TAGS"]

#: Top-1 tags in order of preference: test beats val.
ACCURACY_TAGS = ("test/acc1", "val/acc1")
_COLUMNS = ["run", "tag", "step", "wall_time", "value"]


def top1_of(last: Mapping[str, float]) -> tuple[float | None, str | None]:
    """The top-1 rule, given each tag's last value: test/acc1, else val/acc1, in % (a fraction <= 1 is
    scaled by 100); ``(None, None)`` when neither was logged."""
    for tag in ACCURACY_TAGS:
        value = last.get(tag)
        if value is not None and not math.isnan(value):
            return (100.0 * value if value <= 1.0 else float(value)), tag
    return None, None


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


def read_top1(run_dir: str | Path) -> tuple[float | None, str | None]:
    """Top-1 of one run (:func:`top1_of`), every event folder below ``run_dir`` read as that run: per tag
    the value at the last step, a re-logged step keeping its latest value (as :func:`summarise_runs`)."""
    root = Path(run_dir).expanduser()
    latest: dict[str, tuple[int, float, float]] = {}  # tag -> (step, wall time, value)
    for folder in find_runs(root).values() if root.is_dir() else ():
        for tag, step, wall_time, value in _scalars_of(folder):
            if tag in ACCURACY_TAGS and (tag not in latest or (step, wall_time) >= latest[tag][:2]):
                latest[tag] = (step, wall_time, value)
    return top1_of({tag: value for tag, (_, _, value) in latest.items()})


def read_scalars(runs_dir: str | Path) -> pd.DataFrame:
    """Long table of all scalars of all runs below ``runs_dir`` (columns run, tag, step, wall_time, value)."""
    import pandas as pd

    rows = [(name, *event) for name, folder in find_runs(runs_dir).items() for event in _scalars_of(folder)]
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    frame = frame.sort_values("wall_time").drop_duplicates(["run", "tag", "step"], keep="last")
    return frame.sort_values(["run", "tag", "step"]).reset_index(drop=True)


def summarise_runs(scalars: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the last value of every tag (columns = tags), ``steps`` (the last step logged)
    and ``top1`` in % (:func:`top1_of`) with ``top1_tag`` naming its source."""
    import pandas as pd

    if scalars.empty:
        return pd.DataFrame(columns=["steps", "top1", "top1_tag"])
    last = scalars.sort_values("step").groupby(["run", "tag"])["value"].last().unstack("tag")
    last["steps"] = scalars.groupby("run")["step"].max()
    picked = [top1_of(values) for values in last.reindex(columns=list(ACCURACY_TAGS)).to_dict("records")]
    last["top1"] = [float("nan") if value is None else value for value, _ in picked]
    last["top1_tag"] = [tag for _, tag in picked]
    last.columns.name = None
    return last
