#!/usr/bin/env bash
# Installs everything glnet-lightning needs into the current Python environment:
# the pinned torch/torchvision wheels, the package with its test extras, and, on
# Debian/Ubuntu, the embedded default data set (Fashion-MNIST as a system package,
# so nothing is downloaded at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if command -v dpkg >/dev/null 2>&1 && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] not root and no sudo: Fashion-MNIST will be downloaded by torchvision on first use"
  fi
fi

if [ -n "${CI:-}" ] && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  echo "[setup] CI has no internet: the Debian package dataset-fashion-mnist must be installed" >&2
  exit 1
fi

echo "[setup] installing torch, torchvision and glnet-lightning[test] with $PY"
$PY -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
$PY -m pip install -q --disable-pip-version-check -e ".[test]"
