"""The README's set-up on a stock Debian/Ubuntu Python, which refuses ``pip install`` outside a venv
(PEP 668, "externally-managed-environment"): ``bash scripts/setup.sh`` makes the project venv itself,
and the README's commands run from it. Uses the machine's system interpreter, /usr/bin/python3,
found first on PATH as on a fresh machine."""
from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    if not python.is_file():
        return False
    stdlib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").is_file()


@pytest.mark.slow
def test_setup_makes_a_venv_from_an_externally_managed_system_python(tmp_path):
    if not _externally_managed(SYSTEM_PYTHON):
        if os.environ.get("CI"):
            pytest.fail(f"{SYSTEM_PYTHON} is not an externally managed Python (the case this test is for)")
        pytest.skip(f"{SYSTEM_PYTHON} is not an externally managed Python")
    # on the bare system Python, pip refuses: that is what a venv-less README would run into
    refused = subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "install", "--dry-run", "glnet-lightning"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr + refused.stdout

    venv = tmp_path / "venv"
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHON")}
    env["PATH"] = os.pathsep.join(["/usr/bin", "/bin", "/usr/sbin", "/sbin"])  # python3 is the system one
    env["GLNET_VENV"] = str(venv)  # the README's .venv, elsewhere so the suite's own venv is untouched
    setup = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=1800)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    made_from = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
                               capture_output=True, text=True).stdout.strip()
    assert made_from == "/usr"  # the system interpreter's venv, not another Python's

    # the README's commands run from the venv's entry points
    version = subprocess.run([str(venv / "bin" / "glnet"), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0, version.stderr[-2000:]
    printed = subprocess.run([str(venv / "bin" / "lightning"), "fit", "--config", "configs/fashion_mnist.yaml",
                              "--print_config"], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert printed.returncode == 0 and "class_path: glnet_lightning.models.glnet.glnet_stl" in printed.stdout, printed.stderr[-3000:]
    pytest_version = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "--version"],
                                    capture_output=True, text=True, env=env)
    assert pytest_version.returncode == 0
    torch_version = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True, env=env).stdout
    assert torch_version.startswith("2.14.1")
    assert glob.glob(str(venv / "lib" / "python3*" / "site-packages" / "psycopg"))  # the sweeps extra
