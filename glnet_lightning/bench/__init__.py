"""Benchmarking of GLNet and any timm model: throughput, memory, MACs, GEMM utilisation.

``count_macs`` / ``count_params`` are the project's FLOP and size counters and
``measure_cost`` the one protocol other tools measure a model's cost with
(params, MACs, images/s). The ``glnet bench`` command is :mod:`glnet_lightning.cli.bench`.
"""
from .cost import ModelCost, measure_cost
from .errors import BenchError
from .flops import count_macs, count_params
from .runner import BenchConfig, BenchResult, run_benchmark

__all__ = ["BenchConfig", "BenchError", "BenchResult", "ModelCost", "count_macs", "count_params",
           "measure_cost", "run_benchmark"]
