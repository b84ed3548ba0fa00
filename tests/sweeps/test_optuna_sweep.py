"""Optuna sweep pieces that need no training: sweep files, search space, config edits, storage, report."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from glnet_lightning.cli.sweep import optuna_main, report_main
from glnet_lightning.config_edit import ConfigEditError, apply_edits, parse_assignment as parse_set
from glnet_lightning.sweeps.optuna_sweep import SpaceError, parse_space
from glnet_lightning.sweeps.optuna_study import make_pruner, make_sampler, open_study
from glnet_lightning.sweeps.optuna_sweep import OptunaSweepError, load_optuna_sweep

REPO = Path(__file__).resolve().parents[2]
SLOTS = [9, 16, 25, 36, 49, 64, 81]


@pytest.mark.parametrize("name, base", [("optuna_slots_kernel.yaml", "fashion_mnist.yaml"),
                                        ("optuna_slots_kernel_imagenet.yaml", "imagenet_glnet_stl.yaml")])
def test_repo_sweep_files_search_the_paper_choices(name, base):
    sweep = load_optuna_sweep(REPO / "sweeps" / name)
    assert sweep.base.name == base
    assert sweep.space.grid() == {"num_slots": SLOTS, "kernel_size": [3, 5, 7]}
    assert sweep.objectives[0].name == "val/acc1" and sweep.objectives[0].direction == "maximize"
    make_sampler(sweep), make_pruner(sweep)  # both build


def test_imagenet_sweep_is_a_pareto_study_without_pruning():
    sweep = load_optuna_sweep(REPO / "sweeps" / "optuna_slots_kernel_imagenet.yaml")
    assert sweep.directions == ["maximize", "maximize"] and sweep.multi_objective
    assert isinstance(make_pruner(sweep), optuna.pruners.NopPruner)


def test_per_stage_space_suggests_one_value_per_stage():
    space = parse_space({"num_slots": {"choices": [4, 9], "per_stage": True}, "kernel_size": [3, 5]})
    trial = optuna.trial.FixedTrial({"num_slots_stage1": 4, "num_slots_stage2": 9, "num_slots_stage3": 9,
                                     "num_slots_stage4": 4, "kernel_size": 5})
    assert space.suggest(trial) == {"model.backbone.num_slots": [4, 9, 9, 4], "model.backbone.kernel_size": 5}


@pytest.mark.parametrize("raw", [None, {"num_slots": []}, {"num_slots": [4, 4]}, {"k": {"choices": [1], "bad": 1}}])
def test_bad_spaces_are_refused(raw):
    with pytest.raises(SpaceError):
        parse_space(raw)


def test_edits_follow_precedence_and_reach_subclass_init_args():
    base = {"model": {"backbone": {"class_path": "glnet_stl", "init_args": {"num_slots": 4, "dims": [1]}}},
            "data": {"class_path": "x.Data", "init_args": {"batch_size": 128}}}
    config = apply_edits(base, {"trainer.max_epochs": 3}, dict([parse_set("trainer.max_epochs=1"),
                         parse_set("data.batch_size=8")]), {"model.backbone.num_slots": 16})
    assert config["trainer"]["max_epochs"] == 1
    assert config["data"] == {"class_path": "x.Data", "init_args": {"batch_size": 8}}
    assert config["model"]["backbone"] == {"class_path": "glnet_stl", "init_args": {"num_slots": 16, "dims": [1]}}
    assert base["model"]["backbone"]["init_args"]["num_slots"] == 4  # the base is not modified
    with pytest.raises(ConfigEditError):
        parse_set("no_equals_sign")
    with pytest.raises(ConfigEditError):
        apply_edits(base, {"model.backbone.dims.x": 1})


def test_bad_sweep_file_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": "nowhere.yaml", "search_space": {"num_slots": [4]}, "sampler": "x"}))
    assert optuna_main([str(path), "--runs-dir", str(tmp_path)]) == 2
    assert "nowhere.yaml" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"base": "b.yaml", "search_space": {"num_slots": [4]}, "typo": 1}))
    with pytest.raises(OptunaSweepError, match="typo"):
        load_optuna_sweep(path)


def _sweep_file(tmp_path: Path, objectives: list[str]) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text("model: {backbone: glnet_stl}\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(base), "study_name": "s", "runs_dir": str(tmp_path / "runs"),
                                    "search_space": {"num_slots": [4, 9], "kernel_size": [3, 5]},
                                    "objectives": objectives}))
    return path


def test_reopening_with_other_objectives_is_refused(tmp_path):
    sweep = load_optuna_sweep(_sweep_file(tmp_path, ["val/acc1"]))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(sweep, url)
    assert len(open_study(sweep, url).trials) == 0  # load_if_exists
    other = load_optuna_sweep(_sweep_file(tmp_path, ["val/acc1", "throughput"]))
    with pytest.raises(OptunaSweepError, match="optimises"):
        open_study(other, url)


def test_report_lists_the_pareto_front_and_writes_html(tmp_path, capsys):
    sweep = load_optuna_sweep(_sweep_file(tmp_path, ["val/acc1", "throughput"]))
    url = f"sqlite:///{tmp_path / 'db' / 'study.db'}"
    study = open_study(sweep, url)
    dists = {"num_slots": CategoricalDistribution([4, 9]), "kernel_size": CategoricalDistribution([3, 5])}
    for (slots, kernel), values in {(4, 3): [0.80, 900.0], (9, 3): [0.85, 800.0], (9, 5): [0.84, 700.0]}.items():
        study.add_trial(create_trial(params={"num_slots": slots, "kernel_size": kernel}, distributions=dists,
                                     values=values, user_attrs={"gmacs": 0.01, "run_dir": f"r{slots}{kernel}"}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"num_slots": 4, "kernel_size": 5},
                                 distributions=dists, user_attrs={"error": "ValueError: boom"}))
    assert report_main(["--storage", url]) == 0
    out = capsys.readouterr().out
    assert "4 trials (3 complete, 1 fail)" in out
    front = out.split("Pareto front:")[1].split("all trials:")[0]
    assert "r43" in front and "r93" in front and "r95" not in front  # trial (9, 5) is dominated
    assert "ValueError: boom" in out.split("all trials:")[1]
    html = tmp_path / "db" / "s_report.html"
    assert html.is_file() and "plotly" in html.read_text()[:100000].lower()


def test_report_of_a_missing_study_exits_2(tmp_path, capsys):
    assert report_main(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--study-name", "x"]) == 2
    assert "no study database" in capsys.readouterr().err
