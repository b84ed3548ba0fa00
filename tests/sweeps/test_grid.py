"""Sweep files and the grid runner: loading, override resolution, skip / resume / failure isolation.

The runner tests inject a fake ``fit`` (a 20-line script) so they take a second; one slow test
runs a real tiny ``glnet fit`` end to end.
"""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from glnet_lightning.config_edit import ConfigEditError, apply_edits, parse_assignment
from glnet_lightning.sweeps import SweepError, load_sweep
from glnet_lightning.cli.sweep import grid_main
from glnet_lightning.sweeps.grid import find_last_checkpoint, read_status
from testkit import tiny, tiny_sets

REPO = Path(__file__).resolve().parents[2]
STL_SWEEP = REPO / "sweeps" / "ablation_stl.yaml"
FASHION_SWEEP = REPO / "sweeps" / "ablation_fashion_mnist.yaml"
TABLE_ORDER = ["stl", "local_only", "global_only", "seq_global_local", "seq_local_global", "local_wmhsa_w7",
               "kmeans_hash", "param_slot_init", "dwconv_k7", "dwconv_k3", "slots_9", "slots_25", "slots_36",
               "slots_49", "slots_81"]


# ------------------------------------------------------------------------------------ sweep files
@pytest.mark.parametrize("path", [STL_SWEEP, FASHION_SWEEP], ids=["stl", "fashion_mnist"])
def test_sweep_files_list_the_paper_rows_in_table_order(path):
    sweep = load_sweep(path)
    assert [v.name for v in sweep.variants] == TABLE_ORDER
    assert all(v.paper.gflops and v.paper.params_m and v.paper.throughput for v in sweep.variants)
    assert {v.name for v in sweep.variants if v.paper.top1 is None} == {"kmeans_hash"}


def test_base_is_found_relative_to_the_repository():
    assert load_sweep(FASHION_SWEEP).base == REPO / "configs" / "fashion_mnist.yaml"
    assert load_sweep(STL_SWEEP).base == REPO / "configs" / "imagenet_glnet_stl.yaml"


def test_variants_resolve_overrides_on_the_base_with_set_edits_in_between():
    variant = {v.name: v for v in load_sweep(FASHION_SWEEP).variants}["slots_9"]
    config = variant.config({"model.backbone.num_slots": 4, "trainer.max_epochs": 1})
    assert config["model"]["backbone"]["init_args"]["num_slots"] == 9  # the variant wins over --set
    assert config["trainer"]["max_epochs"] == 1
    assert config["model"]["backbone"]["init_args"]["dims"] == [32, 64, 96, 128]  # untouched base keys stay


def test_build_model_is_the_model_fit_trains():
    variants = {v.name: v for v in load_sweep(FASHION_SWEEP).variants}
    extra = dict(parse_assignment(text) for text in tiny_sets())
    k3, k7 = (variants[n].build_model(10, extra) for n in ("dwconv_k3", "dwconv_k7"))
    # one GLMix block per stage, each with a depthwise conv: 7x7 has (49 - 9) more weights per channel than 3x3
    assert sum(p.numel() for p in k7.parameters()) - sum(p.numel() for p in k3.parameters()) == 40 * sum(tiny()["dims"])
    assert variants["local_only"].build_model(10, extra).mixer_configs[0].global_branch is None


def test_apply_overrides_sets_nested_keys_and_replaces_values():
    base = {"model": {"backbone": "glnet_stl", "lr": 1.0}, "trainer": {"max_epochs": 5}}
    result = apply_edits(base, {"model.backbone.local": {"name": "window_mhsa"}, "data.batch_size": 8})
    # a key below a class given by name lands in its init_args, as LightningCLI reads it
    assert result == {"model": {"backbone": {"class_path": "glnet_stl", "init_args": {"local": {"name": "window_mhsa"}}},
                                "lr": 1.0}, "trainer": {"max_epochs": 5}, "data": {"batch_size": 8}}
    assert base["model"]["backbone"] == "glnet_stl"  # the input is not modified
    # another class keeps the init_args given; a mapping without class_path updates them
    switched = apply_edits(result, {"model.backbone": "glnet_4g"}, {"model.backbone": {"num_slots": 9}})
    assert switched["model"]["backbone"] == {"class_path": "glnet_4g",
                                             "init_args": {"local": {"name": "window_mhsa"}, "num_slots": 9}}
    with pytest.raises(ConfigEditError, match="model.lr is 1.0"):
        apply_edits(base, {"model.lr.x": 2})


@pytest.mark.parametrize("text, expected", [("a.b=[1,1]", ("a.b", [1, 1])), ("a=null", ("a", None)),
                                            ("a=none", ("a", "none")), ("a=2e-3", ("a", 2e-3)), ("a=v2", ("a", "v2")),
                                            ("a.b=x=y", ("a.b", "x=y"))])
