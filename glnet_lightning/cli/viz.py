"""``glnet viz``: the slot figures of ``notebooks/slot_visualization.ipynb`` as PNG files.

For users without Jupyter: the same functions draw the same figures; every problem the user can fix
(missing checkpoint, unreadable image, bad block number) is one ``glnet viz: error:`` line and exit
code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glnet_lightning.analysis.assignments import DEFAULT_BLOCKS, BlockError, check_block_numbers
from glnet_lightning.analysis.checkpoints import CheckpointError, load_model, model_spec_arg
from glnet_lightning.analysis.images import DEFAULT_IMAGES, ImageError, load_images
from glnet_lightning.models.weights import WEIGHTS_CHOICES, WeightsError

from .errors import CommandParser, parse_args, report

__all__ = ["main", "add_checkpoint_arguments", "build_parser", "write_figures"]


def add_checkpoint_arguments(parser: argparse.ArgumentParser, check_weights: bool = True,
                             tasks: tuple[str, ...] = ("GLNetModule",)) -> None:
    """The checkpoint a command loads a model from (``analysis.checkpoints.load_model``), as ``glnet viz`` and
    ``glnet export`` both take it: the file, ``--model`` for a state dict, ``--weights`` raw or EMA.
    ``check_weights``: argparse refuses another ``--weights`` (export checks it itself, with its own message);
    ``tasks``: the modules whose fit checkpoints the command takes (``load_model``'s)."""
    parser.add_argument("checkpoint", type=Path,
                        help=f"a fit checkpoint (.ckpt of {' or '.join(tasks)}) or a state dict file (published "
                             "checkpoint)")
    parser.add_argument("--model", type=model_spec_arg, metavar="NAME[:KEY=VALUE,...]",
                        help="the network of a state dict file, as in glnet bench: a named model with settings "
                             "changed, e.g. glnet_stl:num_slots=16,depths=[1,1,2,1] (published files are recognised)")
    parser.add_argument("--weights", default="auto", choices=WEIGHTS_CHOICES if check_weights else None,
                        metavar=None if check_weights else "{" + ",".join(WEIGHTS_CHOICES) + "}",
                        help="the raw or the EMA weights of a file that has both (default auto: the raw 'model' of "
                             "a published file, the EMA of a fit checkpoint that kept one)")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="glnet viz",
        description="Write the paper's slot figures for a checkpoint: per image and GLMix block, the input, the "
                    "pseudo-coloured slot assignment and the 4 representative slots (k-medoids) as heat maps; "
                    "with --early, also the early-vs-late comparison.",
        epilog="examples:\n  glnet viz runs/fashion_mnist/checkpoints/last.ckpt --out figures\n"
               "  glnet viz glnet_stl.pth --model glnet_stl --images cat.jpg dog.png --blocks 2 5 10",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--early", type=Path, metavar="CHECKPOINT",
                        help="an earlier checkpoint of the same model, for the early-vs-late comparison")
    parser.add_argument("--images", nargs="+", metavar="PATH",
                        help="image files, or skimage:NAME for scikit-image samples "
                             f"(default: {' '.join(DEFAULT_IMAGES)})")
    parser.add_argument("--blocks", nargs="+", type=int, default=list(DEFAULT_BLOCKS), metavar="N",
                        help="GLMix block numbers counted from 1 across stages (default: 2 5 10); a smaller "
                             "model shows its lower / middle / upper blocks instead")
    parser.add_argument("--out", type=Path, default=Path("slot_figures"), help="output folder (default: slot_figures)")
    parser.add_argument("--size", type=int, help="input resolution (default: the model's training size)")
    parser.add_argument("--slots", type=int, default=4, help="representative slots per block (default: 4)")
    return parser


def write_figures(args: argparse.Namespace) -> list[Path]:
    """Draw and save every figure; returns the files written."""
    from glnet_lightning.analysis.slot_figures import comparison_figure, save_figure, slot_figure
    from glnet_lightning.analysis.slot_views import compute_slot_views

    check_block_numbers(args.blocks)  # a bad number fails before anything is loaded
    images = load_images(args.images)
    checkpoints = [args.early, args.checkpoint] if args.early else [args.checkpoint]
    per_checkpoint = []
    for path in checkpoints:
        loaded = load_model(path, args.model, weights=args.weights)
        results, notes = compute_slot_views(loaded, images, args.blocks, args.slots, args.size)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        per_checkpoint.append(results)
    written = []
    late = per_checkpoint[-1]
    for result in late:
        written.append(save_figure(slot_figure(result), args.out / f"{result.name}_slots.png"))
    if args.early:
        for early, result in zip(per_checkpoint[0], late):
            figure = comparison_figure([early, result])
            written.append(save_figure(figure, args.out / f"{result.name}_early_vs_late.png"))
    return written


def main(argv: list[str]) -> int:
    """``glnet viz ARGS``: 0 when the figures are written, 2 for a problem the user can fix."""
    parser = build_parser()

    def check(args) -> None:
        if args.size is not None and args.size < 8:
            parser.error(f"--size {args.size} is too small (8 pixels at least)")
        if args.slots < 1:
            parser.error(f"--slots {args.slots}: show at least one representative slot")

    args = parse_args(parser, argv, check)
    if isinstance(args, int):  # --help (0), a usage error (2)
        return args
    try:
        written = write_figures(args)
    except (CheckpointError, WeightsError, ImageError, BlockError) as exc:
        return report("glnet viz", exc)
    except ModuleNotFoundError as exc:  # matplotlib / scikit-image are the analysis extra, not core dependencies
        return report("glnet viz", f"{exc.name} is not installed: pip install 'glnet-lightning[analysis]'")
    for path in written:
        print(path)
    return 0
