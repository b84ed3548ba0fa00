"""Fixtures for the reliability tests (issue #9): the CLI and Lightning helpers of tests/cli and
tests/lit, reused as they are, plus this directory on the path so runs can load ``reliability_probe``
callbacks (``--trainer.callbacks+=reliability_probe.X``), in process and in subprocesses."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent


def _load(name: str, path: Path):
    """Import a sibling test directory's conftest under its own name (pytest runs with importlib mode)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# probe callbacks are named by module path in configs (reliability_probe.X, run_probe.X)
for _path in (HERE, TESTS / "cli"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

cli = _load("reliability_cli_conftest", TESTS / "cli" / "conftest.py")
lit = _load("reliability_lit_conftest", TESTS / "lit" / "conftest.py")

# the same fixtures as tests/cli and tests/lit
tiny_args_fixture = cli.tiny_args_fixture
run_script_fixture = cli.run_script_fixture
console_fixture = cli.console_fixture
tiny_kwargs = lit.tiny_kwargs
make_trainer_fixture = lit.make_trainer_fixture
images_cls = lit.images_cls


@pytest.fixture(name="env")
def env_fixture():
    """``subprocess_env()`` of tests/cli with this directory on PYTHONPATH too."""
    env = cli.subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env["PYTHONPATH"]])
    return env


def one_error_line(stderr: str, prog: str = "glnet") -> str:
    """The single ``<prog>: error: ...`` line of ``stderr``; fails on a traceback or several errors."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert not any("Traceback" in line for line in lines), stderr[-3000:]
    return errors[0]


def signal_when(proc: subprocess.Popen, ready, signum: int, timeout: float = 240) -> str | None:
    """Wait until ``ready()`` (failing if the process ends first or time runs out), send ``signum``,
    wait for the process to end; returns its stderr when piped. The process never outlives the call."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the run ended early with {proc.returncode}"
            assert time.monotonic() < deadline, "timed out waiting for the run"
            time.sleep(0.1)
        proc.send_signal(signum)
        return proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(name="signal_when")
def signal_when_fixture():
    return signal_when


@pytest.fixture(name="one_error_line")
def one_error_line_fixture():
    return one_error_line

