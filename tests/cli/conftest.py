"""Fixtures for the CLI tests: the repo's configs shrunk to a tiny, fast run, and a way to run the
console scripts as a user would (subprocesses), falling back to ``python -c`` when not installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PROBE_DIR = Path(__file__).resolve().parent

# Shrinks configs/fashion_mnist.yaml to seconds: 4-block GLNet, 32-image batches, few batches.
TINY_MODEL = "{depths: [1, 1, 1, 1], dims: [16, 32, 48, 64], head_dim: 16, stage_mixers: [glmix, glmix, glmix, glmix], num_slots: 4}"


def tiny_args(root: Path, train_batches: int = 4, val_batches: int = 2, epochs: int = 1,
              test_after_fit: bool = False) -> list[str]:
    return [
        "--config", str(CONFIGS / "fashion_mnist.yaml"),
        f"--test_after_fit={str(test_after_fit).lower()}",
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", str(epochs),
        "--trainer.limit_train_batches", str(train_batches),
        "--trainer.limit_val_batches", str(val_batches),
        "--trainer.limit_test_batches", "2",
        "--trainer.limit_predict_batches", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        f"--model.backbone={TINY_MODEL}",
        "--model.warmup_epochs", "0",
        "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "0",
    ]


def console(script: str) -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    beside = Path(sys.executable).parent / script  # the venv's own script, even when it is not activated
    if beside.is_file():
        return [str(beside)]
    path = shutil.which(script)
    if path:
        return [path]
    func = {"glnet": "main", "lightning": "lightning_main"}[script]
    return [sys.executable, "-c", f"import sys; from glnet_lightning.cli.main import {func}; sys.exit({func}())"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE_DIR), env.get("PYTHONPATH")]))
    # Idle OpenMP threads sleep instead of spinning: on 2 shared cores spinning threads of concurrent
    # processes slow each other down by an order of magnitude.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_script(script: str, args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(console(script) + args, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(), cwd=REPO, **kwargs)


@pytest.fixture(name="tiny_args")
def tiny_args_fixture():
    return tiny_args


@pytest.fixture(name="run_script")
def run_script_fixture():
    return run_script


@pytest.fixture(name="console")
def console_fixture():
    return console


@pytest.fixture(name="subprocess_env")
def subprocess_env_fixture():
    return subprocess_env
