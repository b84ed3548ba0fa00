"""k-medoids over a distance matrix: picks the representative slots of the paper's figures.

Why medoids and not k-means centres: a figure has to show *actual* slots, so every cluster centre
must be a member of the set. Small problems are solved exactly (all subsets of size k); larger ones
(64 slots choose 4 = 635k subsets) with PAM: greedy BUILD, then SWAP (medoid <-> non-medoid) while
the total distance of the points to their nearest medoid drops.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["KMedoids", "kmedoids", "medoid_cost", "pairwise_distances"]


@dataclass(frozen=True)
class KMedoids:
    """``medoids``: indices into the set (ordered by cluster size, largest first); ``labels``: the
    position in ``medoids`` of each point's nearest medoid; ``cost``: the sum of those distances."""

    medoids: tuple[int, ...]
    labels: np.ndarray
    cost: float


def pairwise_distances(points: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``points`` (N, D) -> (N, N), exactly 0 on the diagonal."""
    x = np.asarray(points, dtype=np.float64)
    squared = (x * x).sum(1)
    d2 = np.maximum(squared[:, None] + squared[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def medoid_cost(dist: np.ndarray, medoids) -> float:
    """Sum over all points of the distance to the nearest of ``medoids`` (the k-medoids objective)."""
    return float(dist[:, list(medoids)].min(axis=1).sum())


def _exhaustive(dist: np.ndarray, k: int) -> list[int]:
    best, best_cost = None, math.inf
    for subset in itertools.combinations(range(len(dist)), k):
        cost = medoid_cost(dist, subset)
        if cost < best_cost - 1e-12:
            best, best_cost = list(subset), cost
    return best


def _pam(dist: np.ndarray, k: int, max_iter: int) -> list[int]:
    n = len(dist)
    # BUILD: start from the most central point, then add the point that lowers the cost most.
    medoids = [int(dist.sum(1).argmin())]
    nearest = dist[:, medoids[0]].copy()
    while len(medoids) < k:
        gains = np.maximum(nearest[:, None] - dist, 0.0).sum(0)
        gains[medoids] = -1.0
        best = int(gains.argmax())
        medoids.append(best)
        nearest = np.minimum(nearest, dist[:, best])
    # SWAP: best single exchange per sweep, until no exchange helps.
    cost = medoid_cost(dist, medoids)
    for _ in range(max_iter):
        best_swap, best_cost = None, cost
        for i in range(k):
            others = medoids[:i] + medoids[i + 1:]
            rest = dist[:, others].min(1) if others else np.full(n, np.inf)
            # cost of replacing medoid i by each candidate h, for all h at once
            costs = np.minimum(rest[:, None], dist).sum(0)
            costs[medoids] = np.inf
            h = int(costs.argmin())
            if costs[h] < best_cost - 1e-12:
                best_swap, best_cost = (i, h), float(costs[h])
        if best_swap is None:
            break
        medoids[best_swap[0]] = best_swap[1]
        cost = best_cost
    return medoids


def kmedoids(dist: np.ndarray, k: int, *, exhaustive_limit: int = 20_000, max_iter: int = 100) -> KMedoids:
    """k medoids of the points whose pairwise distances are ``dist`` (N, N).

    Exact when ``C(N, k) <= exhaustive_limit``, PAM (a local optimum: no single swap improves it)
    otherwise. ``k >= N`` returns every point.
    """
    dist = np.asarray(dist, dtype=np.float64)
    n = len(dist)
    if dist.shape != (n, n) or n == 0:
        raise ValueError(f"need a non-empty square distance matrix, got shape {dist.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n:
        chosen = list(range(n))
    elif math.comb(n, k) <= exhaustive_limit:
        chosen = _exhaustive(dist, k)
    else:
        chosen = _pam(dist, k, max_iter)
    labels = dist[:, chosen].argmin(1)
    order = sorted(range(len(chosen)), key=lambda j: (-(labels == j).sum(), chosen[j]))
    medoids = tuple(int(chosen[j]) for j in order)
    labels = dist[:, list(medoids)].argmin(1)
    return KMedoids(medoids=medoids, labels=labels, cost=medoid_cost(dist, medoids))
