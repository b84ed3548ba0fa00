"""Benchmarking of GLNet and any timm model: throughput, memory, MACs, GEMM utilisation.

``count_macs`` / ``count_params`` are the project's FLOP and size counters and
are meant to be reused by other tools; ``main`` backs ``glnet bench``.
"""
from .cli import main
from .errors import BenchError
from .flops import count_macs, count_params
from .runner import BenchConfig, BenchResult, run_benchmark

__all__ = ["BenchConfig", "BenchError", "BenchResult", "count_macs", "count_params", "main", "run_benchmark"]
