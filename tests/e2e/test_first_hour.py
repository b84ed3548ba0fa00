"""A newcomer's first hour: the natural mistakes with the README's commands, each one error line that says
what to do (exit status 2), and the commands the README and the tools hand out working where they say.

All in process through ``glnet``'s own dispatcher (what the console script runs); nothing here trains.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from glnet_lightning.cli.main import main as glnet
from glnet_lightning.config_edit import load_config
from glnet_lightning.sweeps import load_sweep
from glnet_lightning.sweeps.grid import CONFIG_FILE, DEFAULT_FIT_COMMAND, glnet_command
from testkit import one_error_line

REPO = Path(__file__).resolve().parents[2]
STL_SWEEP = "sweeps/ablation_stl.yaml"
FASHION_SWEEP = "sweeps/ablation_fashion_mnist.yaml"


def _fails(capsys, *args: str, prog: str = "glnet") -> str:
    """``glnet ARGS`` in process: exit status 2, nothing on stdout, and its one error line, returned."""
    capsys.readouterr()
    code = glnet(list(args))
    out, err = capsys.readouterr()
    assert code == 2, err[-3000:]
    assert not out.strip(), out[-2000:]
    return one_error_line(err, prog=prog)


# ------------------------------------------------------------------------------------ a wrong --data.root
def test_fashion_mnist_wrong_data_root_is_one_line(tmp_path, capsys, monkeypatch):
    """No download, no directory made, and the line names the option, the path, the files and the package."""
    import torchvision.datasets

    downloads = []
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda *args, **kwargs: downloads.append(args))
    config = str(REPO / "configs" / "fashion_mnist.yaml")
    run = tmp_path / "run"
    wrong = tmp_path / "fashion"
    line = _fails(capsys, "fit", "--config", config, "--data.root", str(wrong), "--trainer.default_root_dir", str(run))
    assert line.startswith(f"glnet: error: --data.root {wrong} does not exist;"), line
    assert "install the Debian package dataset-fashion-mnist" in line
    assert "/usr/share/datasets/fashion-mnist" in line and "train-images-idx3-ubyte[.gz]" in line
    wrong.mkdir()  # a folder that exists but holds something else
    line = _fails(capsys, "fit", "--config", config, "--data.root", str(wrong), "--trainer.default_root_dir", str(run))
    assert f"--data.root {wrong} (or its FashionMNIST/raw/) has no train-images-idx3-ubyte[.gz]" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fashion"] and downloads == []


# ------------------------------------------------------------------------------------ a missing sweep file
@pytest.mark.parametrize("args, message", [
    (["sweep", "grid", "sweeps/ablation_stll.yaml"],
     "sweep file sweeps/ablation_stll.yaml does not exist (did you mean sweeps/ablation_stl.yaml?)"),
    (["sweep", "grid", "ablation_stl.yaml", "--dry-run"],
     "sweep file ablation_stl.yaml does not exist (did you mean sweeps/ablation_stl.yaml?)"),
    (["ablation", "table", "sweeps/ablation_fashion.yaml"],
     "sweep file sweeps/ablation_fashion.yaml does not exist (did you mean sweeps/ablation_fashion_mnist.yaml?)"),
    (["sweep", "optuna", "sweeps/optuna_slots_kernel.yml"],
     "sweep file sweeps/optuna_slots_kernel.yml does not exist (did you mean sweeps/optuna_slots_kernel.yaml?)"),
    (["sweep", "grid", "sweeps/nothing_like_it.yaml", "--dry-run"], "sweep file sweeps/nothing_like_it.yaml does not exist"),
    (["sweep", "grid", "sweeps", "--dry-run"], "sweep file sweeps is a directory"),
    (["sweep", "grid", STL_SWEEP, "--base", "configs/imagenet_glnet_st.yaml", "--dry-run"],
     "--base configs/imagenet_glnet_st.yaml does not exist (did you mean configs/imagenet_glnet_stl.yaml?)"),
    (["ablation", "table", STL_SWEEP, "--base", "configs/nowhere.yaml"], "--base configs/nowhere.yaml does not exist"),
    (["sweep", "optuna", "sweeps/optuna_slots_kernel.yaml", "--base", "configs/fashion.yaml"],
     "--base configs/fashion.yaml does not exist (did you mean configs/fashion_mnist.yaml?)"),
])
def test_missing_sweep_file_is_one_line_in_grid_dry_run_table_and_optuna(args, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # the README's commands run from the repository
    prog = f"glnet {args[0]} {args[1]}"
    line = _fails(capsys, *args, "--runs" if args[:2] != ["sweep", "optuna"] else "--runs-dir", str(tmp_path / "r"),
                  prog=prog)
    assert line == f"{prog}: error: {message}"
    assert not (tmp_path / "r").exists()


def test_a_sweep_file_that_is_not_yaml_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("base: configs/fashion_mnist.yaml\nvariants: [{name: a}\n")
    for command in ("grid", "optuna"):
        line = _fails(capsys, "sweep", command, str(broken), prog=f"glnet sweep {command}")
        assert f"sweep file {broken} is not valid YAML: while parsing a flow sequence" in line, line
    broken.write_text("- just\n- a list\n")
    assert "must be a YAML mapping of keys, not list" in _fails(capsys, "ablation", "table", str(broken),
                                                                prog="glnet ablation table")


# ------------------------------------------------------------------------------------ the table and its runs
def _runs_of(sweep_file: str, runs: Path, names: list[str], sets: dict | None = None) -> None:
    """Run directories as ``glnet sweep grid SWEEP_FILE --runs RUNS`` leaves them (before the fit writes
    its own files): each variant's resolved config in ``RUNS/NAME/sweep_config.yaml``."""
    variants = {v.name: v for v in load_sweep(REPO / sweep_file).variants}
    for name in names:
        (runs / name).mkdir(parents=True)
        (runs / name / CONFIG_FILE).write_text(yaml.safe_dump(variants[name].config(sets or {}), sort_keys=False))


