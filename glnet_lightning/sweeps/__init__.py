"""Sweeps: sweep files (base config + per-variant overrides), the grid runner and the ablation table.

``load_sweep`` is the entry point; the commands live in :mod:`glnet_lightning.cli.sweep`. Config
editing (``--set``) is :mod:`glnet_lightning.config_edit`, shared with every other command.
"""
from .grid import GridRunner
from .sweep_file import PaperFigures, Sweep, SweepError, Variant, load_sweep

__all__ = ["GridRunner", "PaperFigures", "Sweep", "SweepError", "Variant", "load_sweep"]
from .optuna_sweep import OptunaSweep, OptunaSweepError, load_optuna_sweep  # noqa: E402,F401 (glnet sweep optuna)
