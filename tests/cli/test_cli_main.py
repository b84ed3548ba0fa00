"""``glnet`` dispatcher, in process: help lists every command, unknown commands fail cleanly, bench is wired.
(The console scripts themselves: tests/cli/test_cli_errors.py::test_console_scripts_exist_and_report_an_error_with_status_2.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from glnet_lightning.cli.main import COMMANDS, main


def test_help_lists_all_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "bench", "sweep", "ablation"):
        assert f"  {name} " in out
    assert set(COMMANDS) >= {"fit", "validate", "test", "predict", "bench"}


def test_no_command_and_unknown_command(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("glnet: error: unknown command 'frobnicate'")


def test_bench_is_dispatched(capsys):
    assert main(["bench", "--help"]) == 0
    assert "glnet bench" in capsys.readouterr().out


def test_training_subcommand_help(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--ckpt_path" in out and "--checkpoint.monitor" in out and "--model.backbone" in out


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_other_lightning_subcommands_exist(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--ckpt_path" in capsys.readouterr().out


def test_sweep_and_ablation_groups_are_dispatched(capsys):
    sweep_file = Path(__file__).resolve().parents[2] / "sweeps" / "ablation_stl.yaml"
    assert main(["sweep", "grid", str(sweep_file), "--dry-run", "--only", "local_only"]) == 0
    out = capsys.readouterr().out
    assert "local_only" in out and "global_branch" in out
    assert main(["sweep", "optuna", "--help"]) == 0
    assert main(["sweep", "report", "--help"]) == 0
    assert main(["ablation", "table", "--help"]) == 0
    capsys.readouterr()
    assert main(["sweep", "gird"]) == 2
    assert "unknown sub-command 'gird' (did you mean grid?); choose from grid, optuna, report" in capsys.readouterr().err


def test_a_batch_count_of_one_is_one_batch_not_the_whole_epoch(capsys):
    """Lightning types the limits Optional[Union[int, float]], which typing's union cache can hand back as
    Union[float, int, None]; then "1" parsed as 1.0 meant 100 % of the epoch (GLNetTrainer retypes them)."""
    import yaml

    fmnist = str(Path(__file__).resolve().parents[2] / "configs" / "fashion_mnist.yaml")
    assert main(["fit", "--config", fmnist, "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches",
                 "0.25", "--trainer.val_check_interval", "2", "--print_config"]) == 0
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["limit_train_batches"] == 1 and isinstance(trainer["limit_train_batches"], int)
    assert trainer["limit_val_batches"] == 0.25 and isinstance(trainer["val_check_interval"], int)
