"""Both notebooks run headless on runs and checkpoints made here, and show images; the committed
notebooks carry no outputs and keep their papermill "parameters" cell."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", ["analyze_runs.ipynb", "slot_visualization.ipynb"])
def test_committed_notebooks_have_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.slow
def test_analyze_runs_notebook(tiny_runs, tiny_study, notebooks, tmp_path):
    url, study_name = tiny_study
    parameters = dict(runs_dir=str(tiny_runs.runs_dir), optuna_storage=url, optuna_study=study_name)
    notebook = notebooks.run("analyze_runs.ipynb", parameters, cwd=tmp_path)
    text = notebooks.text(notebook)
    assert "**2 run(s)**" in text and "study **tiny**: 8 trial(s)" in text and "not drawn" not in text
    assert "paper_top1" in text and "local branch only" in text  # the ablation table
    # learning curves, our scatter, the paper's scatter, optuna history / importances / Pareto front
    assert len(notebooks.images(notebook)) == 6


@pytest.mark.slow
def test_slot_visualization_notebook(tiny_runs, notebooks, tmp_path):
    parameters = dict(checkpoint=str(tiny_runs.late), early_checkpoint=str(tiny_runs.early),
                      images=["skimage:chelsea", "skimage:coffee"], image_size=48)
    notebook = notebooks.run("slot_visualization.ipynb", parameters, cwd=tmp_path)
    # per image: the slot figure and the early-vs-late comparison
    assert len(notebooks.images(notebook)) == 4
    assert "block 10 -> 4 (upper of the model's 4 GLMix blocks)" in notebooks.text(notebook)