def test_parse_assignment_reads_yaml_values(text, expected):
    assert parse_assignment(text) == expected


def test_bad_sweep_files_are_reported(tmp_path):
    (tmp_path / "dup.yaml").write_text("base: b.yaml\nvariants: [{name: a}, {name: a}]\n")
    (tmp_path / "typo.yaml").write_text("base: b.yaml\nvariants: [{name: a, overide: {}}]\n")
    with pytest.raises(SweepError, match="duplicate"):
        load_sweep(tmp_path / "dup.yaml")
    with pytest.raises(SweepError, match="unknown keys"):
        load_sweep(tmp_path / "typo.yaml")
    with pytest.raises(SweepError, match="unknown variant"):
        load_sweep(STL_SWEEP).select(["stl", "nope"])


# ------------------------------------------------------------------------------------ the runner
FAKE_FIT = textwrap.dedent("""
    import json, sys, pathlib, yaml
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    root = pathlib.Path(args["--trainer.default_root_dir"])
    mode = yaml.safe_load(open(args["--config"]))["fake"]["mode"]
    with open(root.parent / "calls.jsonl", "a") as calls:
        calls.write(json.dumps({"name": root.name, "ckpt": args.get("--ckpt_path")}) + "\\n")
    if mode == "fail":
        print("RuntimeError: loss is nan")
        sys.exit(3)
    if mode == "wait_for_sigterm":  # like fit's pre-emption callback: save on SIGTERM, exit cleanly
        import signal, time
        def save_and_exit(*_):
            (root / "checkpoints").mkdir(exist_ok=True)
            (root / "checkpoints" / "last.ckpt").write_text("saved on SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, save_and_exit)
        (root / "ready").write_text("")
        time.sleep(60)
        sys.exit(5)
    (root / "checkpoints").mkdir(exist_ok=True)
    (root / "checkpoints" / "last.ckpt").write_text("fake")
""")


@pytest.fixture
def fake_sweep(tmp_path):
    (tmp_path / "fake_fit.py").write_text(FAKE_FIT)
    (tmp_path / "base.yaml").write_text("fake: {mode: ok}\ntrainer: {max_epochs: 1}\n")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "variants": [
        {"name": "first"},
        {"name": "broken", "overrides": {"fake.mode": "fail"}},
        {"name": "bad_override", "overrides": {"trainer.max_epochs.x": 1}},
        {"name": "last"}]}))
    return tmp_path


def _grid(tmp_path, *args):
    fit = (sys.executable, str(tmp_path / "fake_fit.py"))
    return grid_main([str(tmp_path / "sweep.yaml"), "--runs", str(tmp_path / "runs"), *args], fit_command=fit,
                     check_config=False)


