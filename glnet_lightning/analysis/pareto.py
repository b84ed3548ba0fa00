"""Pareto fronts of runs or trials (e.g. top-1 against images/s): the points nothing beats on all counts."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_mask"]


def pareto_mask(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (N, D).

    Row a dominates row b when a is at least as good in every column and strictly better in one
    ("good" = larger where ``maximize`` is True). Rows with a NaN are never on the front; equal rows
    are all kept.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(maximize):
        raise ValueError(f"values must be (N, {len(maximize)}), got shape {x.shape}")
    x = np.where(np.asarray(maximize, dtype=bool), x, -x)  # everything "larger is better"
    valid = ~np.isnan(x).any(1)
    at_least = (x[:, None, :] >= x[None, :, :]).all(-1)  # [a, b]: a >= b everywhere
    strictly = (x[:, None, :] > x[None, :, :]).any(-1)
    dominated = (at_least & strictly & valid[:, None]).any(0)
    return valid & ~dominated
