"""``glnet bench``: argument parsing and the command's entry point.

Measurement lives in :mod:`glnet_lightning.bench.runner`, rendering in :mod:`glnet_lightning.bench.report`; this module
only turns the command line into a :class:`BenchConfig` and errors into exit codes.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from glnet_lightning.bench.dense import DENSE_HEADS, dense_record, parse_size, render_dense, run_dense_benchmark
from glnet_lightning.bench.errors import BenchError
from glnet_lightning.bench.report import cpu_flags, render, to_record, write_json
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
    parser.add_argument("--img-size", nargs="+", default=None,
                        help="one or more square input sizes (default 224); several also give scaling exponents. "
                             "With --head: one HEIGHTxWIDTH (default: the paper's, 512x2048 for ADE20K heads, "
                             "800x1280 for COCO detectors)")
    parser.add_argument("--head", choices=list(DENSE_HEADS), default=None,
                        help="measure a segmentation model (semfpn, upernet) or a detector (maskrcnn, retinanet) over "
                             "each backbone MODEL: params, GMACs and fp32 inference images/s (--batch-size default 1)")
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
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier width (default 1000); with --head the data set's classes (default: ADE20K's "
                             "150, COCO's 81: 80 categories + background, torchvision's convention)")
    parser.add_argument("--gemm-size", type=int, default=2048, help="side of the square matmul measuring the peak")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-model memory probe processes")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    return parser


def default_batch_size(cuda: bool) -> int:
    """The paper measures GPU throughput at batch 128; on a CPU that would take minutes per step."""
    return 128 if cuda else 16


def _square_sizes(texts: list[str] | None) -> list[int]:
    if texts is None:
        return [224]
    try:
        return [int(text) for text in texts]
    except ValueError:
        raise BenchError(f"--img-size {' '.join(texts)}: classification sizes are square sides in pixels "
                         f"(HEIGHTxWIDTH is for --head models)") from None


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        specs=[parse_model_spec(text) for text in args.models], img_sizes=_square_sizes(args.img_size),
        batch_size=default_batch_size(torch.cuda.is_available()) if args.batch_size is None else args.batch_size,
        precision=args.precision, mode=args.mode,
        channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode,
        freezing=args.freezing, warmup=args.warmup,
        repeats=args.repeats, num_classes=1000 if args.num_classes is None else args.num_classes,
        gemm_size=args.gemm_size,
        probe_memory=not args.no_memory, conv_precision=args.conv_precision)


def _bench_dense(args: argparse.Namespace, argv: list[str]) -> int:
    """``--head``: the dense model over each backbone, at the paper's size unless --img-size says otherwise."""
    if args.mode != "infer" or args.compile or args.precision != "fp32" or args.channels_last:
        raise BenchError("--head measures fp32 eager inference: drop --mode train, --compile, --precision and "
                         "--channels-last")
    if args.img_size is not None and len(args.img_size) != 1:
        raise BenchError(f"--head takes one --img-size HEIGHTxWIDTH, got {len(args.img_size)}")
    size = DENSE_HEADS[args.head].size if args.img_size is None else parse_size(args.img_size[0])
    batch = 1 if args.batch_size is None else args.batch_size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = run_dense_benchmark(args.head, [parse_model_spec(t) for t in args.models], size, batch_size=batch,
                               warmup=args.warmup, repeats=args.repeats, num_classes=args.num_classes, device=device)
    print(render_dense(rows, batch_size=batch, warmup=args.warmup, repeats=args.repeats, device=device))
    if args.json:
        write_json(args.json, {"argv": list(argv), "cpu_flags": cpu_flags(),
                               "rows": [dense_record(row) for row in rows]})
    return 0


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
        if args.head is not None:
            return _bench_dense(args, argv)
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
