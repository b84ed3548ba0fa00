"""The README's set-up on a stock Debian/Ubuntu Python, which refuses ``pip install`` outside a venv
(PEP 668, "externally-managed-environment"): ``bash scripts/setup.sh`` makes the project venv itself,
and the README's commands run from it. Uses the machine's system interpreter, /usr/bin/python3,
found first on PATH as on a fresh machine.

Why the suite's own packages are lent to the new venv (``PYTHONPATH``, when the system Python has the
same minor version): setup.sh has just installed the pinned torch and every extra into the venv running
this test; with them visible, the new venv's own pip finds each requirement satisfied and installs only
the project instead of unpacking torch again (minutes). pip's log still shows every requirement setup.sh
asked for. Not lent: pip itself and the project, which the new venv must bring and install."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
#: what setup.sh asks pip for: the pinned torch and torchvision, the test extras (with the sweeps extra's driver)
REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1", "pytest>=8", "psycopg[binary]>=3.1")


def _system_python() -> tuple[bool, str]:
    """Whether /usr/bin/python3 is externally managed, and its ``major.minor`` version."""
    if not SYSTEM_PYTHON.is_file():
        return False, ""
    stdlib, version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys, sysconfig; print(sysconfig.get_path('stdlib')); "
                                   "print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True, text=True).stdout.split()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").is_file(), version


def _lend_packages(folder: Path) -> Path:
    """This venv's site-packages as a folder of links, without pip and without the project."""
    folder.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if entry.name == "pip" or entry.name.startswith(("pip-", "glnet_lightning", "__editable__")):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.slow
def test_setup_makes_a_venv_from_an_externally_managed_system_python(tmp_path):
    externally_managed, version = _system_python()
    if not externally_managed:
        if os.environ.get("CI"):
            pytest.fail(f"{SYSTEM_PYTHON} is not an externally managed Python (the case this test is for)")
        pytest.skip(f"{SYSTEM_PYTHON} is not an externally managed Python")
    # on the bare system Python, pip refuses: that is what a venv-less README would run into
    refused = subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "install", "--dry-run", "glnet-lightning"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr + refused.stdout

    venv, pip_log = tmp_path / "venv", tmp_path / "pip.log"
    env = {key: value for key, value in os.environ.items()
           if key not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHON", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(["/usr/bin", "/bin", "/usr/sbin", "/sbin"])  # python3 is the system one
    env["GLNET_VENV"] = str(venv)  # the README's .venv, elsewhere so the suite's own venv is untouched
    env["PIP_LOG"] = str(pip_log)  # pip's --log: every requirement, already satisfied or installed
    lent = version == f"{sys.version_info[0]}.{sys.version_info[1]}"  # compiled packages: same minor version
    if lent:
        env["PYTHONPATH"] = str(_lend_packages(tmp_path / "lent"))
    setup = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=1800)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    log = pip_log.read_text()
    used = {line.split(" from ")[1].split(" (python")[0] for line in log.splitlines() if " Using pip " in line}
    assert used and all(Path(pip).is_relative_to(venv) for pip in used), used  # the venv's own pip installed
    for requirement in REQUIREMENTS:
        assert f"Requirement already satisfied: {requirement} " in log or f"Collecting {requirement}" in log, \
            f"setup.sh did not ask pip for {requirement}"
    python = str(venv / "bin" / "python")
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    installed = {p["name"] for p in json.loads(subprocess.run(
        [python, "-m", "pip", "list", "--format", "json", "--path", str(site_packages)],
        capture_output=True, text=True, env=env, check=True).stdout)}
    assert "glnet-lightning" in installed  # into the venv itself
    if lent:  # and only the project (else this test spends minutes unpacking torch again)
        assert "torch" not in installed, installed

    # the venv is the system interpreter's, and has the project (from this repository), torch and the extras
    made = subprocess.run([python, "-c", "import sys, glnet_lightning, psycopg, torch; "
                                         "print(sys.base_prefix, torch.__version__, glnet_lightning.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)  # not the repository's folder
    assert made.returncode == 0, made.stderr[-2000:]
    base_prefix, torch_version, package = made.stdout.split()
    assert base_prefix == "/usr"  # the system interpreter's venv, not another Python's
    assert torch_version.startswith("2.14.1") and Path(package).is_relative_to(REPO)

    # the README's commands run from the venv's entry points
    glnet_version = subprocess.run([str(venv / "bin" / "glnet"), "--version"], capture_output=True, text=True, env=env)
    assert glnet_version.returncode == 0 and glnet_version.stdout.startswith("glnet-lightning "), \
        glnet_version.stderr[-2000:]
    printed = subprocess.run([str(venv / "bin" / "lightning"), "fit", "--config", "configs/fashion_mnist.yaml",
                              "--print_config"], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert printed.returncode == 0 and "class_path: glnet_lightning.models.glnet.glnet_stl" in printed.stdout, \
        printed.stderr[-3000:]
    pytest_version = subprocess.run([python, "-m", "pytest", "--version"], capture_output=True, text=True, env=env)
    assert pytest_version.returncode == 0, pytest_version.stderr[-2000:]
