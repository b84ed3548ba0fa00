"""Entry points: ``glnet <command> ...`` and ``lightning <fit|validate|test|predict> ...``.

Why a hand-written dispatcher in front of LightningCLI: ``glnet`` also runs commands that are not
Lightning runs (``bench``, ``sweep``, ``ablation``, ``export``, ``viz``, ``data``). Each command is
one row of :data:`COMMANDS`: a help line and a function taking the remaining arguments and
returning an exit code. Commands import their implementation lazily, so ``glnet --help`` and
``glnet bench`` do not pay for Lightning's import.
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from glnet_lightning.errors import did_you_mean

from .errors import USAGE_ERROR, exit_code, report

__all__ = ["main", "lightning_main", "COMMANDS", "Command"]

@dataclass(frozen=True)
class Command:
    help: str
    run: Callable[[list[str]], int]  # receives the arguments after the command name


def run_lightning(subcommand: str | None, args: list[str], prog: str) -> int:
    """Run :class:`GLNetCLI` (``subcommand`` None: let it parse the subcommand from ``args``)."""
    from .lightning_cli import ConfigError, GLNetCLI

    argv = ([subcommand] if subcommand else []) + list(args)
    try:
        with warnings.catch_warnings():
            # LightningCLI warns whenever args are given while sys.argv has some (always true here).
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            GLNetCLI(args=argv, parser_kwargs={"prog": prog})
    except ConfigError as exc:
        return report(prog, exc)
    except SystemExit as exc:  # --help, --print_config, a usage error
        return exit_code(exc)
    return 0


def _training(name: str) -> Callable[[list[str]], int]:
    return lambda args: run_lightning(name, args, prog="glnet")


def _lazy(module: str, function: str) -> Callable[[list[str]], int]:
    """A command implemented by ``module.function(argv)``, imported only when it runs."""

    def run(args: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(args)

    return run


def _group(name: str, subcommands: dict[str, Callable[[list[str]], int]]) -> Callable[[list[str]], int]:
    """A command with sub-commands, e.g. ``glnet sweep grid ...``."""

    def run(args: list[str]) -> int:
        if not args or args[0] in ("-h", "--help"):
            print(f"usage: glnet {name} {{{','.join(subcommands)}}} ...  (glnet {name} <sub-command> --help)")
            return 0 if args else USAGE_ERROR
        if args[0] not in subcommands:
            return report(f"glnet {name}", f"unknown sub-command {args[0]!r}{did_you_mean(args[0], subcommands)}; "
                                           f"choose from {', '.join(subcommands)}")
        return subcommands[args[0]](args[1:])

    return run


COMMANDS: dict[str, Command] = {
    "fit": Command("train a model (LightningCLI; --config FILE, --ckpt_path last to resume)", _training("fit")),
    "validate": Command("evaluate on the validation set (LightningCLI)", _training("validate")),
    "test": Command("evaluate on the test set (LightningCLI)", _training("test")),
    "predict": Command("write class probabilities to <default_root_dir>/predictions.pt (LightningCLI)",
                       _training("predict")),
    "bench": Command("throughput, memory and FLOPs of models (see glnet bench --help)", _lazy("glnet_lightning.cli.bench", "main")),
    "sweep": Command("ablation grid runner and Optuna search: sweep grid|optuna|report", _group("sweep", {
        "grid": _lazy("glnet_lightning.cli.sweep", "grid_main"),
        "optuna": _lazy("glnet_lightning.cli.sweep", "optuna_main"),
        "report": _lazy("glnet_lightning.cli.sweep", "report_main"),
    })),
    "ablation": Command("the paper's ablation table beside measured figures: ablation table SWEEP_FILE",
                        _group("ablation", {"table": _lazy("glnet_lightning.cli.sweep", "ablation_main")})),
    "export": Command("a checkpoint as ONNX or torch.export (.pt2), checked against eager (see glnet export --help)",
                      _lazy("glnet_lightning.cli.export", "main")),
    "viz": Command("slot-assignment figures of a checkpoint as PNG files (see glnet viz --help)",
                   _lazy("glnet_lightning.cli.viz", "main")),
    "data": Command("data set tools: data prepare (write litdata shards from an ImageNet-style folder)",
                    _group("data", {"prepare": _lazy("glnet_lightning.cli.data", "main")})),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: glnet <command> [options]",
        "",
        "GLNet / GLMix vision backbones: training, evaluation and tools.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()),
        "",
        "Run 'glnet <command> --help' for the options of a command, e.g.",
        "  glnet fit --config configs/fashion_mnist.yaml",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``glnet`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else USAGE_ERROR
    if args[0] == "--version":
        from glnet_lightning import __version__

        print(f"glnet-lightning {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        return report("glnet", f"unknown command {args[0]!r}{did_you_mean(args[0], COMMANDS)}; "
                               f"choose from {', '.join(COMMANDS)}")
    return command.run(args[1:])


def lightning_main(argv: Sequence[str] | None = None) -> int:
    """``lightning`` console script: the same CLI as ``glnet fit|validate|test|predict``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_lightning(None, args, prog="lightning")


if __name__ == "__main__":
    sys.exit(main())
