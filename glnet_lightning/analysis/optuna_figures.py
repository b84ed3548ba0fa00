"""An Optuna study's history, parameter importances and Pareto front as matplotlib figures.

Why optuna.visualization.matplotlib (and not the plotly plots of ``glnet sweep report``): notebook
outputs stay static images that render anywhere (GitHub, nbconvert, papermill reports). A plot
the study cannot make yet (e.g. importances of a single trial) is skipped with a reason.
"""
from __future__ import annotations

import warnings

import optuna
from matplotlib.figure import Figure

__all__ = ["study_figures", "trials_frame"]


def trials_frame(study: optuna.Study):
    """Optuna's trials DataFrame with the objective columns named after the objectives (e.g. val/acc1)."""
    from glnet_lightning.analysis.study_report import objective_names

    frame = study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs"))
    names = objective_names(study)
    columns = {"value": names[0]} if len(names) == 1 else {f"values_{i}": n for i, n in enumerate(names)}
    return frame.rename(columns=columns)


def study_figures(study: optuna.Study) -> tuple[dict[str, Figure], dict[str, str]]:
    """``({title: figure}, {title: why it was skipped})`` for history, importances and Pareto front.

    A multi-objective study's history and importances are of its first objective.
    """
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    from glnet_lightning.analysis.study_report import objective_names

    names = objective_names(study)
    multi = len(study.directions) > 1
    target = {"target": (lambda t: t.values[0]), "target_name": names[0]} if multi else {"target_name": names[0]}
    # Optuna's default importance evaluator ranks parameters by how they reach *low* target values
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    builders = {
        f"optimization history ({names[0]})": lambda: vis.plot_optimization_history(study, **target),
        f"parameter importances ({names[0]})": lambda: vis.plot_param_importances(
            study, target=lambda t: sign * t.values[0], target_name=names[0]),
    }
    if multi:
        builders["Pareto front"] = lambda: vis.plot_pareto_front(study, target_names=names)
    figures, skipped = {}, {}
    for title, build in builders.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = build()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[title] = str(exc) or type(exc).__name__
            continue
        figure = ax.figure
        plt.close(figure)  # optuna draws through pyplot: detach, so a notebook shows it once, where asked
        figure.set_size_inches(6.4, 4.4)
        figures[title] = figure
    return figures, skipped
