"""Cost figures of a trained trial model: parameters (M), GMACs and measured inference throughput.

Why measured and not looked up: slot number and kernel size change the cost only a little, and the
paper's finding (64 slots suffice, kernel barely matters) is a trade-off against speed on *your*
hardware, so each trial times its own model with the benchmark's timing loop (``glnet bench``).
GMACs follow the project convention (fvcore style: multiply-accumulates of convs, linears and
attention matmuls), reported as "GFLOPs" in the paper.
"""
from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from glnet_lightning.bench import count_macs, count_params
from glnet_lightning.bench.timing import Throughput, run_interleaved
from glnet_lightning.bench.workload import make_batch, make_step

__all__ = ["measure_model", "image_size_of"]


def image_size_of(config: dict[str, Any], default: int = 224) -> int:
    """The training resolution from a LightningCLI config's data block."""
    data = config.get("data") or {}
    args = data.get("init_args", data) if isinstance(data, dict) else {}
    return int(args.get("image_size") or default)


def measure_model(model: nn.Module, image_size: int, *, batch_size: int = 64, warmup: int = 2, repeats: int = 5,
                  counts: bool = True, throughput: bool = True) -> dict[str, float]:
    """``{params_m, gmacs}`` (``counts``) and ``throughput`` (images/s, fp32 inference, median of ``repeats``)."""
    was_training = model.training
    device = next(model.parameters()).device
    figures: dict[str, float] = {}
    if counts:
        figures["params_m"] = count_params(model) / 1e6
        figures["gmacs"] = count_macs(model, (3, image_size, image_size)) / 1e9
    if throughput:
        model.eval()
        images, labels = make_batch(batch_size, image_size, 1, device, channels_last=False)
        step = make_step(model, images, labels, "infer", "fp32", device)
        seconds = run_interleaved([step], max(0, warmup), max(1, repeats), device)[0]
        figures["throughput"] = Throughput.from_times(seconds, batch_size).median
        figures["ms_per_batch"] = 1000 * statistics.median(seconds)
    model.train(was_training)
    torch.set_grad_enabled(True)
    return figures