def test_ablation_table_refuses_runs_of_another_sweep(tmp_path, capsys, monkeypatch):
    """The README's grid trains the Fashion-MNIST proxy into runs/abl; the table of the ImageNet sweep
    file on those runs stops at once, naming the sweep file they belong to (and the command)."""
    monkeypatch.chdir(REPO)
    runs = tmp_path / "abl"
    _runs_of(FASHION_SWEEP, runs, ["stl", "local_only", "slots_9"], sets={"trainer.max_epochs": 1})
    line = _fails(capsys, "ablation", "table", STL_SWEEP, "--runs", str(runs), prog="glnet ablation table")
    assert line == (f"glnet ablation table: error: {runs}/stl (and 2 more run(s) there) trained FashionMNISTDataModule "
                    f"at 32 px, but {STL_SWEEP}'s variant stl trains ImageNetDataModule at 224 px; these are runs of "
                    f"{FASHION_SWEEP}: glnet ablation table {FASHION_SWEEP} --runs {runs}")
    # the right sweep file reads them (--set edits of the trainer do not change what a row means)
    assert glnet(["ablation", "table", FASHION_SWEEP, "--runs", str(runs), "--only", "stl", "--no-throughput"]) == 0
    # the same data but another network: the grid ran with an edit the table was not given
    other = tmp_path / "slots"
    _runs_of(FASHION_SWEEP, other, ["stl"], sets={"model.backbone.num_slots": 9})
    line = _fails(capsys, "ablation", "table", FASHION_SWEEP, "--runs", str(other), "--only", "stl",
                  prog="glnet ablation table")
    assert "trained the network glnet_stl:" in line and "num_slots=9" in line
    assert line.endswith("give the table the sweep file and the --set edits the grid ran with")
    assert glnet(["ablation", "table", FASHION_SWEEP, "--runs", str(other), "--only", "stl", "--no-throughput",
                  "--set", "model.backbone.num_slots=9"]) == 0


