"""Every shipped config and sweep file, run end to end the way its own comment and the README say,
on a small ImageNet-layout tree of real JPEGs, changing only hardware, size and step counts.

``RUN_BY`` names the test that runs each file; :func:`test_every_shipped_file_is_run_by_a_test`
fails when a file appears in configs/ or sweeps/ that no end-to-end test runs. The command a file's
comment gives runs as that console command (one subprocess per test); the follow-up commands
(validate, report, table) run in process through ``glnet``'s own dispatcher."""
from __future__ import annotations

import ast
import csv
import io
import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from glnet_lightning.cli.main import main as glnet
from glnet_lightning.models.backbone import resolve_backbone
from glnet_lightning.models.glnet import glnet_stl
from testkit import CPU_OVERRIDES, fit_args, glnet_ok, one_error_line, run_script, scalars, set_args

REPO = Path(__file__).resolve().parents[2]
IMAGENET_CONFIGS = ["imagenet_glnet_stl.yaml", "imagenet_glnet_stl_1gpu.yaml", "imagenet_glnet_4g.yaml",
                    "imagenet_glnet_9g.yaml", "imagenet_glnet_16g.yaml"]
#: The token-labeling configs: their fits need label maps (tests/e2e/test_token_labeling.py and the README's).
TOKEN_LABELING_CONFIGS = ["imagenet_glnet_4g_tklb.yaml", "imagenet_glnet_9g_tklb.yaml"]
GRID_VARIANTS = ["stl", "local_wmhsa_w7", "kmeans_hash"]  # in file order, as the table lists them

