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


@pytest.fixture(scope="session")
def conformance() -> Path:
    path = conformance_dir()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("conformance fixtures not found: expected ../shared/conformance or $GLNET_CONFORMANCE_DIR")
        pytest.skip("conformance fixtures not found (set GLNET_CONFORMANCE_DIR)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

