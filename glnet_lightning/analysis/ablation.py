"""The paper's ablation table (docs/design.md, section 3) beside the runs of a grid sweep, as a DataFrame.

Why from the sweep file: it already holds the paper's figures per variant, and ``glnet sweep grid``
names each run directory after its variant, so runs and paper rows join on the name. Variants
without a run keep their paper row with empty "ours" cells, so the table always has the paper's
shape.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["ablation_frame", "PAPER_COLUMNS"]

#: our column -> the paper's column beside it
PAPER_COLUMNS = {"top1": "paper_top1", "params_m": "paper_params_m", "gmacs": "paper_gflops",
                 "throughput": "paper_throughput"}


def ablation_frame(sweep_file: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows = the sweep's variants in file order; ours (top1 %, params_m, gmacs, CPU throughput when
    ``runs`` has them, indexed by run name) next to the paper's figures."""
    from glnet_lightning.sweeps.sweep_file import load_sweep

    sweep = load_sweep(sweep_file)
    rows = []
    for variant in sweep.variants:
        ours = runs.loc[variant.name] if variant.name in runs.index else pd.Series(dtype=float)
        row = {"variant": variant.name, "label": variant.label}
        for column, paper_column in PAPER_COLUMNS.items():
            row[column] = ours.get(column, float("nan"))
            row[paper_column] = getattr(variant.paper, paper_column.removeprefix("paper_"))
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("variant")
    return frame.astype({c: float for c in (*PAPER_COLUMNS, *PAPER_COLUMNS.values())})