#: The CPU overrides at the least that still trains and validates: one batch each, 32 px images (the
#: networks' total stride). The networks stay the ones the files name.
SHORT = {**CPU_OVERRIDES, "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1, "data.image_size": 32}

#: Configs whose checkpoints are too big for the suite's disk budget to write two at once.
BIG_CHECKPOINTS = ["imagenet_glnet_16g.yaml"]

#: file -> the test (path::function) that runs it end to end.
RUN_BY = {
    **{f"configs/{name}": "tests/e2e/test_shipped_paths.py::test_imagenet_config_fits_validates_and_checkpoints"
       for name in IMAGENET_CONFIGS},
    "configs/fashion_mnist.yaml": "tests/cli/test_cli_e2e.py::test_fit_then_validate_and_predict",
    "configs/imagenet_glnet_4g_tklb.yaml": "tests/e2e/test_readme_commands.py::test_token_labeling_commands",
    "configs/imagenet_glnet_9g_tklb.yaml":
        "tests/e2e/test_token_labeling.py::test_glnet_9g_tklb_config_fits_then_validates",
    "sweeps/ablation_stl.yaml": "tests/e2e/test_shipped_paths.py::test_ablation_grid_on_imagenet_then_table",
    "sweeps/ablation_fashion_mnist.yaml": "tests/sweeps/test_grid.py::test_real_tiny_fit_runs_resumably_and_logs_top1",
    "sweeps/optuna_slots_kernel_imagenet.yaml":
        "tests/e2e/test_shipped_paths.py::test_optuna_imagenet_sweep_completes_trials_then_report",
    "sweeps/optuna_slots_kernel.yaml": "tests/e2e/test_shipped_paths.py::test_optuna_fashion_mnist_sweep_as_in_readme",
    "configs/coco_glnet_4g_maskrcnn_1x.yaml": "tests/e2e/test_detection.py::test_coco_config_fits_validates_and_checkpoints",
    "configs/coco_glnet_4g_maskrcnn_3x.yaml": "tests/e2e/test_detection.py::test_coco_config_fits_validates_and_checkpoints",
    "configs/coco_glnet_4g_retinanet_1x.yaml": "tests/e2e/test_detection.py::test_coco_config_fits_validates_and_checkpoints",
    "configs/fashion_scenes_det.yaml":
        "tests/e2e/test_detection.py::test_the_demo_fits_tests_its_best_checkpoint_and_draws_predictions",
    "configs/ade20k_glnet_4g_semfpn.yaml": "tests/e2e/test_segmentation.py::test_ade20k_config_fits_validates_and_checkpoints",
    "configs/ade20k_glnet_4g_upernet.yaml": "tests/e2e/test_segmentation.py::test_ade20k_config_fits_validates_and_checkpoints",
    "configs/fashion_scenes_seg.yaml": "tests/e2e/test_segmentation.py::test_the_demo_fits_and_tests_its_best_checkpoint",
}

#: sub-config files: each is run through the ImageNet configs that name it (checked below).
SUB_CONFIGS = ["configs/imagenet/data.yaml", "configs/imagenet/trainer_8gpu.yaml",
               "configs/imagenet/trainer_8gpu_tklb.yaml"]


def _values(run_dir: Path, tag: str) -> list[float]:
    return [value for _, value in scalars(run_dir, tag)]



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
             for name in IMAGENET_CONFIGS + TOKEN_LABELING_CONFIGS
             for value in yaml.safe_load((REPO / "configs" / name).read_text()).values()
             if isinstance(value, str) and value.endswith(".yaml")}
    sub_configs = {str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*/*.yaml")}
    assert sub_configs == set(SUB_CONFIGS), f"sub-config files changed: update SUB_CONFIGS ({sorted(sub_configs)})"
    assert sub_configs <= named


# ------------------------------------------------------------------------------------ configs/
@pytest.mark.slow
@pytest.mark.parametrize("config", IMAGENET_CONFIGS)
def test_imagenet_config_fits_validates_and_checkpoints(config, imagenet_tree, tmp_path, capsys, monkeypatch):
    """``glnet fit --config configs/imagenet_*.yaml --data.root ...`` (the file's comment), then
    ``glnet validate`` of its best checkpoint reproduces the logged top-1."""
    monkeypatch.chdir(REPO)  # the in-process commands read configs/... as the user's shell does
    run = tmp_path / "run"
    common = ["--config", f"configs/{config}", "--data.root", str(imagenet_tree), *fit_args(SHORT)]
    # Disk, like the hardware: a GLNet-16G checkpoint with AdamW and EMA state is 1.7 GB, so its run keeps
    # best.ckpt only (the suite writes at most 2 GB at once); the other four configs check last.ckpt.
    checkpoints = {"best.ckpt"} if config in BIG_CHECKPOINTS else {"best.ckpt", "last.ckpt"}
    disk = ["--checkpoint.save_last", "false"] if config in BIG_CHECKPOINTS else []
    fit = run_script("glnet", ["fit", *common, *disk, "--trainer.default_root_dir", str(run)], check=True)
    assert "compile: auto -> eager on cpu" in fit.stdout + fit.stderr  # the configs compile on CUDA only
    assert {p.name for p in (run / "checkpoints").iterdir()} == checkpoints
    assert (run / "config.yaml").is_file()
    logged = _values(run, "val/acc1")
    assert len(logged) == 1 and 0.0 <= logged[0] <= 1.0
    final = "last.ckpt" if "last.ckpt" in checkpoints else "best.ckpt"  # one step: both hold its end
    ckpt = torch.load(run / "checkpoints" / final, map_location="cpu", weights_only=False, mmap=True)
    accumulate = yaml.safe_load((run / "config.yaml").read_text())["trainer"].get("accumulate_grad_batches") or 1
    assert ckpt["global_step"] == math.ceil(SHORT["trainer.limit_train_batches"] / accumulate)
    assert ckpt["hyper_parameters"]["num_classes"] == 4  # the tree's classes, not ImageNet's 1000
    # the checkpoint holds the whole description of the named model the config gives, as plain data
    named = yaml.safe_load((REPO / "configs" / config).read_text())["model"]["backbone"]
    assert ckpt["hyper_parameters"]["backbone"] == resolve_backbone(named).describe()
    del ckpt  # up to 1.7 GB (GLNet-16G with optimizer and EMA state)

    check = tmp_path / "validate"
    glnet_ok(capsys, "validate", *common, "--trainer.default_root_dir", str(check),
                "--ckpt_path", str(run / "checkpoints" / "best.ckpt"))
    assert _values(check, "val/acc1") == pytest.approx(logged, abs=1e-6)

    # the README's "evaluate published / trained weights": --model.init_weights (EMA weights when present)
    weights = tmp_path / "weights"
    glnet_ok(capsys, "validate", *common, "--trainer.default_root_dir", str(weights),
                "--model.init_weights", str(run / "checkpoints" / "best.ckpt"))
    assert _values(weights, "val/acc1") == pytest.approx(_values(run, "val_ema/acc1"), abs=1e-6)


# ------------------------------------------------------------------------------------ sweeps/
@pytest.mark.slow
def test_ablation_grid_on_imagenet_then_table(imagenet_tree, tmp_path, capsys, monkeypatch):
    """``glnet sweep grid sweeps/ablation_stl.yaml --set data.root=...`` (the README's ``--data.root``
    spelling, as --set) for three rows incl. k-means and window MHSA, then ``glnet ablation table``.
    Both in process: the grid runs each row as its own ``glnet fit`` process (its design) anyway."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # for the rows' fit processes, as testkit.subprocess_env
    runs = tmp_path / "runs"
    sets = set_args({"data.root": imagenet_tree, **SHORT})
    grid = glnet_ok(capsys, "sweep", "grid", "sweeps/ablation_stl.yaml", "--runs", str(runs),
                       "--only", *GRID_VARIANTS, *sets)
    assert all(f"{name}: finished" in grid for name in GRID_VARIANTS), grid
    for name in GRID_VARIANTS:
        config = yaml.safe_load((runs / name / "sweep_config.yaml").read_text())
        assert config["data"]["init_args"]["root"] == str(imagenet_tree) and "root" not in config["data"]
        assert (runs / name / "checkpoints" / "last.ckpt").is_file()
    recorded = yaml.safe_load((runs / "kmeans_hash" / "config.yaml").read_text())["model"]["backbone"]["init_args"]
    assert recorded == {**glnet_stl().settings(), "clustering": "kmeans"}  # the whole network, one setting changed

    table = glnet_ok(capsys, "ablation", "table", "sweeps/ablation_stl.yaml", "--runs", str(runs), "--only",
                        *GRID_VARIANTS, "--no-throughput", "--format", "csv", *sets)
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(table))}
    assert list(rows) == GRID_VARIANTS
    for name in GRID_VARIANTS:
        top1 = float(rows[name]["top1"])
        assert 0.0 <= top1 <= 100.0 and top1 == pytest.approx(100 * _values(runs / name, "val/acc1")[-1], abs=1e-3)
    assert float(rows["stl"]["params_m"]) == pytest.approx(30.3, abs=0.05)  # 1000 classes at 224 px, as the paper


def _small_measure(shipped: Path, folder: Path) -> Path:
    """The sweep file as shipped but for its ``measure:`` line: throughput on 8 images, 1 + 2 passes (the
    paper's 128 images, 3 + 10 passes, take most of a minute on a CPU even at 32 px). It lies in a
    ``sweeps/`` folder beside a link to configs/, so its relative ``base`` resolves as in the repository."""
    lines = shipped.read_text().splitlines(keepends=True)
    measure = [i for i, line in enumerate(lines) if line.startswith("measure:")]
    assert len(measure) == 1, f"{shipped} has no single measure: line"
    lines[measure[0]] = "measure: {batch_size: 8, warmup: 1, repeats: 2}\n"
    (folder / "sweeps").mkdir(parents=True)
    (folder / "configs").symlink_to(REPO / "configs")
    path = folder / "sweeps" / shipped.name
    path.write_text("".join(lines))
    return path


@pytest.mark.slow
def test_optuna_imagenet_sweep_completes_trials_then_report(imagenet_tree, tmp_path, capsys):
    """The file's own command (its throughput measured on fewer images) with the default SQLite storage
    (``--storage`` is for sharing), two trials that COMPLETE with both objectives, then ``glnet sweep
    report`` on the study."""
    runs = tmp_path / "runs"
    sweep = _small_measure(REPO / "sweeps" / "optuna_slots_kernel_imagenet.yaml", tmp_path / "copy")
    run_script("glnet", ["sweep", "optuna", str(sweep), "--runs-dir", str(runs), "--n-trials", "2",
                         *set_args({"data.root": imagenet_tree, **SHORT})], timeout=1800, check=True)
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
    report = glnet_ok(capsys, "sweep", "report", "--storage", storage)
    assert "2 trials (2 complete)" in report and "Pareto front" in report


@pytest.mark.slow
def test_optuna_fashion_mnist_sweep_as_in_readme(fashion_mnist, tmp_path):
    """``glnet sweep optuna sweeps/optuna_slots_kernel.yaml --n-trials N``, one short trial."""
    runs = tmp_path / "runs"
    tiny = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
            "trainer.enable_progress_bar": False, "data.batch_size": 16, "data.num_workers": 0}
    run_script("glnet", ["sweep", "optuna", "sweeps/optuna_slots_kernel.yaml", "--runs-dir", str(runs),
                         "--n-trials", "1", *set_args(tiny)], check=True)
    (db,) = runs.glob("*/study.db")
    (trial,) = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and 0.0 <= trial.value <= 1.0


# ------------------------------------------------------------------------------------ sweeps that cannot run
# In process: the exit status and the error line are the sweep commands' return value and stderr;
# test_the_console_script_exits_2_with_one_error_line checks once that the shell sees the same.
SWEEPS = {"grid": ("sweeps/ablation_stl.yaml", "--runs"),
          "optuna": ("sweeps/optuna_slots_kernel_imagenet.yaml", "--runs-dir")}


def _stops(capsys, command: str, *args: str) -> str:
    """``glnet sweep COMMAND ARGS`` in process: exit status 2 and its one error line, returned."""
    capsys.readouterr()
    code = glnet(["sweep", command, *args])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    return one_error_line(err, prog=f"glnet sweep {command}")


@pytest.mark.parametrize("mistake, message", [
    ({"data.root": "/nonexistent/imagenet"}, "dataset root /nonexistent/imagenet does not exist"),
    ({"model.lr_typo": 1}, "does not accept option 'lr_typo'"),
    ({"trainer.max_epochs.x": 1}, "cannot set trainer.max_epochs.x"),
])
@pytest.mark.parametrize("command", ["grid", "optuna"])
def test_a_sweep_no_trial_could_run_stops_before_the_first(command, mistake, message, imagenet_tree, tmp_path,
                                                           capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep, runs_option = SWEEPS[command]
    sets = set_args({"data.root": imagenet_tree, **SHORT, **mistake})
    assert message in _stops(capsys, command, sweep, runs_option, str(tmp_path / "runs"), *sets)
    assert not (tmp_path / "runs").exists()  # no variant started, no study created


def _missing_base_sweep(command: str, folder: Path) -> Path:
    sweep = folder / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "configs/nowhere.yaml", "variants": [{"name": "a"}]} if command == "grid"
                                    else {"base": "configs/nowhere.yaml", "search_space": {"num_slots": [4]}}))
    return sweep


@pytest.mark.parametrize("command", ["grid", "optuna"])
def test_a_missing_base_config_stops_the_sweep(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "configs/nowhere.yaml does not exist" in _stops(capsys, command, str(_missing_base_sweep(command, tmp_path)))
    assert not (tmp_path / "runs").exists()


def test_the_console_script_exits_2_with_one_error_line(tmp_path):
    """What a shell sees of a sweep that cannot start: status 2, one error line, no traceback."""
    result = run_script("glnet", ["sweep", "optuna", str(_missing_base_sweep("optuna", tmp_path))], cwd=tmp_path,
                        timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "configs/nowhere.yaml does not exist" in one_error_line(result.stderr, prog="glnet sweep optuna")
    assert not (tmp_path / "runs").exists()
