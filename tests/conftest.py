"""Shared test fixtures: where the reference conformance files live, tiny model settings."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def conformance_dir() -> Path | None:
    """The reference fixtures kept with the tests (tests/models/conformance), or $GLNET_CONFORMANCE_DIR."""
    candidates = [os.environ.get("GLNET_CONFORMANCE_DIR"), REPO / "tests" / "models" / "conformance"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def required(found: Path | None, missing: str) -> Path:
    """Tests that need an external file skip on a developer's machine without it, but fail in CI."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return found


@pytest.fixture(scope="session")
def conformance() -> Path:
    return required(conformance_dir(), "conformance fixtures not found: expected tests/models/conformance "
                                       "or $GLNET_CONFORMANCE_DIR")


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    from glnet_lightning.data import find_system_fashion_mnist

    return required(find_system_fashion_mnist(), "Fashion-MNIST not installed: the Debian package "
                                                 "dataset-fashion-mnist is required")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)



# ------------------------------------------------------------------------------------ PostgreSQL
# A throwaway server for the shared-study tests: started in a temp dir on a free localhost port
# (initdb + pg_ctl, as user postgres when the tests run as root, since PostgreSQL refuses to run
# as root), stopped at the end. No mock: Optuna talks to a real server.
def _pg_bin() -> Path | None:
    """The server binaries: Debian's versioned folder (newest first), else the folder of pg_ctl on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]), reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and (Path(on_path).parent / "createdb").exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/optuna`` of a fresh server, removed after the test."""
    bin_dir = required(_pg_bin(), "PostgreSQL server not installed (Debian package postgresql; scripts/setup.sh "
                                  "installs it)")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's default driver for postgresql:// URLs)
    except ImportError:
        required(None, "the PostgreSQL driver psycopg is missing: pip install 'glnet-lightning[sweeps]'")
    folder = Path(tempfile.mkdtemp(prefix="glnet-postgres-"))  # pytest's tmp dirs are private to root
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*command: str) -> None:
        result = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command[0]} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
