"""The ablation table re-derived: our params, GMACs, CPU throughput and top-1 beside the paper's.

Why re-derive rather than copy: params and MACs come from building each variant exactly as
``fit`` would (so a wrong override shows up as a wrong number), throughput from the benchmark's
own timing protocol, and top-1 from the variant's TensorBoard events, so the table is only ever
as good as the runs behind it.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from glnet_lightning.bench import count_macs, count_params
from glnet_lightning.bench.timing import Throughput, run_interleaved
from glnet_lightning.bench.workload import make_batch, make_step, prepare_model

from .sweep_file import Variant

__all__ = ["TableRow", "FORMATS", "format_table", "measure_row", "read_top1", "table_rows"]

#: Tags holding top-1, in order of preference (test beats val when a run has both).
ACC_TAGS = ("test/acc1", "val/acc1")


@dataclass
class TableRow:
    """One variant: ours (None when not measured / not run) and the paper's figures."""

    name: str
    label: str
    params_m: float
    gmacs: float
    throughput: float | None
    top1: float | None
    top1_source: str | None
    paper_params_m: float | None
    paper_gflops: float | None
    paper_throughput: float | None
    paper_top1: float | None


def read_top1(run_dir: Path) -> tuple[float | None, str | None]:
    """Last logged top-1 (in %) from the events below ``run_dir``: test/acc1, else val/acc1."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, tuple[float, float]] = {}  # tag -> (wall time, value) of the latest event
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in set(ACC_TAGS) & set(accumulator.Tags().get("scalars", [])):
            last = accumulator.Scalars(tag)[-1]
            if tag not in values or last.wall_time >= values[tag][0]:
                values[tag] = (last.wall_time, last.value)
    for tag in ACC_TAGS:
        if tag in values:
            value = values[tag][1]
            return (100.0 * value if value <= 1.0 else value), tag
    return None, None


def _throughput(model: torch.nn.Module, img_size: int, batch_size: int, repeats: int) -> float:
    """Median inference images/s on the CPU in fp32 (the benchmark's protocol, short)."""
    device = torch.device("cpu")
    model = prepare_model(model, "infer", device, channels_last=False)
    images, labels = make_batch(batch_size, img_size, 1000, device, channels_last=False)
    step = make_step(model, images, labels, "infer", "fp32", device)
    times = run_interleaved([step], warmup=2, repeats=repeats, device=device)[0]
    return Throughput.from_times(times, batch_size).median


def measure_row(variant: Variant, extra: Mapping[str, Any], runs_dir: Path | None, img_size: int = 224,
                throughput_batch: int | None = 8, num_classes: int = 1000, repeats: int = 5) -> TableRow:
    """Build the variant as ``fit`` would and measure it; ``throughput_batch=None`` skips timing."""
    model = variant.build_model(num_classes=num_classes, extra=extra).eval()
    macs = count_macs(model, (3, img_size, img_size))
    speed = _throughput(model, img_size, throughput_batch, repeats) if throughput_batch else None
    top1, source = read_top1(runs_dir / variant.name) if runs_dir else (None, None)
    paper = variant.paper
    return TableRow(name=variant.name, label=variant.label, params_m=count_params(model) / 1e6,
                    gmacs=macs / 1e9, throughput=speed, top1=top1, top1_source=source,
                    paper_params_m=paper.params_m, paper_gflops=paper.gflops,
                    paper_throughput=paper.throughput, paper_top1=paper.top1)


def table_rows(variants: Sequence[Variant], extra: Mapping[str, Any], runs_dir: Path | None,
               **measure: Any) -> list[TableRow]:
    """One measured row per variant, in sweep order (``measure``: :func:`measure_row` options)."""
    return [measure_row(v, extra, runs_dir, **measure) for v in variants]


# ---------------------------------------------------------------------------------------- formats
_COLUMNS = (  # header, our field, paper field, decimals
    ("params (M)", "params_m", "paper_params_m", 2),
    ("GMACs", "gmacs", "paper_gflops", 2),
    ("CPU im/s", "throughput", None, 1),
    ("top-1 (%)", "top1", "paper_top1", 2),
    ("paper im/s (GPU)", None, "paper_throughput", 1),
)


def _cell(value: float | None, decimals: int) -> str:
    """Fixed decimals, but three significant digits for small values (proxy models' GMACs)."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3g}" if 0 < abs(value) < 1 else f"{value:.{decimals}f}"


def _markdown(rows: Sequence[TableRow]) -> str:
    """Ours / paper side by side in one cell each, so the table stays as narrow as the paper's."""
    header = ["variant"] + [f"{title} ours / paper" if ours and paper else title
                            for title, ours, paper, _ in _COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row.name}"]
        for _, ours, paper, decimals in _COLUMNS:
            parts = [_cell(getattr(row, f), decimals) for f in (ours, paper) if f]
            cells.append(" / ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv(rows: Sequence[TableRow]) -> str:
    buffer = io.StringIO()
    fields = list(asdict(rows[0])) if rows else [f for f in TableRow.__dataclass_fields__]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return buffer.getvalue().rstrip("\n")


def _json(rows: Sequence[TableRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


FORMATS = {"markdown": _markdown, "csv": _csv, "json": _json}


def format_table(rows: Sequence[TableRow], fmt: str = "markdown") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[fmt](rows)
