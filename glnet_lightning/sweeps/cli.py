"""``glnet sweep grid ...`` and ``glnet ablation table ...`` (also ``python -m glnet_lightning.sweeps.cli``).

Why argparse here and not LightningCLI: these commands orchestrate many fits and read their
results; only the fits themselves are LightningCLI runs. Both share the sweep options
(``--base``, ``--set``) so a table always describes the same models the grid trained.
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from glnet_lightning.cli.config_edit import apply_edits, parse_assignments
from glnet_lightning.cli.errors import UserError, parse_args, report

from .grid import DEFAULT_FIT_COMMAND, GridRunner, slurm_script, variant_commands
from .sweep_file import load_sweep

__all__ = ["grid_main", "ablation_main", "main"]


def _sweep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_file", type=Path, help="sweep YAML, e.g. sweeps/ablation_stl.yaml")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run / show only these variants")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="edit the base config before the variant overrides (dotted key, YAML value), "
                             "e.g. --set model.model_kwargs.depths=[1,1,1,1]; repeatable")
    parser.add_argument("--base", help="use this base config instead of the sweep file's")
    parser.add_argument("--runs", type=Path, help="one subdirectory per variant (default runs/<sweep name>)")


def _load(args: argparse.Namespace):
    sweep = load_sweep(args.sweep_file, base=args.base)
    extra = parse_assignments(args.sets)
    runs = args.runs if args.runs is not None else Path("runs") / sweep.path.stem
    return sweep, sweep.select(args.only), extra, runs


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The options a cluster task must repeat so it resolves the same configs."""
    forwarded = [arg for text in args.sets for arg in ("--set", text)]
    return forwarded + (["--base", args.base] if args.base else [])


def _guard(run, argv: Sequence[str] | None, parser: argparse.ArgumentParser) -> int:
    """Parse, run, and turn user-facing errors into one ``error:`` line and exit code 2."""
    args = parse_args(parser, argv)
    if isinstance(args, int):  # --help (0), a usage error (2)
        return args
    try:
        return run(args)
    except UserError as exc:
        return report(parser.prog, exc)


def grid_main(argv: Sequence[str] | None = None, fit_command: Sequence[str] = DEFAULT_FIT_COMMAND,
              check_config: bool = True) -> int:
    """Run (or print, or emit for a cluster) every selected variant; 1 if any variant failed.

    Before the first variant, the base config with the ``--set`` edits is built once as ``fit``
    would build it (``check_config``; tests with a fake fit turn it off): a mistake every variant
    shares stops the sweep with exit code 2.
    """
    parser = argparse.ArgumentParser(prog="glnet sweep grid", description=grid_main.__doc__)
    _sweep_options(parser)
    parser.add_argument("--dry-run", action="store_true", help="print each variant's command and config")
    parser.add_argument("--emit", choices=("slurm", "commands"),
                        help="print a SLURM array script or one command per variant instead of running")

    def run(args: argparse.Namespace) -> int:
        sweep, variants, extra, runs = _load(args)
        if args.emit == "slurm":
            print(slurm_script(sweep, variants, runs, _forwarded(args)), end="")
        elif args.emit == "commands":
            print("\n".join(variant_commands(sweep, variants, runs, _forwarded(args))))
        else:
            runner = GridRunner(sweep, runs, extra, fit_command=fit_command)
            if args.dry_run:
                runner.describe(variants)
                return 0
            if check_config:
                from glnet_lightning.cli.lightning_cli import ConfigError, check_run_config

                try:  # what every variant shares must work before the first one is started
                    check_run_config(apply_edits(sweep.base_config(), extra))
                except ConfigError as exc:
                    print(f"{parser.prog}: error: the base config with the --set edits cannot run: {exc}",
                          file=sys.stderr)
                    return 2
            states = runner.run(variants)
            print("[sweep] " + ", ".join(f"{name}: {state}" for name, state in states.items()))
            if "interrupted" in states.values():
                return 128 + signal.SIGTERM  # the shell's convention for "terminated by SIGTERM"
            return 1 if "failed" in states.values() else 0
        return 0

    return _guard(run, argv, parser)


def ablation_main(argv: Sequence[str] | None = None) -> int:
    """Print params, GMACs, CPU throughput and top-1 of every variant beside the paper's."""
    from glnet_lightning.bench.cost import DEFAULT_BATCH_SIZE

    from .ablation_table import FORMATS, format_table, table_rows

    parser = argparse.ArgumentParser(prog="glnet ablation table", description=ablation_main.__doc__)
    _sweep_options(parser)
    parser.add_argument("--format", choices=tuple(FORMATS), default="markdown")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier width counted in params")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per timed CPU forward (default: bench.cost's %(default)s)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the CPU timing (fast)")

    def run(args: argparse.Namespace) -> int:
        sweep, variants, extra, runs = _load(args)
        rows = table_rows(variants, extra, runs if runs.is_dir() else None, img_size=args.img_size,
                          throughput_batch=None if args.no_throughput else args.batch_size,
                          num_classes=args.num_classes)
        print(format_table(rows, args.format))
        return 0

    return _guard(run, argv, parser)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m glnet_lightning.sweeps.cli grid|table ...`` (what emitted cluster commands call)."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"grid": grid_main, "table": ablation_main}
    if not args or args[0] not in commands:
        print("usage: python -m glnet_lightning.sweeps.cli {grid,table} SWEEP_FILE [options]", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
