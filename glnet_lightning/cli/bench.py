"""``glnet bench``: argument parsing and the command's entry point.

Measurement lives in :mod:`glnet_lightning.bench.runner`, rendering in :mod:`glnet_lightning.bench.report`; this module
only turns the command line into a :class:`BenchConfig` and errors into exit codes.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from glnet_lightning.bench.errors import BenchError
from glnet_lightning.bench.report import render, to_record, write_json
from glnet_lightning.bench.runner import BenchConfig, run_benchmark
from glnet_lightning.bench.spec import parse_model_spec
from glnet_lightning.bench.workload import MODES, PRECISIONS
from glnet_lightning.models import layers
from glnet_lightning.models.layers import CPU_CONV_PRECISION_ENV as CONV_ENV
from glnet_lightning.models.layers import CPU_CONV_PRECISIONS

from .errors import CommandParser, parse_args, report


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="glnet bench",
        description="Throughput, memory and FLOP utilisation of timm/GLNet models, measured "
                    "interleaved in one process.")
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="timm model name, optionally NAME:key=value,... passed to the constructor")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 128 on CUDA (the paper's throughput protocol), 16 on CPU")
    parser.add_argument("--img-size", type=int, nargs="+", default=[224],
                        help="one or more square input sizes; several also give scaling exponents")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                        help="bf16/fp16 via torch.autocast (fp16 needs CUDA)")
    parser.add_argument("--mode", choices=MODES, default="infer",
                        help="infer: eval forward under inference_mode; train: forward+backward+AdamW")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="time torch.compile'd models too and report the speed-up over eager (both --mode "
                             "infer and train); the compile time is timed apart from the steady state")
    parser.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune",
                                                   "max-autotune-no-cudagraphs"], default="default",
                        help="torch.compile mode, the same for every model")
    parser.add_argument("--freezing", action="store_true",
                        help="with --compile in infer mode: inductor freezing (weights become constants, so "
                             "bias/GELU epilogues and weight packing fold into the GEMMs)")
    parser.add_argument("--conv-precision", choices=list(CPU_CONV_PRECISIONS), default="auto",
                        help="GLNet's convolutions under CPU autocast: auto (bf16 where oneDNN has native kernels "
                             "for this CPU, else float32), or force float32 / autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--gemm-size", type=int, default=2048, help="side of the square matmul measuring the peak")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-model memory probe processes")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    return parser


def default_batch_size(cuda: bool) -> int:
    """The paper measures GPU throughput at batch 128; on a CPU that would take minutes per step."""
    return 128 if cuda else 16


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        specs=[parse_model_spec(text) for text in args.models], img_sizes=list(args.img_size),
        batch_size=default_batch_size(torch.cuda.is_available()) if args.batch_size is None else args.batch_size,
        precision=args.precision, mode=args.mode,
        channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode,
        freezing=args.freezing, warmup=args.warmup,
        repeats=args.repeats, num_classes=args.num_classes, gemm_size=args.gemm_size,
        probe_memory=not args.no_memory, conv_precision=args.conv_precision)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 on success, 2 for bad arguments or models."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):  # --help (0), a usage error (2)
        return args
    previous_threads = torch.get_num_threads()
    previous_conv = (layers._cpu_conv_precision, os.environ.get(CONV_ENV))
    try:
        layers.set_cpu_conv_precision(args.conv_precision)
        os.environ[CONV_ENV] = args.conv_precision  # the memory probe processes too
        if args.threads is not None:
            if args.threads < 1:
                raise BenchError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        result = run_benchmark(config_from_args(args))
    except BenchError as exc:
        return report("glnet bench", exc)
    finally:  # main() may be called in-process (tests, notebooks): leave threads and conv precision as found
        torch.set_num_threads(previous_threads)
        layers.set_cpu_conv_precision(previous_conv[0])
        if previous_conv[1] is None:
            os.environ.pop(CONV_ENV, None)
        else:
            os.environ[CONV_ENV] = previous_conv[1]
    print(render(result))
    if args.json:
        write_json(args.json, to_record(result, argv))
    return 0
