"""Faults, provoked for real on ``glnet fit`` subprocesses of the tiny Fashion-MNIST config: SIGTERM
(pre-emption) saves and exits 143, SIGKILL in the middle of a checkpoint write leaves the previous
checkpoint loadable, a full disk is one clear error line; every resume continues at the saved step
with exactly the saved optimizer, scheduler, EMA and weights."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

STALL = '--trainer.callbacks+={"class_path": "reliability_probe.StallCheckpointWrite", "init_args": {"at_step": 6}}'
RESTORED = "--trainer.callbacks+=reliability_probe.DumpRestoredState"
PROGRESS = "--trainer.callbacks+=run_probe.MarkProgress"


def _progress(run: Path) -> int:
    try:
        return int((run / "progress.txt").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def assert_restored_exactly(run: Path, saved: dict) -> None:
    """What the resumed run started from (reliability_probe.DumpRestoredState) is the checkpoint, bit for bit."""
    restored = torch.load(run / "restored.pt", weights_only=False)
    assert restored["global_step"] == saved["global_step"]
    assert _equal(restored["optimizer"], saved["optimizer_states"][0])
    assert _equal(restored["scheduler"], saved["lr_schedulers"][0])
    assert restored["ema"] is not None and _equal(restored["ema"], saved["ema_state_dict"])
    assert _equal(restored["state_dict"], saved["state_dict"])


def _resume(console, env, args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(console("glnet") + ["fit", *args, RESTORED, "--ckpt_path", "last"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_sigterm_saves_last_and_the_requeued_run_resumes_exactly(fashion_mnist, console, env, tiny_args, signal_when,
                                                                  tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    args = [*tiny_args(run, train_batches=16, val_batches=1, epochs=1), "--model.ema_decay=0.9", PROGRESS]
    proc = subprocess.Popen(console("glnet") + ["fit", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    stderr = signal_when(proc, lambda: _progress(run) >= 3, signal.SIGTERM)  # what SLURM sends on pre-emption
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    found = re.fullmatch(rf"glnet: stopped by SIGTERM: saved {re.escape(str(last))} at global step (\d+); "
                         r"resume with --ckpt_path last", message)
    assert found, message
    step = int(found.group(1))
    saved = torch.load(last, weights_only=False, map_location="cpu")
    assert saved["global_step"] == step and 3 <= step < 16  # mid-epoch: the step it was working on
    assert not list(run.glob("events.out.tfevents.*.test*"))  # --test_after_fit did not start

    _resume(console, env, args)  # the requeued job: same command + --ckpt_path last
    assert_restored_exactly(run, saved)
    assert [int(s) for s in (run / "start-steps.txt").read_text().split()] == [0, step]
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 16
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(fashion_mnist, console, env, tiny_args,
                                                                   signal_when, tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    # 3 steps per epoch; the write of last.ckpt at step 6 is killed half way
    args = [*tiny_args(run, train_batches=3, val_batches=1, epochs=2), "--model.ema_decay=0.9", PROGRESS]
    proc = subprocess.Popen(console("glnet") + ["fit", *args, STALL], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    signal_when(proc, (run / "writing.marker").exists, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    (partial,) = last.parent.glob(".last.ckpt.*.tmp")  # the interrupted write, with bytes in it
    assert partial.stat().st_size > 0
    saved = torch.load(last, weights_only=False, map_location="cpu")  # untouched: end of epoch 0
    assert saved["global_step"] == 3 and saved["epoch"] == 0

    _resume(console, env, args)
    assert_restored_exactly(run, saved)
    assert [int(s) for s in (run / "start-steps.txt").read_text().split()] == [0, 3]
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 6
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]  # stale temp gone


def _user_namespace_tmpfs() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in its own user namespace."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(fashion_mnist, console, env,
                                                                              tiny_args, one_error_line, tmp_path):
    run = tmp_path / "run"
    checkpoints, kept = run / "checkpoints", tmp_path / "kept"
    checkpoints.mkdir(parents=True)
    args = [*tiny_args(run, train_batches=3, val_batches=1, epochs=2),
            "--trainer.callbacks+=reliability_probe.FillDisk"]
    command = console("glnet") + ["fit", *args]
    if _user_namespace_tmpfs():
        # checkpoints/ becomes a real 16 MiB file system; FillDisk fills it after epoch 0. Its content
        # is copied out before the namespace (and the mount) goes away.
        env = {**env, "RELIABILITY_TMPFS": "1"}
        command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                   'mount -t tmpfs -o size=16m tmpfs "$0" && "$@"; rc=$?; rm -f "$0/filler.bin"; '
                   'cp -a "$0" "$0.kept"; exit $rc', str(checkpoints), *command]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if "RELIABILITY_TMPFS" in env:
        shutil.move(f"{checkpoints}.kept", kept)
    else:
        kept = checkpoints
    line = one_error_line(result.stderr)
    assert result.returncode == 2
    # the first write of epoch 1 fails (best.ckpt if the score improved, else last.ckpt)
    found = re.search(rf"cannot write checkpoint {re.escape(str(checkpoints))}/(best|last)\.ckpt: "
                      r"no space left on device \(.* free there\); the previous \1\.ckpt is intact\. "
                      r"Free space .* then resume with --ckpt_path last", line)
    assert found, line
    for name in ("best.ckpt", "last.ckpt"):  # epoch 0's checkpoints, complete
        assert torch.load(kept / name, weights_only=False, map_location="cpu")["global_step"] == 3
    assert sorted(p.name for p in kept.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temp file left behind
