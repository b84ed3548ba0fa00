"""The ablation table re-derived: our params, GMACs, CPU throughput and top-1 beside the paper's.

Why re-derive rather than copy: params and MACs come from building each variant exactly as
``fit`` would (so a wrong override shows up as a wrong number), throughput from the project's cost
protocol (``bench.cost``), and top-1 from the variant's TensorBoard events, so the table is only
ever as good as the runs behind it -- and only of runs of the same sweep (:func:`check_runs`).
:func:`build_table` is the one place the table is assembled: ``glnet ablation table`` feeds it from
freshly built variants and formats it (:func:`format_table`), the analysis notebook feeds it from
its runs and checkpoints and gets a DataFrame (:func:`ablation_frame`) to plot. (The other report of
finished work, an Optuna study's, is :mod:`glnet_lightning.analysis.study_report`.)
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from glnet_lightning.analysis.tb_runs import read_top1
from glnet_lightning.bench.cost import DEFAULT_BATCH_SIZE, DEFAULT_REPEATS, measure_cost
from glnet_lightning.config_edit import ConfigEditError
from glnet_lightning.models.backbone import resolve_backbone

from .sweep_file import SweepError, Variant, load_sweep

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FORMATS", "RunsMismatchError", "TableRow", "ablation_frame", "build_table", "check_runs", "format_table",
           "table_frame", "table_rows"]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


#: Our figures in a row (each has a paper's counterpart; GMACs sit beside the paper's "GFLOPs", which
#: count multiply-accumulates too).
_OURS = ("params_m", "gmacs", "throughput", "top1")


@dataclass
class TableRow:
    """One variant: ours (None when not measured / not run) and the paper's figures."""

    name: str
    label: str
    params_m: float | None
    gmacs: float | None
    throughput: float | None
    top1: float | None
    top1_source: str | None
    paper_params_m: float | None
    paper_gflops: float | None
    paper_throughput: float | None
    paper_top1: float | None


def _number(value: Any) -> float | None:
    """Missing figures are None whether they came as None or as a DataFrame's NaN."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def build_table(variants: Sequence[Variant], ours: Mapping[str, Mapping[str, Any]]) -> list[TableRow]:
    """Every variant in sweep order, our figures (``ours[variant name]``: params_m, gmacs, throughput,
    top1, top1_source; any may be missing) beside the paper's. Variants without figures keep their
    paper row with empty "ours" cells, so the table always has the paper's shape."""
    rows = []
    for variant in variants:
        mine = ours.get(variant.name, {})
        source = mine.get("top1_source")
        paper = variant.paper
        rows.append(TableRow(name=variant.name, label=variant.label, **{f: _number(mine.get(f)) for f in _OURS},
                             top1_source=source if isinstance(source, str) else None,
                             paper_params_m=paper.params_m, paper_gflops=paper.gflops,
                             paper_throughput=paper.throughput, paper_top1=paper.top1))
    return rows


def table_rows(variants: Sequence[Variant], extra: Mapping[str, Any], runs_dir: Path | None,
               img_size: int | None = 224, throughput_batch: int | None = DEFAULT_BATCH_SIZE, num_classes: int = 1000,
               repeats: int = DEFAULT_REPEATS, progress: Callable[[str], None] | None = _to_stderr) -> list[TableRow]:
    """Build each variant as ``fit`` would, measure it (``bench.cost``; ``throughput_batch=None`` skips
    timing; ``img_size=None``: each variant's own ``data.image_size``, else 224), read its top-1 from
    ``runs_dir/NAME`` and assemble the table.

    The runs are checked first (:func:`check_runs`): runs another sweep file trained stop the table
    before anything is measured. Timing takes seconds per full-size model on a CPU, so ``progress``
    (stderr by default; None: silent) gets one line per model timed.
    """
    if runs_dir is not None:
        check_runs(variants, extra, runs_dir)
    timed = bool(throughput_batch)
    batch = throughput_batch or DEFAULT_BATCH_SIZE
    if timed and progress is not None:
        progress(f"[ablation table] timing CPU inference of {len(variants)} model(s), batch {batch} "
                 "(--no-throughput skips it)")
    ours = {}
    for index, variant in enumerate(variants, 1):
        config = variant.config(extra)
        size = img_size if img_size is not None else (_trained(config)["image size"] or 224)
        model = variant.build_model(num_classes=num_classes, extra=extra)
        started = time.perf_counter()
        cost = measure_cost(model, size, throughput=timed, batch_size=batch, repeats=repeats)
        if timed and progress is not None:
            progress(f"[ablation table] {index}/{len(variants)} {variant.name}: {cost.throughput.median:.1f} im/s "
                     f"at {size} px ({time.perf_counter() - started:.0f} s)")
        top1, source = read_top1(runs_dir / variant.name) if runs_dir else (None, None)
        ours[variant.name] = {**cost.figures(), "top1": top1, "top1_source": source}
    return build_table(variants, ours)


# ------------------------------------------------------------------------- runs of the right sweep
#: What a run directory records of its config: the grid's resolved config first, then Lightning's.
RUN_CONFIG_FILES = ("sweep_config.yaml", "config.yaml")


class RunsMismatchError(SweepError):
    """The runs directory holds runs of another sweep file (or of other ``--set`` edits) than the table's."""


