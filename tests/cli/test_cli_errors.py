"""A bad config gives one ``glnet: error: ...`` line and exit code 2, before any data is read (in process,
but for the one test of the console scripts themselves)."""
from __future__ import annotations

from pathlib import Path

import pytest

from glnet_lightning.cli.main import main
from testkit import run_script

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FMNIST = str(CONFIGS / "fashion_mnist.yaml")
IMAGENET_STL = str(CONFIGS / "imagenet_glnet_stl.yaml")

# The data set (the system copy) is never read: reading it would end in a different error, on val_size.
NO_DATA = ["--data.init_args.val_size=60000"]


# (unknown model names and strategies, slot counts, kernel sizes, widths vs head_dim, the image size:
# tests/reliability/test_config_errors.py)
@pytest.mark.parametrize("override, message", [
    ("--model.backbone.fusion=sideways", "sideways"),
    ("--model.backbone.bogus=1", "bogus"),
    ("--model.lr=-1", "need lr > 0"),
    ("--trainer.max_epochs=abc", "trainer.max_epochs"),
    ("--trainer.strategy=warp_drive", "invalid strategy name"),
    ("--data.init_args.batch_size=0", "batch_size=0"),
    ("--model.no_such_option=1", "unknown option --model.no_such_option"),
    ("--trainer.max_step=3", "unknown option --trainer.max_step (did you mean --trainer.max_steps?)"),
])
def test_bad_value_gives_one_error_line(override, message, capsys, tmp_path):
    rc = main(["fit", "--config", FMNIST, "--trainer.default_root_dir", str(tmp_path),
               *NO_DATA, override])
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err_lines if line.startswith("glnet: error:")]
    assert rc == 2
    assert len(errors) == 1 and message in errors[0], err_lines
    assert not any("Traceback" in line for line in err_lines)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_is_one_line_too(capsys, tmp_path):
    rc = main(["fit", "--config", FMNIST, "--trainer.default_root_dir", str(tmp_path),
               "--data.init_args.root=/nonexistent/fmnist"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("glnet: error:")]
    assert rc == 2 and len(errors) == 1 and "/nonexistent/fmnist" in errors[0]


def test_imagenet_config_needs_only_data_root(capsys):
    rc = main(["fit", "--config", IMAGENET_STL])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("glnet: error:")]
    assert rc == 2 and len(errors) == 1 and "root" in errors[0]


def test_imagenet_config_rejects_missing_tree(capsys, tmp_path):
    rc = main(["fit", "--config", IMAGENET_STL, f"--data.init_args.root={tmp_path}/absent"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("glnet: error:")]
    assert rc == 2 and len(errors) == 1 and f"{tmp_path}/absent" in errors[0]


@pytest.mark.slow
def test_console_scripts_exist_and_report_an_error_with_status_2(tmp_path):
    """The installed scripts as a shell runs them (everything else here runs ``main`` in process): an
    error is status 2 and the whole of stderr is its one line, no traceback or warning around it."""
    glnet = run_script("glnet", ["frobnicate"], timeout=180)
    assert glnet.returncode == 2
    assert glnet.stderr.strip().splitlines() == [glnet.stderr.strip()]
    assert glnet.stderr.startswith("glnet: error: unknown command 'frobnicate'"), glnet.stderr

    # a bad setting goes through LightningCLI, as it does for ``glnet fit``
    lightning = run_script("lightning", ["fit", "--config", FMNIST, "--trainer.default_root_dir", str(tmp_path),
                                         "--model.backbone.num_slots=5"], timeout=180)
    assert lightning.returncode == 2
    lines = [line for line in lightning.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("lightning: error: model.backbone: num_slots=5"), \
        lightning.stderr
    assert not (tmp_path / "checkpoints").exists()
