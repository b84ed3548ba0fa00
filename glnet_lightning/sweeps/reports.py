"""Reports of finished work: the ablation table and what an Optuna study holds.

The ablation table re-derived: our params, GMACs, CPU throughput and top-1 beside the paper's.

Why re-derive rather than copy: params and MACs come from building each variant exactly as
``fit`` would (so a wrong override shows up as a wrong number), throughput from the project's cost
protocol (``bench.cost``), and top-1 from the variant's TensorBoard events, so the table is only
ever as good as the runs behind it. :func:`build_table` is the one place the table is assembled:
``glnet ablation table`` feeds it from freshly built variants and formats it (:func:`format_table`),
the analysis notebook feeds it from its runs and checkpoints and gets a DataFrame
(:func:`ablation_frame`) to plot.

What a study holds, as text tables and one self-contained HTML page of Optuna's plots.

Why text first: a sweep is checked from a terminal on the training machine; the HTML (history or
Pareto front, slice and contour of the parameters) is written beside the study database for a
closer look in a browser, with plotly's JavaScript embedded so it opens offline.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from glnet_lightning.analysis.tb_runs import read_top1
from glnet_lightning.bench.cost import DEFAULT_BATCH_SIZE, DEFAULT_REPEATS, measure_cost
from glnet_lightning.bench.report import format_table as text_table

from .sweep_file import Variant, load_sweep

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TableRow", "FORMATS", "ablation_frame", "build_table", "format_table", "table_frame", "table_rows",
           "trial_rows", "render_report", "write_html", "best_trials"]


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


def table_rows(variants: Sequence[Variant], extra: Mapping[str, Any], runs_dir: Path | None, img_size: int = 224,
               throughput_batch: int | None = DEFAULT_BATCH_SIZE, num_classes: int = 1000,
               repeats: int = DEFAULT_REPEATS) -> list[TableRow]:
    """Build each variant as ``fit`` would, measure it (``bench.cost``; ``throughput_batch=None`` skips
    timing), read its top-1 from ``runs_dir/NAME`` and assemble the table."""
    ours = {}
    for variant in variants:
        model = variant.build_model(num_classes=num_classes, extra=extra)
        cost = measure_cost(model, img_size, throughput=bool(throughput_batch),
                            batch_size=throughput_batch or DEFAULT_BATCH_SIZE, repeats=repeats)
        top1, source = read_top1(runs_dir / variant.name) if runs_dir else (None, None)
        ours[variant.name] = {**cost.figures(), "top1": top1, "top1_source": source}
    return build_table(variants, ours)


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


_ATTRS = ("params_m", "gmacs", "throughput")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def objective_names(study: optuna.Study) -> list[str]:
    names = study.user_attrs.get("objectives")
    if names and len(names) == len(study.directions):
        return list(names)
    return [f"value{i}" for i in range(len(study.directions))] if len(study.directions) > 1 else ["value"]


def _param_names(trials: list[FrozenTrial]) -> list[str]:
    names: list[str] = []
    for trial in trials:
        names += [n for n in trial.params if n not in names]
    return names


def trial_rows(study: optuna.Study, trials: list[FrozenTrial]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: number, state, objective value(s), parameters, cost figures, run dir."""
    objectives = objective_names(study)
    params = _param_names(study.get_trials(deepcopy=False))
    headers = ["trial", "state", *objectives, *params, "params(M)", "GMACs", "img/s", "run dir / note"]
    rows = []
    for t in trials:
        values = t.values or [None] * len(objectives)
        if t.user_attrs.get("error"):  # the first line of the error, cut short; the full text is in the study
            note = t.user_attrs["error"].splitlines()[0][:100]
        elif "duplicate_of" in t.user_attrs:
            note = f"same as trial {t.user_attrs['duplicate_of']}"
        else:
            note = t.user_attrs.get("run_dir")
        rows.append([str(t.number), t.state.name, *map(_fmt, values), *(_fmt(t.params.get(p)) for p in params),
                     *(_fmt(t.user_attrs.get(a)) for a in _ATTRS), _fmt(note)])
    return headers, rows


def best_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The Pareto front (multi-objective) or the ``top`` best complete trials (single objective)."""
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.value, reverse=reverse)[:top]


def render_report(study: optuna.Study, top: int = 5, limit: int = 50) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    objectives = objective_names(study)
    directions = [d.name.lower() for d in study.directions]
    lines = [
        f"study {study.study_name}: {len(trials)} trials ("
        + ", ".join(f"{counts[s.name]} {s.name.lower()}" for s in TrialState if counts[s.name]) + ")",
        "objectives: " + ", ".join(f"{n} ({d})" for n, d in zip(objectives, directions)),
        "",
    ]
    best = best_trials(study, top)
    title = "Pareto front" if len(directions) > 1 else f"best {min(top, len(best))} trial(s)"
    lines += [f"{title}:", text_table(*trial_rows(study, best)) if best else "(no complete trial yet)", ""]
    shown = trials[-limit:] if limit else trials
    lines += [f"all trials{'' if len(shown) == len(trials) else f' (last {len(shown)})'}:",
              text_table(*trial_rows(study, shown))]
    return "\n".join(lines)


def _figures(study: optuna.Study) -> list:
    from optuna import visualization as vis

    names = objective_names(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    params = _param_names(complete)
    if len(study.directions) > 1:
        builders = [lambda: vis.plot_pareto_front(study, target_names=names)]
        target = {"target": lambda t: t.values[0], "target_name": names[0]}
    else:
        builders = [lambda: vis.plot_optimization_history(study, target_name=names[0])]
        target = {"target_name": names[0]}
    builders.append(lambda: vis.plot_slice(study, **target))
    if len(params) >= 2:
        builders.append(lambda: vis.plot_contour(study, params=params[:2], **target))
    figures = []
    for build in builders:
        try:
            figures.append(build())
        except (ValueError, TypeError, RuntimeError):  # e.g. too few trials for a contour
            continue
    return figures


def write_html(study: optuna.Study, path: Path) -> Path | None:
    """One HTML page with the study's plots (plotly embedded once); None when there is nothing to plot."""
    figures = _figures(study)
    if not figures:
        return None
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures)]
    body = "\n".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{study.study_name}</title></head>"
                    f"<body><h1>Optuna study {study.study_name}</h1>\n{body}\n</body></html>\n")
    return path
