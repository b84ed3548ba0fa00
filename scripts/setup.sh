#!/usr/bin/env bash
# Sets up glnet-lightning in a project virtual environment, .venv/ beside this script's parent:
# the pinned torch/torchvision wheels, the package with its test extras (which include the sweep
# and export extras), and, on Debian/Ubuntu, the system packages the project uses: the embedded
# default data set (Fashion-MNIST, so nothing is downloaded at run time) and PostgreSQL (the
# shared-study path of `glnet sweep optuna`, which the tests start a throwaway server of).
#
# A venv of our own is what makes this work on a stock Debian 12 / Ubuntu 24.04, whose system
# Python refuses `pip install` (PEP 668, "externally-managed-environment"). The README's
# commands run .venv/bin/...; re-running this script reuses the venv and installs only what is
# missing.
#
# Settings (environment variables):
#   PYTHON=python3.11   interpreter the venv is made from (default: python3)
#   GLNET_VENV=DIR      where the venv lives (default: .venv in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${GLNET_VENV:-.venv}

if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO=none; fi
apt_updated=""
apt_install() {  # apt_install PACKAGE...: install Debian packages when we may, else say why not
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup] cannot install $* (not root, no sudo, or no apt-get): install it yourself" >&2
    return 1
  fi
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  echo "[setup] installing Debian package(s): $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
have_deb() { command -v dpkg >/dev/null 2>&1 && dpkg -s "$1" >/dev/null 2>&1; }

if command -v dpkg >/dev/null 2>&1; then
  have_deb dataset-fashion-mnist || apt_install dataset-fashion-mnist \
    || echo "[setup] Fashion-MNIST will be downloaded by torchvision on first use"
  have_deb postgresql || apt_install postgresql \
    || echo "[setup] no PostgreSQL: the shared-study tests will be skipped (they fail under CI=true)"
fi
if [ -n "${CI:-}" ] && ! have_deb dataset-fashion-mnist; then
  echo "[setup] CI has no internet: the Debian package dataset-fashion-mnist must be installed" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating the project venv $VENV from $($PY -c 'import sys; print(sys.executable)')"
  if ! $PY -m venv "$VENV" 2>/dev/null; then
    # Debian/Ubuntu ship venv's pip bootstrap separately (python3.X-venv).
    rm -rf "$VENV"
    ver=$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python$ver-venv" || { echo "[setup] '$PY -m venv' failed: install python$ver-venv" >&2; exit 1; }
    $PY -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"

echo "[setup] installing torch, torchvision and glnet-lightning[test] into $VENV"
"$VPY" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
"$VPY" -m pip install -q --disable-pip-version-check -e ".[test]"
echo "[setup] done: run commands as $VENV/bin/glnet, $VENV/bin/lightning, $VENV/bin/python -m pytest"
