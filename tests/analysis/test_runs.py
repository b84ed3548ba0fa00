"""Reading runs: TensorBoard scalars into pandas, summaries, Pareto fronts, the ablation join, figures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torch.utils.tensorboard import SummaryWriter

from glnet_lightning.analysis.optuna_figures import study_figures, trials_frame
from glnet_lightning.analysis.pareto import pareto_mask
from glnet_lightning.analysis.run_figures import learning_curves, pareto_scatter
from glnet_lightning.analysis.tb_runs import find_runs, read_scalars, summarise_runs
from glnet_lightning.sweeps.ablation_table import ablation_frame

REPO_SWEEP = Path(__file__).resolve().parents[2] / "sweeps" / "ablation_fashion_mnist.yaml"


def write_events(folder, scalars: dict[str, list[tuple[int, float]]]) -> None:
    writer = SummaryWriter(str(folder))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


@pytest.fixture
def runs_dir(tmp_path):
    write_events(tmp_path / "a", {"val/acc1": [(1, 0.5), (3, 0.6)], "train/loss": [(0, 2.0), (1, 1.5)]})
    write_events(tmp_path / "b" / "version_0", {"val/acc1": [(1, 0.7)], "test/acc1": [(1, 0.65)]})
    write_events(tmp_path / "b" / "version_0", {"val/acc1": [(1, 0.75)]})  # a resumed run re-logs step 1
    (tmp_path / "not_a_run").mkdir()
    return tmp_path


def test_scalars_of_all_runs_in_one_frame(runs_dir):
    assert sorted(find_runs(runs_dir)) == ["a", "b/version_0"]
    frame = read_scalars(runs_dir)
    assert list(frame.columns) == ["run", "tag", "step", "wall_time", "value"]
    rows = {(r.run, r.tag, r.step): r.value for r in frame.itertuples()}
    assert rows == pytest.approx({("a", "train/loss", 0): 2.0, ("a", "train/loss", 1): 1.5, ("a", "val/acc1", 1): 0.5,
                                  ("a", "val/acc1", 3): 0.6, ("b/version_0", "test/acc1", 1): 0.65,
                                  ("b/version_0", "val/acc1", 1): 0.75})
    summary = summarise_runs(frame)
    assert summary.loc["a", "top1"] == pytest.approx(60.0) and summary.loc["a", "top1_tag"] == "val/acc1"
    assert summary.loc["b/version_0", "top1"] == pytest.approx(65.0)  # test beats val
    assert summary.loc["b/version_0", "top1_tag"] == "test/acc1" and summary.loc["a", "steps"] == 3
    with pytest.raises(FileNotFoundError):
        find_runs(runs_dir / "missing")


def test_pareto_mask_matches_the_definition():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=(40, 3)).astype(float)
    maximize = [True, False, True]
    mask = pareto_mask(values, maximize)
    signed = values * np.where(maximize, 1, -1)
    for i, row in enumerate(signed):
        dominated = any((other >= row).all() and (other > row).any() for other in signed)
        assert mask[i] == (not dominated)
    assert pareto_mask(np.array([[1.0, np.nan], [0.0, 0.0]]), [True, True]).tolist() == [False, True]


def test_ablation_frame_joins_runs_to_the_papers_rows():
    runs = pd.DataFrame({"top1": [81.0, 70.0], "throughput": [900.0, 1200.0]}, index=["stl", "not_a_variant"])
    table = ablation_frame(REPO_SWEEP, runs)
    assert len(table) == 15 and table.index[0] == "stl"
    assert table.loc["stl", "top1"] == 81.0 and table.loc["stl", "paper_top1"] == 82.5
    assert table.loc["slots_81", "paper_throughput"] == 790.0 and np.isnan(table.loc["slots_81", "top1"])
    assert np.isnan(table.loc["kmeans_hash", "paper_top1"])  # N/A (unstable) in the paper


def test_figures_draw_what_was_asked(runs_dir):
    curves = learning_curves(read_scalars(runs_dir), tags=("val/acc1", "train/loss", "never/logged"))
    assert [ax.get_title() for ax in curves.axes] == ["val/acc1", "train/loss"]
    assert len(curves.axes[0].lines) == 2
    with pytest.raises(ValueError, match="none of the tags"):
        learning_curves(read_scalars(runs_dir), tags=("never/logged",))
    frame = pd.DataFrame({"speed": [1.0, 2.0, 3.0, 1.5], "acc": [3.0, 2.0, 1.0, 1.0]}, index=list("abcd"))
    scatter = pareto_scatter(frame, "speed", "acc")
    front = scatter.axes[0].lines[0]
    assert front.get_xdata().tolist() == [1.0, 2.0, 3.0]  # d is dominated by b


def test_study_figures_and_table(tiny_study):
    from glnet_lightning.sweeps.optuna_study import load_study

    study = load_study(*tiny_study)
    figures, skipped = study_figures(study)
    assert not skipped
    assert list(figures) == ["optimization history (val/acc1)", "parameter importances (val/acc1)", "Pareto front"]
    frame = trials_frame(study)
    assert {"val/acc1", "throughput", "params_num_slots"} <= set(frame.columns) and len(frame) == 8
