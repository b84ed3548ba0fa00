"""Figures of runs: learning curves per tag, and a trade-off scatter with its Pareto front."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .pareto import pareto_mask

__all__ = ["learning_curves", "pareto_scatter", "DEFAULT_CURVE_TAGS"]

DEFAULT_CURVE_TAGS = ("train/loss", "val/loss", "val/acc1", "val_ema/acc1")


def learning_curves(scalars: pd.DataFrame, tags: Sequence[str] = DEFAULT_CURVE_TAGS) -> Figure:
    """One panel per tag that any run logged (x = optimizer step), one line per run."""
    present = [t for t in tags if t in set(scalars["tag"])]
    if not present:
        raise ValueError(f"none of the tags {list(tags)} was logged; logged: {sorted(set(scalars['tag']))}")
    fig = Figure(figsize=(4.2 * len(present), 3.4), layout="constrained")
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, tag in zip(axes, present):
        for run, curve in scalars[scalars["tag"] == tag].groupby("run"):
            ax.plot(curve["step"], curve["value"], marker="o" if len(curve) < 20 else None, ms=3, label=run)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def pareto_scatter(frame: pd.DataFrame, x: str, y: str, title: str = "", xlabel: str | None = None,
                   ylabel: str | None = None) -> Figure:
    """Every row as a labelled point (index = label), the Pareto front (both axes maximised) as a line."""
    points = frame[[x, y]].astype(float).dropna()
    fig = Figure(figsize=(6.0, 4.4), layout="constrained")
    ax = fig.subplots()
    front = pareto_mask(points.to_numpy(), [True, True]) if len(points) else np.zeros(0, bool)
    ax.scatter(points[x][~front], points[y][~front], color="tab:gray", label="dominated")
    on_front = points[front].sort_values(x)
    ax.plot(on_front[x], on_front[y], "o-", color="tab:red", label="Pareto front")
    for name, row in points.iterrows():
        ax.annotate(str(name), (row[x], row[y]), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"{y} vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig
