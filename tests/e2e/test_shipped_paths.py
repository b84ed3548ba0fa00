"""Every shipped config and sweep file, run end to end the way its own comment and the README say,
on a small ImageNet-layout tree of real JPEGs, changing only hardware, size and step counts.

``RUN_BY`` names the test that runs each file; :func:`test_every_shipped_file_is_run_by_a_test`
fails when a file appears in configs/ or sweeps/ that no end-to-end test runs."""
from __future__ import annotations

import ast
import csv
import io
import math
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glnet_lightning.models.backbone import resolve_backbone
from glnet_lightning.models.glnet import glnet_stl

REPO = Path(__file__).resolve().parents[2]
IMAGENET_CONFIGS = ["imagenet_glnet_stl.yaml", "imagenet_glnet_stl_1gpu.yaml", "imagenet_glnet_4g.yaml",
                    "imagenet_glnet_9g.yaml", "imagenet_glnet_16g.yaml"]
GRID_VARIANTS = ["stl", "local_wmhsa_w7", "kmeans_hash"]  # in file order, as the table lists them

#: file -> the test (path::function) that runs it end to end.
RUN_BY = {
    **{f"configs/{name}": "tests/e2e/test_shipped_paths.py::test_imagenet_config_fits_validates_and_checkpoints"
       for name in IMAGENET_CONFIGS},
    "configs/fashion_mnist.yaml": "tests/cli/test_cli_e2e.py::test_fit_then_validate_and_predict",
    "sweeps/ablation_stl.yaml": "tests/e2e/test_shipped_paths.py::test_ablation_grid_on_imagenet_then_table",
    "sweeps/ablation_fashion_mnist.yaml": "tests/sweeps/test_grid.py::test_real_tiny_fit_runs_resumably_and_logs_top1",
    "sweeps/optuna_slots_kernel_imagenet.yaml":
        "tests/e2e/test_shipped_paths.py::test_optuna_imagenet_sweep_completes_trials_then_report",
    "sweeps/optuna_slots_kernel.yaml": "tests/e2e/test_shipped_paths.py::test_optuna_fashion_mnist_sweep_as_in_readme",
}

#: sub-config files: each is run through the ImageNet configs that name it (checked below).
SUB_CONFIGS = ["configs/imagenet/data.yaml", "configs/imagenet/trainer_1gpu.yaml", "configs/imagenet/trainer_8gpu.yaml"]


def _scalars(run_dir: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def _run(command: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


# ------------------------------------------------------------------------------------ the rule itself
def test_every_shipped_file_is_run_by_a_test():
    shipped = {str(p.relative_to(REPO)) for folder in ("configs", "sweeps") for p in (REPO / folder).glob("*.yaml")}
    assert shipped == set(RUN_BY), (f"files no end-to-end test runs: {sorted(shipped - set(RUN_BY))}; "
                                    f"stale entries: {sorted(set(RUN_BY) - shipped)}")
    for test in set(RUN_BY.values()):
        path, function = test.split("::")
        names = {node.name for node in ast.walk(ast.parse((REPO / path).read_text())) if isinstance(node, ast.FunctionDef)}
        assert function in names, f"{test} does not exist"
    # sub-config files are run through the top-level configs that name them
    named = {str((REPO / "configs" / value).resolve().relative_to(REPO))
             for name in IMAGENET_CONFIGS for value in yaml.safe_load((REPO / "configs" / name).read_text()).values()
             if isinstance(value, str) and value.endswith(".yaml")}
    sub_configs = {str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*/*.yaml")}
    assert sub_configs == set(SUB_CONFIGS), f"sub-config files changed: update SUB_CONFIGS ({sorted(sub_configs)})"
    assert sub_configs <= named


# ------------------------------------------------------------------------------------ configs/
@pytest.mark.slow
@pytest.mark.parametrize("config", IMAGENET_CONFIGS)
def test_imagenet_config_fits_validates_and_checkpoints(config, imagenet_tree, console, subprocess_env, fit_args,
                                                        cpu_overrides, tmp_path):
    """``glnet fit --config configs/imagenet_*.yaml --data.root ...`` (the file's comment), then
    ``glnet validate`` of its best checkpoint reproduces the logged top-1."""
    run = tmp_path / "run"
    common = ["--config", f"configs/{config}", "--data.root", str(imagenet_tree), *fit_args(cpu_overrides)]
    fit = _run([*console("glnet"), "fit", *common, "--trainer.default_root_dir", str(run)], subprocess_env())
    assert "compile: auto -> eager on cpu" in fit.stdout + fit.stderr  # the configs compile on CUDA only
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert (run / "config.yaml").is_file()
    logged = _scalars(run, "val/acc1")
    assert len(logged) == 1 and 0.0 <= logged[0] <= 1.0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    accumulate = yaml.safe_load((run / "config.yaml").read_text())["trainer"].get("accumulate_grad_batches") or 1
    assert ckpt["global_step"] == math.ceil(cpu_overrides["trainer.limit_train_batches"] / accumulate)
    assert ckpt["hyper_parameters"]["num_classes"] == 4  # the tree's classes, not ImageNet's 1000
    # the checkpoint holds the whole description of the named model the config gives, as plain data
    named = yaml.safe_load((REPO / "configs" / config).read_text())["model"]["backbone"]
    assert ckpt["hyper_parameters"]["backbone"] == resolve_backbone(named).describe()

    check = tmp_path / "validate"
    _run([*console("glnet"), "validate", *common, "--trainer.default_root_dir", str(check),
          "--ckpt_path", str(run / "checkpoints" / "best.ckpt")], subprocess_env())
    assert _scalars(check, "val/acc1") == pytest.approx(logged, abs=1e-6)

    # the README's "evaluate published / trained weights": --model.init_weights (EMA weights when present)
    weights = tmp_path / "weights"
    _run([*console("glnet"), "validate", *common, "--trainer.default_root_dir", str(weights),
          "--model.init_weights", str(run / "checkpoints" / "best.ckpt")], subprocess_env())
    assert _scalars(weights, "val/acc1") == pytest.approx(_scalars(run, "val_ema/acc1"), abs=1e-6)


# ------------------------------------------------------------------------------------ sweeps/
@pytest.mark.slow
def test_ablation_grid_on_imagenet_then_table(imagenet_tree, console, subprocess_env, set_args, cpu_overrides,
                                              tmp_path):
    """``glnet sweep grid sweeps/ablation_stl.yaml --set data.root=...`` (the README's ``--data.root``
    spelling, as --set) for three rows incl. k-means and window MHSA, then ``glnet ablation table``."""
    runs = tmp_path / "runs"
    sets = set_args({"data.root": imagenet_tree, **cpu_overrides})
    result = _run([*console("glnet"), "sweep", "grid", "sweeps/ablation_stl.yaml", "--runs", str(runs),
                   "--only", *GRID_VARIANTS, *sets], subprocess_env(), timeout=1800)
    assert all(f"{name}: finished" in result.stdout for name in GRID_VARIANTS), result.stdout
    for name in GRID_VARIANTS:
        config = yaml.safe_load((runs / name / "sweep_config.yaml").read_text())
        assert config["data"]["init_args"]["root"] == str(imagenet_tree) and "root" not in config["data"]
        assert (runs / name / "checkpoints" / "last.ckpt").is_file()
    recorded = yaml.safe_load((runs / "kmeans_hash" / "config.yaml").read_text())["model"]["backbone"]["init_args"]
    assert recorded == {**glnet_stl().settings(), "clustering": "kmeans"}  # the whole network, one setting changed

    table = _run([*console("glnet"), "ablation", "table", "sweeps/ablation_stl.yaml", "--runs", str(runs), "--only",
                  *GRID_VARIANTS, "--no-throughput", "--format", "csv", *sets], subprocess_env())
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(table.stdout))}
    assert list(rows) == GRID_VARIANTS
    for name in GRID_VARIANTS:
        top1 = float(rows[name]["top1"])
        assert 0.0 <= top1 <= 100.0 and top1 == pytest.approx(100 * _scalars(runs / name, "val/acc1")[-1], abs=1e-3)
    assert float(rows["stl"]["params_m"]) == pytest.approx(30.3, abs=0.05)  # 1000 classes at 224 px, as the paper


@pytest.mark.slow
def test_optuna_imagenet_sweep_completes_trials_then_report(imagenet_tree, console, subprocess_env, set_args,
                                                            cpu_overrides, tmp_path):
    """The file's own command with the default SQLite storage (``--storage`` is for sharing), two
    trials that COMPLETE with both objectives, then ``glnet sweep report`` on the study."""
    runs = tmp_path / "runs"
    _run([*console("glnet"), "sweep", "optuna", "sweeps/optuna_slots_kernel_imagenet.yaml", "--runs-dir", str(runs),
          "--n-trials", "2", *set_args({"data.root": imagenet_tree, **cpu_overrides})], subprocess_env(), timeout=1800)
    storage = f"sqlite:///{runs / 'slots_kernel_imagenet_stl' / 'study.db'}"
    study = optuna.load_study(study_name="slots_kernel_imagenet_stl", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in study.trials:
        accuracy, throughput = trial.values
        assert 0.0 <= accuracy <= 1.0 and throughput > 0
        trained = yaml.safe_load((Path(trial.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert trained["trainer"]["max_epochs"] == 1  # --set beats the sweep's budget (30 epochs)
        recorded = trained["model"]["backbone"]["init_args"]
        assert recorded == {**glnet_stl().settings(), "num_slots": trial.params["num_slots"],
                            "kernel_size": trial.params["kernel_size"]}
    report = _run([*console("glnet"), "sweep", "report", "--storage", storage], subprocess_env())
    assert "2 trials (2 complete)" in report.stdout and "Pareto front" in report.stdout


@pytest.mark.slow
def test_optuna_fashion_mnist_sweep_as_in_readme(fashion_mnist, console, subprocess_env, set_args, tmp_path):
    """``glnet sweep optuna sweeps/optuna_slots_kernel.yaml --n-trials N``, one short trial."""
    runs = tmp_path / "runs"
    tiny = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
            "trainer.enable_progress_bar": False, "data.batch_size": 16, "data.num_workers": 0}
    _run([*console("glnet"), "sweep", "optuna", "sweeps/optuna_slots_kernel.yaml", "--runs-dir", str(runs),
          "--n-trials", "1", *set_args(tiny)], subprocess_env())
    (db,) = runs.glob("*/study.db")
    (trial,) = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and 0.0 <= trial.value <= 1.0


# ------------------------------------------------------------------------------------ sweeps that cannot run
@pytest.mark.parametrize("mistake, message", [
    ({"data.root": "/nonexistent/imagenet"}, "dataset root /nonexistent/imagenet does not exist"),
    ({"model.lr_typo": 1}, "does not accept option 'lr_typo'"),
    ({"trainer.max_epochs.x": 1}, "cannot set trainer.max_epochs.x"),
])
@pytest.mark.parametrize("command", ["grid", "optuna"])
def test_a_sweep_no_trial_could_run_stops_before_the_first(command, mistake, message, imagenet_tree, console,
                                                           subprocess_env, set_args, cpu_overrides, tmp_path):
    sweep = {"grid": "sweeps/ablation_stl.yaml", "optuna": "sweeps/optuna_slots_kernel_imagenet.yaml"}[command]
    runs_option = {"grid": "--runs", "optuna": "--runs-dir"}[command]
    sets = set_args({"data.root": imagenet_tree, **cpu_overrides, **mistake})
    result = subprocess.run([*console("glnet"), "sweep", command, sweep, runs_option, str(tmp_path / "runs"), *sets],
                            capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if f"glnet sweep {command}: error:" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "runs").exists()  # no variant started, no study created


@pytest.mark.parametrize("command", ["grid", "optuna"])
def test_a_missing_base_config_stops_the_sweep(command, console, subprocess_env, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "configs/nowhere.yaml", "variants": [{"name": "a"}]} if command == "grid"
                                    else {"base": "configs/nowhere.yaml", "search_space": {"num_slots": [4]}}))
    result = subprocess.run([*console("glnet"), "sweep", command, str(sweep)], capture_output=True, text=True,
                            env=subprocess_env(), cwd=tmp_path, timeout=300)
    assert result.returncode == 2 and "configs/nowhere.yaml does not exist" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()
