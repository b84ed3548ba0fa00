"""``glnet data prepare``: write litdata shards of an ImageNet-style folder tree.

Why a command: converting 1.28 M files takes a while and is done once per data set,
ideally on a machine close to the storage; training then streams the shards with
``--data.streaming OUTPUT``. Every problem the user can fix (missing root, bad
layout, existing shards, unreadable image under ``--on-bad-image raise``, litdata
not installed) is one ``glnet data prepare: error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from glnet_lightning.data.image_dataset import BAD_IMAGE_POLICIES, UnreadableImageError
from glnet_lightning.data.image_folder import DatasetLayoutError, validate_layout

from .errors import CommandParser, parse_args, report

__all__ = ["main", "build_parser", "parse_size"]

PROG = "glnet data prepare"
SPLITS = ("train", "val")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}


def parse_size(text: str) -> int:
    """``64MB`` / ``500k`` / ``1e6`` -> bytes (decimal units, as litdata counts them)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 64MB, 500KB or 1GB")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive size")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of workers")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=PROG,
        description="Write litdata shards (about --chunk-bytes each) from ROOT/{train,val}/<class>/<image>: the "
                    "encoded image files as they are, their class index and the class list, so that "
                    "ImageNetDataModule(streaming=OUTPUT) streams the same samples with the same labels as "
                    "ImageNetDataModule(root=ROOT). Every image is decoded once to find unreadable files.",
        epilog="examples:\n"
               "  glnet data prepare --root /data/imagenet --output /fast/imagenet_shards --workers 16\n"
               "  glnet data prepare --root /data/imagenet --output s3://bucket/imagenet --splits val\n"
               "then: glnet fit --config configs/imagenet_glnet_4g.yaml --data.streaming /fast/imagenet_shards "
               "--data.repeated_aug false",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, metavar="DIR",
                        help="the folder tree: DIR/train/<class>/<image> and DIR/val/<class>/<image>")
    parser.add_argument("--output", required=True, metavar="DIR_OR_URL",
                        help="where to write DIR_OR_URL/{train,val,meta}: a local directory or an object-store URL "
                             "litdata writes to (s3://, gs://, ...)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="splits to write (default: train val)")
    parser.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="worker processes reading and checking images (default: CPU count)")
    parser.add_argument("--chunk-bytes", type=parse_size, default=parse_size("64MB"), metavar="SIZE",
                        help="target chunk size, e.g. 64MB (default)")
    parser.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default="skip",
                        help="an unreadable image is left out and counted (skip, default) or stops the command "
                             "naming the file (raise): the folder path's policy")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already at the output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _error(message: str) -> int:
    return report(PROG, message)


def _existing_shards(output: str, splits: list[str]) -> list[str]:
    """Local split folders that already hold an index (litdata would refuse them after the first split)."""
    if "://" in output:
        return []  # litdata checks object stores itself
    return [str(Path(output, s)) for s in splits if (Path(output).expanduser() / s / "index.json").is_file()]


def _carried_over(streaming, output: str, classes: list[str], written: list[str]) -> dict:
    """Reports of splits written by an earlier run with the same classes, so ``--splits val`` keeps train."""
    try:
        previous = streaming.read_meta(output)
    except FileNotFoundError:
        return {}
    if previous.get("classes") != classes:
        print(f"note: the class list differs from the earlier shards at {output}; rewrite every split", flush=True)
        return {}
    return {name: report for name, report in previous["splits"].items() if name not in written}


def main(argv: list[str]) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or a usage error (2)
        return args
    splits = list(dict.fromkeys(args.splits))
    try:
        layout = validate_layout(args.root.expanduser().resolve())
    except (OSError, DatasetLayoutError) as exc:
        return _error(str(exc))
    existing = _existing_shards(args.output, splits)
    if existing and not args.overwrite:
        return _error(f"{', '.join(existing)} already hold(s) shards; pass --overwrite to replace them")
    try:
        from glnet_lightning.data import streaming
    except ImportError as exc:
        return _error(str(exc))

    output = args.output if "://" in args.output else str(Path(args.output).expanduser().resolve())
    sizes = ", ".join(f"{s} {len(getattr(layout, s))} images" for s in splits)
    print(f"{layout.train.root.parent} -> {output}: {len(layout.classes)} classes; {sizes}", flush=True)
    reports = []
    try:
        for split in splits:
            samples = getattr(layout, split)
            print(f"writing {split}: {len(samples)} images with {args.workers} worker(s)", flush=True)
            report = streaming.write_split(
                samples, split, output, on_bad_image=args.on_bad_image, num_workers=args.workers,
                chunk_bytes=args.chunk_bytes, overwrite=args.overwrite, verbose=not args.quiet,
            )
            skipped = f", skipped {len(report.bad_images)} unreadable: {', '.join(report.bad_images[:5])}" \
                if report.bad_images else ""
            print(f"{split}: wrote {report.num_samples} images to {report.location}{skipped}", flush=True)
            reports.append(report)
        kept = _carried_over(streaming, output, layout.classes, splits)
        meta = streaming.write_meta(output, layout.classes, reports, kept=kept)
    except UnreadableImageError as exc:
        return _error(f"{exc} (use --on-bad-image skip to leave unreadable files out)")
    except RuntimeError as exc:
        return _error(str(exc))
    print(f"class list and counts: {meta}\ntrain with: --data.streaming {output}", flush=True)
    return 0
