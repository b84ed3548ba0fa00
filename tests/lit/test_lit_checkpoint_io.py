"""Atomic checkpoint writes: a failed save leaves the previous file intact and no stray temp files."""
from __future__ import annotations

import pytest
import torch

from glnet_lightning.lit import AtomicCheckpointIO
from glnet_lightning.lit import checkpoint_io


def test_save_replaces_atomically(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    assert io.load_checkpoint(target)["step"] == 1

    def torn_save(obj, handle, *args, **kwargs):  # writes half a file, then dies
        handle.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["step"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]

    io.save_checkpoint({"step": 3}, target)
    assert io.load_checkpoint(target)["step"] == 3
