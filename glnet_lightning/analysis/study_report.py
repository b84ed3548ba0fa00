"""What an Optuna study holds, as text tables and one self-contained HTML page of Optuna's plots.

Why text first: a sweep is checked from a terminal on the training machine; the HTML (history or
Pareto front, slice and contour of the parameters) is written beside the study database for a
closer look in a browser, with plotly's JavaScript embedded so it opens offline. ``glnet sweep
optuna`` prints the tables when its trials are done, ``glnet sweep report`` prints them and writes
the page. (The ablation table, the other report of finished work, is
:mod:`glnet_lightning.sweeps.ablation_table`.)
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from glnet_lightning.bench.report import format_table as text_table

__all__ = ["best_trials", "objective_names", "render_report", "trial_rows", "write_html"]


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
