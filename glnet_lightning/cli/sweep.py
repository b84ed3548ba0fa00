"""``glnet sweep grid|optuna|report ...`` and ``glnet ablation table ...``.

Why argparse here and not LightningCLI: these
commands orchestrate many fits and read their results; only the fits themselves are LightningCLI
runs. The grid runner and the ablation table share the sweep options (``--base``, ``--set``) so a
table always describes the same models the grid trained.

``glnet sweep optuna`` is a resumable command rather than a script: the same command line, run
again or on another worker with the same ``--storage``, continues the same study -- ``load_if_exists`` picks it up,
finished trials stay finished, stale ones (dead worker) are failed and retried via heartbeats.
``--n-trials`` counts the trials *this* worker runs, so two workers with ``--n-trials 5`` give 10.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from glnet_lightning.config_edit import apply_edits, parse_assignments
from glnet_lightning.errors import UserError
from glnet_lightning.sweeps.grid import DEFAULT_FIT_COMMAND, GridRunner, slurm_script, variant_commands
from glnet_lightning.sweeps.sweep_file import load_sweep

from .errors import CommandParser, FAILED, INTERRUPTED, SIGTERM_EXIT_CODE, parse_args, report

__all__ = ["grid_main", "ablation_main", "optuna_main", "report_main", "build_optuna_parser",
           "build_report_parser"]


def _as_set_edits(message: object) -> str:
    """A config error in the sweep's own form: the LightningCLI options it names (``--trainer.devices 1``)
    become the ``--set trainer.devices=1`` edits a sweep command takes."""
    return re.sub(r"--([a-z_]+(?:\.[a-z_]+)+) (\S+)", r"--set \1=\2", str(message))


def _sweep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_file", type=Path, help="sweep YAML, e.g. sweeps/ablation_stl.yaml")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run / show only these variants")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="edit the base config before the variant overrides (dotted key, YAML value), "
                             "e.g. --set model.backbone.depths=[1,1,1,1]; repeatable")
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
    parser = CommandParser(prog="glnet sweep grid", description=grid_main.__doc__)
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
                from .lightning_cli import ConfigError, check_run_config

                try:  # what every variant shares must work before the first one is started
                    check_run_config(apply_edits(sweep.base_config(), extra))
                except ConfigError as exc:
                    return report(parser.prog, f"the base config with the --set edits cannot run: {_as_set_edits(exc)}")
            states = runner.run(variants)
            print("[sweep] " + ", ".join(f"{name}: {state}" for name, state in states.items()))
            if "interrupted" in states.values():
                return SIGTERM_EXIT_CODE
            return FAILED if "failed" in states.values() else 0
        return 0

    return _guard(run, argv, parser)


def ablation_main(argv: Sequence[str] | None = None) -> int:
    """Print params, GMACs, CPU throughput and top-1 of every variant beside the paper's."""
    from glnet_lightning.bench.cost import DEFAULT_BATCH_SIZE

    from glnet_lightning.sweeps.ablation_table import FORMATS, format_table, table_rows

    parser = CommandParser(prog="glnet ablation table", description=ablation_main.__doc__)
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


def build_optuna_parser(prog: str = "glnet sweep optuna") -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description="Optuna search over a base config (see the sweep file).")
    parser.add_argument("sweep_file", help="sweep YAML, e.g. sweeps/optuna_slots_kernel.yaml")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<runs_dir>/<study>/study.db); "
                                          "e.g. postgresql://user:pass@host/db to share a study across machines, or "
                                          "journal:/shared/fs/NAME.journal on a shared file system")
    parser.add_argument("--study-name", help="study name (default: the sweep file's study_name)")
    parser.add_argument("--n-trials", type=int, help="trials this worker runs (default: the sweep file's n_trials)")
    parser.add_argument("--timeout", type=float, help="stop starting new trials after S seconds")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="edit the base config with a LightningCLI dotted key (repeatable), "
                             "e.g. --set trainer.max_steps=5")
    parser.add_argument("--runs-dir", help="where trial run dirs (and the default SQLite study) go")
    parser.add_argument("--base", help="use this base config instead of the sweep file's")
    parser.add_argument("--objective", dest="objectives", action="append", metavar="NAME[:DIRECTION]",
                        help="replace the sweep file's objectives (repeat for multi-objective), e.g. "
                             "--objective val/acc1 --objective throughput")
    return parser


