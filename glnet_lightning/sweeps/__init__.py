"""Sweeps: sweep files (base config + per-variant overrides), the grid runner and the ablation table.

``load_sweep`` is the entry point; the CLIs live in :mod:`glnet_lightning.sweeps.cli`.
"""
from .grid import GridRunner
from .sweep_file import PaperFigures, Sweep, SweepError, Variant, apply_overrides, load_sweep, parse_assignment

__all__ = ["GridRunner", "PaperFigures", "Sweep", "SweepError", "Variant", "apply_overrides", "load_sweep",
           "parse_assignment"]
from .optuna_sweep import OptunaSweep, OptunaSweepError, load_optuna_sweep  # noqa: E402,F401 (glnet sweep optuna)
