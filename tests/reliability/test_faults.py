"""Faults, provoked for real on ``glnet fit`` subprocesses of the tiny Fashion-MNIST config: SIGTERM
(pre-emption) saves and exits 143, SIGKILL in the middle of a checkpoint write leaves the previous
checkpoint loadable, a full disk is one clear error line; every resume continues at the saved step
with exactly the saved optimizer, scheduler, EMA and weights.

One run takes both signals (pre-empted, requeued, then killed, then resumed): the resumes continue the
same directory, as a user's would. (SIGKILL between checkpoints, in the middle of an epoch or after its
end, resumed to the uninterrupted run's weights bit for bit: tests/e2e/test_exact_resume.py.)"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess

import pytest
import torch

from glnet_lightning.cli.main import main
from testkit import console, one_error_line, progress, same, scalars, signal_when, subprocess_env, tiny_args

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 12
RESTORED = "--trainer.callbacks+=testkit.probes.DumpRestoredState"
PROGRESS = "--trainer.callbacks+=testkit.probes.MarkProgress"
# the write of last.ckpt at the end of the second (last) epoch is stopped half way
STALL = ('--trainer.callbacks+={"class_path": "testkit.probes.StallCheckpointWrite", '
         f'"init_args": {{"at_step": {2 * STEPS_PER_EPOCH}}}}}')


def assert_restored_exactly(run, saved: dict) -> None:
    """What the resumed run started from (testkit.probes.DumpRestoredState) is the checkpoint, bit for bit."""
    restored = torch.load(run / "restored.pt", weights_only=False)
    assert restored["global_step"] == saved["global_step"]
    assert same(restored["optimizer"], saved["optimizer_states"][0])
    assert same(restored["scheduler"], saved["lr_schedulers"][0])
    assert restored["ema"] is not None and same(restored["ema"], saved["ema_state_dict"])
    assert same(restored["state_dict"], saved["state_dict"])


def _load(path) -> dict:
    return torch.load(path, weights_only=False, map_location="cpu")


def test_sigterm_then_sigkill_mid_write_each_resume_exactly(fashion_mnist, tmp_path):
    env = subprocess_env()
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    last = checkpoints / "last.ckpt"
    args = [*tiny_args(run, train_batches=STEPS_PER_EPOCH, val_batches=1, epochs=2, test_after_fit=True),
            "--model.ema_decay=0.9", PROGRESS]

    # 1. SIGTERM in the middle of the first epoch, what SLURM sends on pre-emption: last.ckpt at that step, 143
    proc = subprocess.Popen(console("glnet") + ["fit", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    stderr = signal_when(proc, lambda: progress(run) >= 3, signal.SIGTERM)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    found = re.fullmatch(rf"glnet: stopped by SIGTERM: saved {re.escape(str(last))} at global step (\d+); "
                         r"resume with --ckpt_path last", message)
    assert found, message
    step = int(found.group(1))
    pre_empted = _load(last)
    assert pre_empted["global_step"] == step and 3 <= step < STEPS_PER_EPOCH  # the step it was working on
    assert not scalars(run, "test/acc1")  # --test_after_fit did not start

    # 2. the requeued job (same command + --ckpt_path last), SIGKILLed while it writes last.ckpt at the end
    proc = subprocess.Popen(console("glnet") + ["fit", *args, RESTORED, STALL, "--ckpt_path", "last"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = signal_when(proc, (run / "writing.marker").exists, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    assert_restored_exactly(run, pre_empted)
    (partial,) = checkpoints.glob(".last.ckpt.*.tmp")  # the interrupted write, with bytes in it
    assert partial.stat().st_size > 0
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(["best.ckpt", "last.ckpt", partial.name])
    epoch_end = _load(last)  # untouched and loadable: the end of epoch 0
    assert epoch_end["global_step"] == STEPS_PER_EPOCH and epoch_end["epoch"] == 0
    assert "ema_state_dict" in epoch_end

    # 3. resumed again (in process: no signal to send any more)
    assert main(["fit", *args, RESTORED, "--ckpt_path", "last"]) == 0
    assert_restored_exactly(run, epoch_end)
    assert [int(s) for s in (run / "start-steps.txt").read_text().split()] == [0, step, STEPS_PER_EPOCH]
    final = _load(last)
    assert final["global_step"] == 2 * STEPS_PER_EPOCH and final["epoch"] == 1
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]  # stale temp gone
    # validation logged at the steps of an uninterrupted run, and the test ran once training was done
    assert {s for s, _ in scalars(run, "val/acc1")} == {STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1}
    assert scalars(run, "test/acc1")


def _user_namespace_tmpfs() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in its own user namespace."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(fashion_mnist, tmp_path):
    env = subprocess_env()
    run = tmp_path / "run"
    checkpoints, kept = run / "checkpoints", tmp_path / "kept"
    checkpoints.mkdir(parents=True)
    args = [*tiny_args(run, train_batches=3, val_batches=1, epochs=2),
            "--trainer.callbacks+=testkit.probes.FillDisk"]
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
