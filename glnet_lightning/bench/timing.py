"""The measurement loop: warm-up, interleaved repeats, GEMM peak, summary statistics.

Interleaving (A B A B ...) spreads slow drifts of a shared machine -- thermal
throttling, a neighbour's job -- over all models instead of penalising one.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .workload import autocast_for


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times cover the kernels themselves."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(step: Callable[[], None], device: torch.device) -> float:
    """Seconds taken by one call of ``step``."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def run_interleaved(steps: Sequence[Callable[[], None]], warmup: int, repeats: int,
                    device: torch.device) -> list[list[float]]:
    """Warm every step up, then time them in rounds; returns seconds per step per round."""
    for step in steps:
        for _ in range(warmup):
            step()
    synchronize(device)
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for index, step in enumerate(steps):
            times[index].append(time_call(step, device))
    return times


def _matmul_seconds(size: int, precision: str, device: torch.device, repeats: int) -> float:
    """Median seconds of one square matmul (after one warm-up call)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)

    def matmul() -> None:
        with torch.inference_mode(), autocast_for(precision, device):
            torch.mm(a, b)

    return statistics.median(run_interleaved([matmul], 1, repeats, device)[0])


@dataclass(frozen=True)
class GemmPeak:
    """Best FLOP/s among the square matmuls tried, and the size that reached it."""

    flops: float
    size: int


def gemm_peak(max_size: int, precision: str, device: torch.device, repeats: int = 3,
              budget_s: float = 2.0) -> GemmPeak:
    """The machine's practical GEMM ceiling under the benchmark's precision and threads.

    Square matmuls of doubling side (from min(256, max_size) up to ``max_size``),
    median of ``repeats`` each, best kept. Growth stops once the next size is
    predicted (8x work) to exceed ``budget_s`` per call: on CPUs without native
    bf16 the fallback kernel is so slow that a 2048 matmul takes minutes, and
    its efficiency falls with size anyway.
    """
    best = GemmPeak(0.0, 0)
    size = min(256, max_size)
    while True:
        seconds = _matmul_seconds(size, precision, device, repeats)
        if 2 * size ** 3 / seconds > best.flops:
            best = GemmPeak(2 * size ** 3 / seconds, size)
        if size >= max_size or 8 * seconds > budget_s:
            return best
        size = min(2 * size, max_size)


@dataclass(frozen=True)
class Throughput:
    """Images per second over the repeats (median and spread) plus the median batch time."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    ms_per_batch: float

    @classmethod
    def from_times(cls, seconds: Sequence[float], batch_size: int) -> "Throughput":
        rates = sorted(batch_size / s for s in seconds)
        if len(rates) > 1:
            q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive")
        else:
            q1 = q3 = rates[0]
        return cls(median=statistics.median(rates), min=rates[0], max=rates[-1], q1=q1, q3=q3,
                   ms_per_batch=1000 * statistics.median(seconds))