def build_report_parser(prog: str = "glnet sweep report") -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description="Best trials / Pareto front of an Optuna study, "
                                                            "plus an HTML page of plots beside the study.")
    parser.add_argument("--storage", required=True, help="Optuna storage URL, e.g. sqlite:///runs/sweeps/NAME/study.db")
    parser.add_argument("--study-name", help="study name (optional when the storage holds a single study)")
    parser.add_argument("--top", type=int, default=5, help="best trials to list (single objective)")
    parser.add_argument("--limit", type=int, default=50, help="at most this many of the latest trials (0: all)")
    parser.add_argument("--html", help="HTML path (default: <study>_report.html beside the SQLite file, "
                                       "or in the current directory for server storages)")
    parser.add_argument("--no-html", action="store_true", help="print the tables only")
    return parser


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def optuna_main(argv: list[str] | None = None) -> int:
    """Run (or resume) a study: 0 when it ran (some trials may have failed), 1 when every trial of this
    run failed, 2 when the sweep cannot start (bad file or option, a config no trial could run)."""
    prog = "glnet sweep optuna"
    args = parse_args(build_optuna_parser(prog), argv)
    if isinstance(args, int):
        return args
    from glnet_lightning.config_edit import ConfigEditError, load_config
    from glnet_lightning.sweeps.optuna_sweep import load_optuna_sweep

    try:
        sweep = load_optuna_sweep(args.sweep_file, base=args.base, runs_dir=args.runs_dir,
                                  study_name=args.study_name, objectives=args.objectives)
        sets = parse_assignments(args.sets)
        base_config = load_config(sweep.base)
    except ConfigEditError as exc:
        return report(prog, exc)
    import optuna

    from glnet_lightning.sweeps.optuna_study import TrialRunner, default_storage_url, open_study
    from glnet_lightning.analysis.study_report import render_report

    from .lightning_cli import ConfigError, build_cli, check_run_config

    runner = TrialRunner(sweep, base_config, sets, build_run=build_cli)
    try:  # a mistake every trial shares (bad --set, data root, trainer) stops here, not in n failed trials
        check_run_config(runner.trial_config({}, sweep.study_dir / "config_check"))
    except (ConfigEditError, ConfigError) as exc:
        return report(prog, f"the base config with the budget and --set edits cannot run: {_as_set_edits(exc)}")
    storage_url = args.storage or default_storage_url(sweep)
    try:
        study = open_study(sweep, storage_url)
    except ConfigEditError as exc:
        return report(prog, exc)
    n_trials = args.n_trials if args.n_trials is not None else sweep.n_trials
    timeout = args.timeout if args.timeout is not None else sweep.timeout
    print(f"study {sweep.study_name} in {storage_url}: {len(study.trials)} trials so far; running "
          f"{n_trials if n_trials is not None else 'unlimited'} more", flush=True)
    ours: list[int] = []  # the trials this worker ran
    try:
        study.optimize(runner, n_trials=n_trials, timeout=timeout, catch=(Exception,), gc_after_trial=True,
                       callbacks=[lambda _study, trial: ours.append(trial.number)])
    except KeyboardInterrupt:  # Optuna has already marked the running trial FAIL
        print(f"interrupted; run the same command again to resume study {sweep.study_name}", file=sys.stderr)
        return INTERRUPTED
    _quiet_optuna()
    print(render_report(study, top=3, limit=20))
    print(f"\nreport: glnet sweep report --storage {storage_url} --study-name {sweep.study_name}")
    failed = [t for t in study.get_trials(deepcopy=False) if t.number in ours
              and t.state == optuna.trial.TrialState.FAIL]
    if ours and len(failed) == len(ours):
        first = failed[0].user_attrs.get("error", "no error recorded")
        return report(prog, f"all {len(ours)} trial(s) of this run failed; trial {failed[0].number}: {first}",
                      code=FAILED)
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """Print the study's tables and write its HTML page."""
    prog = "glnet sweep report"
    args = parse_args(build_report_parser(prog), argv)
    if isinstance(args, int):
        return args
    _quiet_optuna()
    from glnet_lightning.sweeps.optuna_study import load_study, storage_folder
    from glnet_lightning.sweeps.optuna_sweep import OptunaSweepError
    from glnet_lightning.analysis.study_report import render_report, write_html

    try:
        study = load_study(args.storage, args.study_name)
    except OptunaSweepError as exc:
        return report(prog, exc)
    print(render_report(study, top=args.top, limit=args.limit))
    if not args.no_html:
        folder = storage_folder(args.storage) or Path.cwd()
        html = write_html(study, Path(args.html) if args.html else folder / f"{study.study_name}_report.html")
        print(f"\nplots: {html}" if html else "\nplots: none yet (no complete trial)")
    return 0

