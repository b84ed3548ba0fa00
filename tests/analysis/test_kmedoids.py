"""k-medoids: medoids are members, and minimise the total within-cluster distance (checked by brute force)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from glnet_lightning.analysis.kmedoids import kmedoids, medoid_cost, pairwise_distances


def brute_force(dist: np.ndarray, k: int) -> float:
    return min(medoid_cost(dist, c) for c in itertools.combinations(range(len(dist)), k))


def blobs(seed: int, k: int = 4, per: int = 5, dim: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(k, dim))
    return np.concatenate([c + rng.normal(size=(per + i, dim)) for i, c in enumerate(centres)])


def test_pairwise_distances_match_scipy():
    x = np.random.default_rng(0).normal(size=(9, 5))
    d = pairwise_distances(x)
    assert np.allclose(d, cdist(x, x)) and np.all(np.diag(d) == 0) and np.allclose(d, d.T)


@pytest.mark.parametrize("exhaustive_limit", [10**9, 0], ids=["exhaustive", "pam"])
@pytest.mark.parametrize("seed", range(4))
def test_medoids_are_members_and_optimal_on_clustered_sets(seed, exhaustive_limit):
    points = blobs(seed)
    dist = pairwise_distances(points)
    result = kmedoids(dist, 4, exhaustive_limit=exhaustive_limit)
    assert len(set(result.medoids)) == 4 and all(0 <= m < len(points) for m in result.medoids)
    assert result.cost == pytest.approx(brute_force(dist, 4))
    assert result.cost == pytest.approx(medoid_cost(dist, result.medoids))
    # labels point at the nearest medoid; clusters ordered largest first
    assert np.array_equal(result.labels, dist[:, list(result.medoids)].argmin(1))
    sizes = np.bincount(result.labels, minlength=4)
    assert list(sizes) == sorted(sizes, reverse=True)


@pytest.mark.parametrize("seed", range(5))
def test_exhaustive_is_optimal_and_pam_is_a_swap_local_optimum_on_random_sets(seed):
    dist = pairwise_distances(np.random.default_rng(seed).uniform(size=(11, 3)))
    exact = kmedoids(dist, 3)
    assert exact.cost == pytest.approx(brute_force(dist, 3))
    pam = kmedoids(dist, 3, exhaustive_limit=0)
    assert pam.cost >= exact.cost - 1e-9
    for i, h in itertools.product(range(3), range(len(dist))):
        if h in pam.medoids:
            continue
        swapped = list(pam.medoids)
        swapped[i] = h
        assert medoid_cost(dist, swapped) >= pam.cost - 1e-9


def test_small_sets_and_bad_input():
    dist = pairwise_distances(np.arange(3.0)[:, None])
    assert kmedoids(dist, 4).medoids == (0, 1, 2) and kmedoids(dist, 4).cost == 0.0
    assert kmedoids(dist, 1).medoids == (1,)  # the middle point is the 1-medoid
    with pytest.raises(ValueError, match="k must be"):
        kmedoids(dist, 0)
    with pytest.raises(ValueError, match="square"):
        kmedoids(np.zeros((2, 3)), 1)
