"""What a model costs -- parameters, MACs per image, inference images/s -- under one protocol.

Why one protocol: Optuna trials, ``glnet ablation table`` and the run-analysis notebook put these
figures side by side (and against the paper's), which only means something if every tool counts and
times the same way. The protocol:

* the model is measured in eval mode (its training mode is restored afterwards) and inside a
  ``torch.no_grad()`` block, so the caller's autograd mode is never switched globally;
* parameters by :func:`~.flops.count_params`, MACs by :func:`~.flops.count_macs` on one image of
  ``image_size`` x ``image_size`` (the fvcore convention of the paper's GFLOPs);
* throughput: fp32 inference on the model's own device, one random ``batch_size`` batch
  (channels-first), ``warmup`` untimed calls, then ``repeats`` timed calls; the median images/s
  (:class:`~.timing.Throughput`) is reported.

``glnet bench`` keeps its own interleaved multi-model timing loop (precision, compile and train
options) but counts parameters and MACs through :func:`count_cost` as well.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .flops import count_macs, count_params, model_device
from .timing import Throughput, run_interleaved
from .workload import make_batch, make_step

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_REPEATS", "DEFAULT_WARMUP", "ModelCost", "count_cost",
           "inference_throughput", "measure_cost"]

#: The protocol's defaults: the benchmark's batch (``glnet bench --batch-size``), a short warm-up and
#: few repeats, since the sweep tools time one model after another in a loop.
DEFAULT_BATCH_SIZE = 16
DEFAULT_WARMUP = 2
DEFAULT_REPEATS = 5


@dataclass(frozen=True)
class ModelCost:
    """Counts of one model at one resolution and, when timed, its inference throughput."""

    params: int
    macs: int  # forward MACs per image
    image_size: int
    throughput: Throughput | None = None  # None: not timed
    batch_size: int | None = None

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def figures(self) -> dict[str, float]:
        """The flat figures tables and trial attributes hold: params_m, gmacs (+ throughput, ms_per_batch)."""
        figures = {"params_m": self.params_m, "gmacs": self.gmacs}
        if self.throughput is not None:
            figures.update(throughput=self.throughput.median, ms_per_batch=self.throughput.ms_per_batch)
        return figures


@contextlib.contextmanager
def _measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the block; the model's mode and the caller's grad mode come back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def count_cost(model: nn.Module, image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Parameters and forward MACs of one ``image_size`` image (a side, or (height, width) as the dense models'
    512 x 2048; the protocol's counts, untimed)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    with _measuring(model):
        return count_params(model), count_macs(model, (3, height, width))


def inference_throughput(model: nn.Module, image_size: int, *, batch_size: int = DEFAULT_BATCH_SIZE,
                         warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS) -> Throughput:
    """Images/s of fp32 inference on the model's device: ``warmup`` untimed calls (at least 0), then
    ``repeats`` timed ones (at least 1)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    with _measuring(model):
        images, labels = make_batch(batch_size, image_size, 1, device, channels_last=False)
        step = make_step(model, images, labels, "infer", "fp32", device)
        seconds = run_interleaved([step], max(0, warmup), max(1, repeats), device)[0]
    return Throughput.from_times(seconds, batch_size)


def measure_cost(model: nn.Module, image_size: int, *, throughput: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE, warmup: int = DEFAULT_WARMUP,
                 repeats: int = DEFAULT_REPEATS) -> ModelCost:
    """Parameters, MACs and (``throughput=True``) median inference images/s of ``model``, by the protocol."""
    params, macs = count_cost(model, image_size)
    if not throughput:
        return ModelCost(params=params, macs=macs, image_size=image_size)
    speed = inference_throughput(model, image_size, batch_size=batch_size, warmup=warmup, repeats=repeats)
    return ModelCost(params=params, macs=macs, image_size=image_size, throughput=speed, batch_size=batch_size)