def _trained(config: Mapping[str, Any]) -> dict[str, Any]:
    """What of a config decides what a row's figures mean: the data module, its image size, the network
    (its full description, whichever way the config spells it; None when it cannot be read)."""
    data = config.get("data")
    data = data if isinstance(data, Mapping) else {"class_path": data}
    init_args = data.get("init_args") if isinstance(data.get("init_args"), Mapping) else {}
    backbone = (config.get("model") or {}).get("backbone") if isinstance(config.get("model"), Mapping) else None
    try:
        network = resolve_backbone(backbone) if backbone is not None else None
    except (ValueError, TypeError):
        network = None
    class_path = data.get("class_path")
    return {"data": str(class_path).rpartition(".")[2] if class_path else None,
            "image size": init_args.get("image_size"), "network": network}


def _differences(run: Mapping[str, Any], variant: Mapping[str, Any]) -> tuple[str, str] | None:
    """What the run trained and what the variant trains, where they differ (``("FashionMNISTDataModule at
    32 px", "ImageNetDataModule at 224 px")``), or None when nothing both sides record differs. Data
    first: when it differs, the network usually does too, and the data says more."""
    def differ(key: str, value: Callable[[Any], Any] = lambda v: v) -> bool:
        return run[key] is not None and variant[key] is not None and value(run[key]) != value(variant[key])

    if differ("data") or differ("image size"):
        def data(side: Mapping[str, Any]) -> str:
            size = side["image size"]
            return f"{side['data']}{f' at {size} px' if size is not None else ''}"
        return data(run), data(variant)
    if differ("network", lambda backbone: backbone.describe()):
        return f"the network {run['network'].as_spec()}", f"the network {variant['network'].as_spec()}"
    return None


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    for name in RUN_CONFIG_FILES:
        try:
            config = yaml.safe_load((run_dir / name).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(config, dict):
            return config
    return None


def _sweep_of(run: Mapping[str, Any], name: str, extra: Mapping[str, Any], sweep_path: Path) -> Path | None:
    """The other sweep file beside ``sweep_path`` whose variant ``name`` trains what the run trained."""
    for candidate in sorted(sweep_path.parent.glob("*.yaml")):
        if candidate.resolve() == sweep_path.resolve():
            continue
        try:
            variant = {v.name: v for v in load_sweep(candidate).variants}.get(name)
            if variant is not None and _differences(run, _trained(variant.config(extra))) is None:
                return candidate
        except (ConfigEditError, OSError):  # not a grid sweep file (an Optuna one), or a broken one
            continue
    return None


def check_runs(variants: Sequence[Variant], extra: Mapping[str, Any], runs_dir: Path) -> None:
    """Raise :class:`RunsMismatchError` (one line, naming the sweep file the runs belong to when one beside
    this one fits) when a run below ``runs_dir`` trained other data or another network than its variant.

    Why: the table puts a run's top-1 beside the variant's params, GMACs and the paper's row; runs of
    the Fashion-MNIST proxy read with the ImageNet sweep file would print 224 px figures of full-size
    models beside Fashion-MNIST accuracy, a table that looks right and is not. Runs without a recorded
    config are not checked.
    """
    mismatched = []
    for variant in variants:
        run = _run_config(runs_dir / variant.name)
        if run is None:
            continue
        trained = _trained(run)
        difference = _differences(trained, _trained(variant.config(extra)))
        if difference is not None:
            mismatched.append((variant, trained, difference))
    if not mismatched:
        return
    variant, trained, (theirs, ours) = mismatched[0]
    sweep_path = variant.sweep.path
    more = f" (and {len(mismatched) - 1} more run(s) there)" if len(mismatched) > 1 else ""
    owner = _sweep_of(trained, variant.name, extra, sweep_path)
    edits = " with the same --set edits" if extra else ""
    remedy = (f"these are runs of {owner}: glnet ablation table {owner} --runs {runs_dir}{edits}" if owner else
              "give the table the sweep file and the --set edits the grid ran with")
    raise RunsMismatchError(f"{runs_dir / variant.name}{more} trained {theirs}, but {sweep_path}'s variant "
                            f"{variant.name} trains {ours}; {remedy}")


def table_frame(rows: Sequence[TableRow]) -> pd.DataFrame:
    """The rows as a DataFrame indexed by variant name, missing figures as NaN (for plotting)."""
    import pandas as pd

    names = [f.name for f in fields(TableRow)]
    frame = pd.DataFrame([asdict(r) for r in rows], columns=names).rename(columns={"name": "variant"})
    numeric = [n for n in names if n not in ("name", "label", "top1_source")]
    return frame.set_index("variant").astype({n: float for n in numeric})


def ablation_frame(sweep_file: str | Path, runs: pd.DataFrame) -> pd.DataFrame:
    """The table of ``sweep_file`` with our figures from ``runs`` (indexed by run name, as the variants
    are named; columns top1 / top1_tag as :func:`~glnet_lightning.analysis.tb_runs.summarise_runs`
    gives them, params_m / gmacs / throughput as ``analysis.run_costs.measure_runs``)."""
    ours = runs.rename(columns={"top1_tag": "top1_source"}).to_dict("index")
    return table_frame(build_table(load_sweep(sweep_file).variants, ours))


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
    writer = csv.DictWriter(buffer, fieldnames=[f.name for f in fields(TableRow)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return buffer.getvalue().rstrip("\n")


def _json(rows: Sequence[TableRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


FORMATS = {"markdown": _markdown, "csv": _csv, "json": _json}


def format_table(rows: Sequence[TableRow], fmt: str = "markdown") -> str:
    """The CLI's rendering of :func:`build_table`'s rows (``fmt``: one of :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[fmt](rows)
