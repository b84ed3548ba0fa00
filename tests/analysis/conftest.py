"""Fixtures for the analysis tests: tiny Fashion-MNIST runs made once per session (an early and a
late checkpoint of one GLMix run, and a local-only run), a small Optuna study, and a headless
notebook runner that injects parameters papermill-style (a cell after the "parameters" cell)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import nbformat
import pytest
from nbclient import NotebookClient

from testkit import tiny_args

matplotlib.use("Agg")  # the library draws on Figure objects; nothing here may need a display

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


@dataclass(frozen=True)
class TinyRuns:
    runs_dir: Path  # holds the runs "stl" (2 epochs) and "local_only" (1 epoch), named like sweep variants
    early: Path  # stl's checkpoint after epoch 1
    late: Path  # stl's checkpoint after epoch 2


def _fit(args: list[str]) -> None:
    from glnet_lightning.cli.main import main

    assert main(["fit", *args]) == 0


@pytest.fixture(scope="session")
def tiny_runs(fashion_mnist, tmp_path_factory) -> TinyRuns:
    root = tmp_path_factory.mktemp("analysis_runs")
    runs_dir = root / "runs"
    stl = runs_dir / "stl"
    _fit(tiny_args(stl, train_batches=2, val_batches=1))
    early = root / "early.ckpt"
    shutil.copy(stl / "checkpoints" / "last.ckpt", early)
    _fit([*tiny_args(stl, train_batches=2, val_batches=1, epochs=2), "--ckpt_path", "last"])
    _fit(tiny_args(runs_dir / "local_only", train_batches=2, val_batches=1, global_branch="none", num_slots=None))
    return TinyRuns(runs_dir, early, stl / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> tuple[str, str]:
    """A finished two-objective study (val/acc1, throughput) over slots and kernel size: (storage URL, name)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path_factory.mktemp('study') / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="tiny", directions=["maximize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("objectives", ["val/acc1", "throughput"])
    for _ in range(8):
        trial = study.ask()
        slots = trial.suggest_categorical("num_slots", [4, 9, 16])
        kernel = trial.suggest_categorical("kernel_size", [3, 5, 7])
        study.tell(trial, [0.5 + 0.01 * slots + 0.002 * kernel, 1000.0 / slots - kernel])
    return url, "tiny"


def image_outputs(notebook) -> list[str]:
    """The PNG outputs of a notebook (base64 strings), in order."""
    return [out["data"]["image/png"] for cell in notebook.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


def output_text(notebook) -> str:
    """All text a notebook showed: markdown, plain-text results and printed streams."""
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = out.get("data", {})
            parts.append(data.get("text/markdown") or data.get("text/plain") or out.get("text", ""))
    return "\n".join(parts)


def run_notebook(name: str, parameters: dict, cwd: Path, timeout: int = 180):
    """Execute ``notebooks/<name>`` headless with ``parameters`` injected after its "parameters" cell."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, injected)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


@pytest.fixture
def notebooks(monkeypatch) -> SimpleNamespace:
    """``run`` (execute a notebook with parameters), ``images`` (its PNG outputs), ``text`` (what it showed)."""
    # idle OpenMP threads of the kernel sleep instead of spinning on the 2 shared cores
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    return SimpleNamespace(run=run_notebook, images=image_outputs, text=output_text)
