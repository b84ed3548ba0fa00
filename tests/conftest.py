"""Shared test fixtures: where the reference conformance files live, tiny model settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def conformance_dir() -> Path | None:
    """../shared/conformance beside the checkout (CI lays it there), or $GLNET_CONFORMANCE_DIR."""
    candidates = [os.environ.get("GLNET_CONFORMANCE_DIR"), REPO.parent / "shared" / "conformance"]
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
    return required(conformance_dir(), "conformance fixtures not found: expected ../shared/conformance "
                                       "or $GLNET_CONFORMANCE_DIR")


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    from glnet_lightning.data import find_system_fashion_mnist

    return required(find_system_fashion_mnist(), "Fashion-MNIST not installed: the Debian package "
                                                 "dataset-fashion-mnist is required")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

