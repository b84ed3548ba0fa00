"""``glnet export CHECKPOINT``: argument parsing, the load-export-verify run and its exit codes.

The export itself (formats, dynamic shapes, verification) is :mod:`glnet_lightning.export`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from glnet_lightning.analysis.checkpoints import TASK_MODULES, CheckpointError, load_model
from glnet_lightning.export import (FORMATS, MIN_SIDE, TOLERANCE, ExportError, StageOutputs, check_format,
                                    export_model, input_channels, load_exported, verify_export,
                                    within_tolerance)
from glnet_lightning.models.weights import WEIGHTS_CHOICES, WeightsError

from .errors import FAILED, CommandParser, parse_args, report
from .viz import add_checkpoint_arguments

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="glnet export",
        description="Export a checkpoint to ONNX or to a torch.export program (.pt2) with a dynamic batch (and "
                    f"dynamic height/width >= {MIN_SIDE} px when --img-size allows), then check the written file "
                    "against the eager model on random inputs and print the largest difference.",
        epilog="examples:\n  glnet export runs/glnet_stl/checkpoints/best.ckpt --format onnx --out glnet_stl.onnx\n"
               "  glnet export glnet_4g.pth --format pt2 --out glnet_4g.pt2 --img-size 224 --batch 8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser, check_weights=False, tasks=TASK_MODULES)
    parser.add_argument("--format", dest="fmt", metavar="{onnx,pt2}",
                        help="output format (default: from the --out suffix)")
    parser.add_argument("--out", type=Path, help="output file (default: the checkpoint's name with the format's suffix)")
    parser.add_argument("--img-size", type=int, nargs="+", metavar=("H", "W"),
                        help="example (and checked) input size (default: the size the model was trained at)")
    parser.add_argument("--batch", type=int, default=1,
                        help="batch of the checked input (default: 1); the exported batch is always dynamic")
    parser.add_argument("--fixed-size", action="store_true",
                        help="export for --img-size only (for models whose height/width cannot be dynamic, such as "
                             "the window_mhsa ablation)")
    parser.add_argument("--features", action="store_true",
                        help="export forward_intermediates (final features and every stage's map) instead of logits")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Every mistake that needs no checkpoint, before the (slow) loading."""
    if args.fmt is None and args.out is not None and args.out.suffix in FORMATS.values():
        args.fmt = next(f for f, suffix in FORMATS.items() if suffix == args.out.suffix)
    if args.fmt is None:
        raise ExportError(f"give --format ({' or '.join(FORMATS)}) or an --out file ending in "
                          f"{' or '.join(FORMATS.values())}")
    check_format(args.fmt)
    if args.weights not in WEIGHTS_CHOICES:
        raise ExportError(f"--weights {args.weights!r}: choose auto, raw or ema")
    if args.img_size is not None and (len(args.img_size) > 2 or min(args.img_size) < 1):
        raise ExportError(f"--img-size takes a height and optionally a width (positive), got {args.img_size}")
    if args.batch < 1:
        raise ExportError(f"--batch {args.batch}: the batch needs at least one image")
    if args.out is None:
        args.out = Path(args.checkpoint.stem + FORMATS[args.fmt])


def run(args: argparse.Namespace) -> bool:
    """Load, export, verify; prints what it did and returns whether the file matches eager."""
    # a classifier, or a segmentation run's whole network (its per-pixel logits)
    loaded = load_model(args.checkpoint, args.model, weights=args.weights, tasks=TASK_MODULES)
    model, size, label = loaded.model.eval(), loaded.preprocess.size, loaded.label
    if args.features:
        if not hasattr(model, "forward_intermediates"):
            raise ExportError(f"{type(model).__name__} has no forward_intermediates: export its logits")
        model = StageOutputs(model).eval()
    height, width = (args.img_size * 2)[:2] if args.img_size else (size,) * 2
    if not args.fixed_size and min(height, width) < MIN_SIDE:
        print(f"note: {height}x{width} is below {MIN_SIDE} px: the export takes that size only (batch stays dynamic)",
              file=sys.stderr)
    export_model(model, args.fmt, args.out, height, width, args.batch, args.fixed_size)
    dynamic_size = not args.fixed_size and min(height, width) >= MIN_SIDE
    # the requested input, and one the trace never saw (another batch and, when dynamic, another size)
    other = (height + 32, width + 32) if dynamic_size else (height, width)
    checks = [(args.batch, height, width), (args.batch + 1, *other)]
    generator = torch.Generator().manual_seed(0)
    ok = True
    print(f"exported {label} to {args.out} ({args.fmt})")
    exported = load_exported(args.out, args.fmt)
    for b, h, w in checks:
        x = torch.randn(b, input_channels(model), h, w, generator=generator)
        diff, scale = verify_export(model, exported, x)
        ok = ok and within_tolerance(diff, scale)
        print(f"max abs difference to eager at {b}x{x.shape[1]}x{h}x{w}: {diff:.3g} (outputs up to {scale:.3g})")
    return ok


def main(argv: Sequence[str]) -> int:
    """``glnet export ARGS``: 0 when the file is written and matches eager, 1 when it does not, 2 for a
    problem the user can fix (missing file, unknown format, bad sizes, missing ONNX packages)."""
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):  # --help (0), a usage error (2)
        return args
    try:
        _check_args(args)
        ok = run(args)
    except (ExportError, CheckpointError, WeightsError) as exc:
        return report("glnet export", exc)
    if not ok:
        return report("glnet export", f"{args.out} differs from the eager model by more than {TOLERANCE:g} "
                                      "x max(1, |output|)", code=FAILED)
    return 0
