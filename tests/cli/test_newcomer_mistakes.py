"""The mistakes of a newcomer's first hour with ``glnet fit|validate`` and the argparse commands: each is one
``<prog>: error:`` line that says what to do (in process; named after the mistake, so the list keeps itself)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from glnet_lightning.cli.lightning_cli import CPU_OVERRIDES
from glnet_lightning.cli.main import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FMNIST = str(CONFIGS / "fashion_mnist.yaml")
IMAGENET_4G = str(CONFIGS / "imagenet_glnet_4g.yaml")


def error_lines(capsys, prog: str = "glnet") -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{prog}: error:")]


@pytest.mark.parametrize("gpus", [0, 1])
def test_gpu_config_on_a_machine_without_the_gpus_names_the_overrides(gpus, imagenet_tree, tmp_path, capsys,
                                                                     monkeypatch):
    """The 8-GPU ImageNet recipe on a CPU box (or a one-GPU box) stops in one line naming what runs it here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    code = main(["validate", "--config", IMAGENET_4G, "--data.root", str(imagenet_tree),
                 "--trainer.default_root_dir", str(tmp_path)])
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1, errors
    expected = CPU_OVERRIDES if gpus == 0 else "--trainer.devices 1"
    assert expected in errors[0]


def test_gpu_config_with_the_stated_cpu_overrides_gets_past_the_device_check(imagenet_tree, tmp_path, capsys):
    """The overrides the error names are the ones that work (here up to --print_config)."""
    code = main(["validate", "--config", IMAGENET_4G, "--data.root", str(imagenet_tree), *CPU_OVERRIDES.split(),
                 "--print_config"])
    assert code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["accelerator"] == "cpu" and config["trainer"]["precision"] == "32-true"


@pytest.mark.parametrize("typo, meant", [("--trainer.max_step", "--trainer.max_steps"),
                                         ("--trainer.max_epoch", "--trainer.max_epochs"),
                                         ("--model.ema_deacy", "--model.ema_decay")])
def test_an_option_prefix_or_typo_is_not_taken_for_another_option(typo, meant, tmp_path, capsys):
    code = main(["fit", "--config", FMNIST, "--trainer.default_root_dir", str(tmp_path), typo, "3"])
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1 and f"unknown option {typo} (did you mean {meant}?)" in errors[0], errors


def test_a_misspelled_key_in_a_config_file_names_the_closest_key(tmp_path, capsys):
    extra = tmp_path / "mine.yaml"
    extra.write_text("trainer:\n  max_step: 3\n")
    code = main(["fit", "--config", FMNIST, "--config", str(extra), "--trainer.default_root_dir", str(tmp_path)])
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1 and "--trainer.max_step (did you mean --trainer.max_steps?)" in errors[0]


@pytest.mark.parametrize("argv, prog, meant", [
    (["sweep", "grid", "sweeps/ablation_fashion_mnist.yaml", "--dry-ru"], "glnet sweep grid", "--dry-run"),
    (["sweep", "optuna", "sweeps/optuna_slots_kernel.yaml", "--n-trial", "2"], "glnet sweep optuna", "--n-trials"),
    (["bench", "glnet_stl", "--batch", "2"], "glnet bench", "--batch-size"),
    (["export", "x.ckpt", "--fromat", "onnx"], "glnet export", "--format"),
])
def test_argparse_commands_match_no_prefix_and_name_the_closest_option(argv, prog, meant, capsys):
    code = main(argv)
    errors = error_lines(capsys, prog)
    assert code == 2 and len(errors) == 1 and f"(did you mean {meant}?)" in errors[0], errors


def test_a_misspelled_command_names_the_closest(capsys):
    assert main(["swep"]) == 2
    assert "unknown command 'swep' (did you mean sweep?)" in error_lines(capsys)[0]


def test_fit_help_shows_the_data_options_in_plain_words(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--data.root DIR" in out and "--data.help ImageNetDataModule" in out
    markup = [line for line in out.splitlines() if "``" in line or ":meth:`" in line or ":class:`" in line]
    assert markup == []


@pytest.mark.parametrize("name, option", [("ImageNetDataModule", "--data.streaming"),
                                          ("FashionMNISTDataModule", "--data.val_size")])
def test_data_help_takes_the_short_class_name(name, option, capsys):
    assert main(["fit", "--data.help", name]) == 0
    assert option in capsys.readouterr().out


def test_model_help_says_where_the_model_options_are(capsys):
    assert main(["fit", "--model.help", "GLNetModule"]) == 2
    assert "--model.backbone.help glnet_stl" in error_lines(capsys)[0]


def test_a_fresh_fit_into_a_used_run_directory_says_how_to_resume(tmp_path, capsys):
    """One directory is one run: no silent ``last-v1.ckpt`` beside another run's ``last.ckpt``."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")  # never read: the check comes first
    code = main(["fit", "--config", FMNIST, "--trainer.default_root_dir", str(tmp_path)])
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1 and "--ckpt_path last" in errors[0] and "--trainer.default_root_dir" in \
        errors[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "last.ckpt"]  # nothing written


@pytest.mark.parametrize("command", [["export", "{best}", "--format", "onnx"], ["viz", "{best}", "--out", "{out}"]])
def test_best_checkpoint_of_a_run_that_never_validated_points_to_last(command, tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.ckpt").write_bytes(b"")
    argv = [a.format(best=checkpoints / "best.ckpt", out=tmp_path / "figures") for a in command]
    assert main(argv) == 2
    errors = error_lines(capsys, f"glnet {command[0]}")
    assert len(errors) == 1 and f"use {checkpoints / 'last.ckpt'}" in errors[0], errors


def test_an_error_in_a_loader_worker_is_its_own_one_line(tmp_path):
    """torch re-raises a worker's error with the worker's whole traceback as its message; the user sees the
    error's own line (a broken image or label file named), not the traceback joined into one line."""
    from torch.utils.data import DataLoader, Dataset

    from glnet_lightning.cli.lightning_cli import _one_line
    from glnet_lightning.data import UnreadableImageError

    class Broken(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            raise UnreadableImageError(f"cannot read image {tmp_path}/a.JPEG: truncated")

    with pytest.raises(UnreadableImageError) as caught:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # what torch gives
    assert _one_line(caught.value) == f"cannot read image {tmp_path}/a.JPEG: truncated"


def test_a_tree_with_one_class_folder_says_a_classifier_needs_two(tmp_path, capsys):
    from testkit import jpeg_tree

    root = jpeg_tree(tmp_path / "tree", ["n00000001"], {"train": 2, "val": 1}, sizes=[(40, 40)])
    code = main(["fit", "--config", IMAGENET_4G, "--data.root", str(root), *CPU_OVERRIDES.split(),
                 "--trainer.default_root_dir", str(tmp_path / "run")])
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1 and "at least 2 class folders" in errors[0], errors