def _calls(tmp_path):
    lines = (tmp_path / "runs" / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_failing_variant_is_recorded_and_the_rest_still_run(fake_sweep, capsys):
    assert _grid(fake_sweep) == 1
    runs = fake_sweep / "runs"
    states = {name: read_status(runs / name)["state"] for name in ("first", "broken", "bad_override", "last")}
    assert states == {"first": "finished", "broken": "failed", "bad_override": "failed", "last": "finished"}
    broken = read_status(runs / "broken")
    assert broken["returncode"] == 3 and "loss is nan" in broken["error"]
    assert "trainer.max_epochs is 1" in read_status(runs / "bad_override")["error"]
    assert "broken: FAILED (RuntimeError: loss is nan)" in capsys.readouterr().out


def test_finished_variants_are_skipped_and_failed_ones_retried(fake_sweep):
    _grid(fake_sweep)
    _grid(fake_sweep)
    names = [call["name"] for call in _calls(fake_sweep)]
    assert names == ["first", "broken", "last", "broken"]


def test_an_interrupted_variant_resumes_from_its_last_checkpoint(fake_sweep):
    ckpt = fake_sweep / "runs" / "first" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("interrupted")  # a checkpoint but no 'finished' status: killed mid-run
    assert _grid(fake_sweep, "--only", "first", "last") == 0
    assert _calls(fake_sweep) == [{"name": "first", "ckpt": str(ckpt)}, {"name": "last", "ckpt": None}]
    assert find_last_checkpoint(fake_sweep / "runs" / "last").name == "last.ckpt"


def test_dry_run_prints_commands_and_configs_without_running(fake_sweep, capsys):
    assert _grid(fake_sweep, "--dry-run", "--set", "trainer.max_epochs=7") == 0
    out = capsys.readouterr().out
    assert not (fake_sweep / "runs").exists()
    assert out.count("--trainer.default_root_dir") == 4 and "trainer.max_epochs: 7" in out
    assert "fake.mode: fail" in out and "config:\n  fake: {mode: fail}" in out
    assert "# ERROR bad_override: cannot set trainer.max_epochs.x" in out


def test_emit_writes_one_command_per_variant_and_a_slurm_array(fake_sweep, capsys):
    assert _grid(fake_sweep, "--emit", "commands", "--set", "trainer.max_epochs=2") == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 4 and commands[1].endswith("--set trainer.max_epochs=2 --only broken")
    assert all(" sweep grid " in c for c in commands)  # the installed glnet: tests/e2e/test_first_hour.py
    assert _grid(fake_sweep, "--emit", "slurm", "--only", "first", "last") == 0
    script = capsys.readouterr().out
    assert "#SBATCH --array=0-1" in script and "NAMES=(first last)" in script
    assert script.rstrip().endswith('--only "$NAME"')
    assert not (fake_sweep / "runs").exists()


def test_unknown_variant_is_a_usage_error(fake_sweep, capsys):
    assert _grid(fake_sweep, "--only", "nope") == 2
    assert "unknown variant" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_real_tiny_fit_runs_resumably_and_logs_top1(tmp_path):
    """One real ``glnet fit`` subprocess on Fashion-MNIST with a tiny model and a few batches."""
    from glnet_lightning.analysis.tb_runs import read_top1

    sets = [*tiny_sets(), "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "data.init_args.batch_size=32", "data.init_args.num_workers=0", "model.slot_map_every_n_epochs=0"]
    args = [str(FASHION_SWEEP), "--runs", str(tmp_path), "--only", "local_only",
            *(arg for text in sets for arg in ("--set", text))]
    assert grid_main(args) == 0, (tmp_path / "local_only" / "fit.log").read_text()[-3000:]
    run_dir = tmp_path / "local_only"
    assert read_status(run_dir)["state"] == "finished"
    assert find_last_checkpoint(run_dir) is not None
    top1, tag = read_top1(run_dir)
    assert tag in ("test/acc1", "val/acc1") and 0.0 <= top1 <= 100.0
    assert grid_main(args) == 0  # finished: skipped, no second fit
    assert read_status(run_dir)["state"] == "finished"


def test_sub_config_files_are_inlined_so_the_written_config_resolves_anywhere(tmp_path):
    """ImageNet bases compose ``trainer: imagenet/trainer_8gpu.yaml``; a variant's config is written to its
    run directory, where that relative path would not resolve, and ``--set`` must reach keys inside it."""
    variant = load_sweep(STL_SWEEP).variants[0]
    config = variant.config({"trainer.max_epochs": 2})
    assert isinstance(config["trainer"], dict) and config["trainer"]["max_epochs"] == 2
    assert config["trainer"]["strategy"] == "ddp"  # from configs/imagenet/trainer_8gpu.yaml
    assert config["data"]["class_path"].endswith("ImageNetDataModule")

    (tmp_path / "a.yaml").write_text("trainer: b.yaml\n")
    (tmp_path / "b.yaml").write_text("max_epochs: a.yaml\n")
    (tmp_path / "sweep.yaml").write_text("base: a.yaml\nvariants:\n  - name: v\n    overrides: {}\n")
    with pytest.raises(ConfigEditError, match="cycle"):
        load_sweep(tmp_path / "sweep.yaml").variants[0].config()


@pytest.mark.slow
def test_sigterm_to_the_runner_reaches_the_running_fit_and_stops_the_sweep(fake_sweep):
    import signal
    import subprocess

    from testkit import signal_when

    runs = fake_sweep / "runs"
    (fake_sweep / "base.yaml").write_text("fake: {mode: wait_for_sigterm}\ntrainer: {max_epochs: 1}\n")
    script = (f"import sys; from glnet_lightning.cli.sweep import grid_main; sys.exit(grid_main("
              f"[{str(fake_sweep / 'sweep.yaml')!r}, '--runs', {str(runs)!r}, '--only', 'first', 'last'], "
              f"fit_command=({sys.executable!r}, {str(fake_sweep / 'fake_fit.py')!r}), check_config=False))")
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    signal_when(runner, (runs / "first" / "ready").exists, signal.SIGTERM, timeout=60)
    out = runner.stdout.read()
    assert runner.returncode == 128 + signal.SIGTERM
    assert (runs / "first" / "checkpoints" / "last.ckpt").read_text() == "saved on SIGTERM"
    assert read_status(runs / "first")["state"] == "interrupted"
    assert "interrupted by SIGTERM" in out and not (runs / "last").exists()  # the sweep stopped there
