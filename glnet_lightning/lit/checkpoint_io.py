"""Checkpoint writes that are atomic on local disks (user-given files are read by ``models/weights.read_checkpoint``).

Why: Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file
lives in the system temp directory; when that is another file system (tmpfs, a container layer,
node-local disk vs. shared storage) the final ``shutil.move`` degrades to copy-then-delete, i.e.
``last.ckpt`` is rewritten in place and a kill during the copy leaves it truncated. Here the
bytes go to a temporary file *next to* the target, are fsynced, and ``os.replace`` swaps it in —
so a reader sees either the old or the new checkpoint, never a partial one. Remote URLs keep
Lightning's behaviour.

A failed write (disk full, quota, I/O error) raises :class:`CheckpointWriteError` saying what
happened, how much space is left and that the previous file is intact; temp files left by a
killed writer (SIGKILL cannot be cleaned up after) are removed by the next successful save.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "atomic_torch_save"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file and what to do."""


def _write_error(exc: OSError, target: Path) -> CheckpointWriteError:
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {target.name} is intact" if target.exists() else f"no earlier {target.name} exists"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what, fix = "no space left on device", "Free space (or move --trainer.default_root_dir)"
    else:
        what, fix = exc.strerror or str(exc), "Fix the file system"
    error = CheckpointWriteError(f"cannot write checkpoint {target}: {what} ({free}); {kept}. "
                                 f"{fix}, then resume with --ckpt_path last")
    error.errno = exc.errno
    return error


class _RecordingWriter:
    """File-like wrapper keeping the ``OSError`` of a failed write, which ``torch.save`` would replace by
    a ``RuntimeError`` about stream positions."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _remove_stale_temps(target: Path, keep: str) -> None:
    """Temp files of earlier writes of ``target`` whose writer was killed before it could clean up."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        if stale.name != keep:
            stale.unlink(missing_ok=True)


def _is_local(path: str | os.PathLike) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a sibling temp file, fsync, then ``os.replace`` onto ``path``."""
    target = Path(str(path).removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _write_error(exc, target) from exc
    writer = _RecordingWriter(os.fdopen(fd, "wb"))
    try:
        with writer.handle:
            torch.save(obj, writer)
            writer.handle.flush()
            os.fsync(writer.handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = exc if isinstance(exc, OSError) else writer.error  # torch turns write errors into RuntimeError
        if cause is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise _write_error(cause, target) from exc
        raise
    _remove_stale_temps(target, keep=Path(tmp).name)
    try:  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through :func:`atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