def test_ablation_table_timing_reports_each_model_on_stderr(capsys):
    """Timing takes minutes for the full-size rows: one line per model on stderr as it goes, the table on
    stdout; --no-throughput (the way out the first line names) prints no timing line."""
    args = ["ablation", "table", str(REPO / FASHION_SWEEP), "--only", "stl", "local_only", "--img-size", "32",
            "--num-classes", "10", "--batch-size", "2", "--format", "csv"]
    assert glnet(args) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[0] == "[ablation table] timing CPU inference of 2 model(s), batch 2 (--no-throughput skips it)"
    assert [re.sub(r"[0-9.]+ im/s at 32 px \(\d+ s\)", "*", line) for line in lines[1:]] == [
        "[ablation table] 1/2 stl: *", "[ablation table] 2/2 local_only: *"]
    assert out.splitlines()[0].startswith("name,label,params_m")
    assert glnet([*args, "--no-throughput"]) == 0
    assert "[ablation table]" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------ commands handed out
def test_slurm_script_calls_the_installed_glnet(capsys, monkeypatch, tmp_path):
    """A cluster job's shell has neither the virtual environment nor its PATH: the emitted lines call this
    installation's ``glnet`` by absolute path, with ``glnet``'s own ``sweep grid`` arguments."""
    monkeypatch.chdir(REPO)
    assert glnet(["sweep", "grid", STL_SWEEP, "--emit", "slurm", "--set", "data.root=/data/imagenet"]) == 0
    command = shlex.split(capsys.readouterr().out.rstrip().splitlines()[-1])
    installed = Path(sys.executable).parent / "glnet"
    assert command[0] == str(installed.absolute()) and os.access(command[0], os.X_OK)
    interpreter = installed.read_text().splitlines()[0].removeprefix("#!")  # the console script's own Python
    assert Path(interpreter).samefile(sys.executable)
    assert command[1:] == ["sweep", "grid", STL_SWEEP, "--runs", "runs/ablation_stl", "--set",
                           "data.root=/data/imagenet", "--only", "$NAME"]
    assert glnet(["sweep", "grid", STL_SWEEP, "--emit", "commands", "--only", "stl"]) == 0
    assert shlex.split(capsys.readouterr().out)[:3] == [str(installed.absolute()), "sweep", "grid"]
    # the local runner starts each fit with this interpreter too
    assert DEFAULT_FIT_COMMAND == (sys.executable, "-m", "glnet_lightning", "fit") and Path(sys.executable).is_absolute()
    # without a console script beside the interpreter: that interpreter runs the package
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    assert glnet_command() == [str(tmp_path / "bin" / "python3"), "-m", "glnet_lightning"]


# ------------------------------------------------------------------------------------ run directories
def _run_dir(config_file: Path) -> str:
    """Where ``glnet fit --config FILE`` writes: its ``trainer.default_root_dir``, else ``runs/<model name>``
    (the CLI's default, cli.lightning_cli)."""
    from glnet_lightning.cli.lightning_cli import RUNS_DIR
    from glnet_lightning.models.backbone import resolve_backbone

    config = load_config(config_file)
    explicit = (config.get("trainer") or {}).get("default_root_dir")
    return explicit or f"{RUNS_DIR}/{resolve_backbone(config['model']['backbone']).name}"


def test_shipped_configs_have_distinct_run_dirs():
    """Two recipes sharing a run directory resume each other's checkpoints with --ckpt_path last."""
    run_dirs = {path.name: _run_dir(path) for path in sorted((REPO / "configs").glob("*.yaml"))}
    shared = {d for d in run_dirs.values() if list(run_dirs.values()).count(d) > 1}
    assert not shared, f"configs sharing a run directory: { {n: d for n, d in run_dirs.items() if d in shared} }"
    assert run_dirs["imagenet_glnet_stl_1gpu.yaml"] == "runs/glnet_stl_1gpu"
    # the run directories the README names are those of shipped configs
    named = set(re.findall(r"\b(runs/[\w.-]+)/checkpoints/", (REPO / "README.md").read_text()))
    assert named and named <= set(run_dirs.values()), named - set(run_dirs.values())
