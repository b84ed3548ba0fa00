"""A pre-empted run resumes to the weights the uninterrupted run ends with, bit for bit.

Each data path trains the same short run (2 epochs, validation in the middle and at the end of each)
twice, as ``glnet fit`` subprocesses: once left alone, and once interrupted three times in the same run
directory, each time resumed with ``--ckpt_path last``:

1. SIGKILL after the step checkpoint of step 4 (``last_every_n_steps``), in the first epoch;
2. SIGKILL after the checkpoint at the end of the first epoch: the resumed run begins the next epoch's
   order and augmentations;
3. SIGTERM between step checkpoints, in the second epoch: the project saves ``last.ckpt`` and exits 143.

``testkit.probes.HoldAfterStep`` holds the run at the chosen step until the signal arrives, so every
interruption lands where it is meant to. Random crops, flips, RandAugment, random erasing, drop path,
Mixup/CutMix, EMA and mid-epoch validation all run, so every random stream and every piece of loop state
has to continue where it stopped, three times over. The final ``last.ckpt`` must equal the uninterrupted
one tensor by tensor (weights, optimizer, scheduler, EMA, step), and each rank's batches of the last
resumed process must be the uninterrupted run's last batches.

The reference run starts first and trains while the interrupted one is stopped and resumed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from testkit import (CPU_OVERRIDES, REPO, console, fit_args, max_difference, progress, signal_when,
                     subprocess_env, tiny_flow, tiny_sets)

pytestmark = pytest.mark.slow

STEP_CHECKPOINT_EVERY = 4
PROBES = ["testkit.probes.MarkProgress", "testkit.probes.RecordBatches"]


def hold_after(step: int) -> dict:
    """The callback (class path and arguments) that holds a run after optimizer step ``step``."""
    return {"class_path": "testkit.probes.HoldAfterStep", "init_args": {"step": step}}


def _common(root: Path, steps_per_epoch: int) -> list[str]:
    return [
        "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", str(steps_per_epoch), "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", str(steps_per_epoch // 2),  # validation inside the epoch
        "--trainer.num_sanity_val_steps", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        f"--model.backbone={tiny_flow()}",
        "--model.warmup_epochs", "1",  # the first resume (step 4) is in the warm-up, the others in the cosine
        "--model.drop_path_rate", "0.1", "--model.mixup", "0.8", "--model.cutmix", "1.0",
        "--model.ema_decay", "0.9", "--model.slot_map_every_n_epochs", "0",
        "--checkpoint.last_every_n_steps", str(STEP_CHECKPOINT_EVERY),
        *(f"--trainer.callbacks+={probe}" for probe in PROBES),
    ]


def fashion_args(root: Path, steps_per_epoch: int) -> list[str]:
    """configs/fashion_mnist.yaml, a tiny model, no loader workers (augmentations in the training process)."""
    return ["--config", str(REPO / "configs" / "fashion_mnist.yaml"), "--test_after_fit", "false",
            *_common(root, steps_per_epoch), "--data.batch_size", "16", "--data.crop_padding", "4",
            "--data.num_workers", "0"]


def imagenet_args(root: Path, source: list[str], steps_per_epoch: int, batch_size: int,
                  devices: int = 1) -> list[str]:
    """configs/imagenet_glnet_stl.yaml on the CPU (the e2e overrides), a tiny model, 32 px, 2 workers."""
    cpu = {**CPU_OVERRIDES, "trainer.devices": devices, "trainer.strategy": "ddp" if devices > 1 else "auto",
           "data.batch_size": batch_size, "data.num_workers": 2, "data.image_size": 32}
    for key in ("trainer.max_epochs", "trainer.limit_train_batches", "trainer.limit_val_batches"):
        del cpu[key]  # set by _common
    return ["--config", str(REPO / "configs" / "imagenet_glnet_stl.yaml"), *fit_args(cpu), *source,
            *_common(root, steps_per_epoch)]


def _start(args: list[str], stderr=subprocess.PIPE) -> subprocess.Popen:
    """``glnet ARGS`` in a process group of its own (a SIGKILL to the group: DDP ranks and workers too)."""
    return subprocess.Popen(console("glnet") + args, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=stderr, text=True, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """End a process started by :func:`_start` that is still running, with its group (ranks, workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(log, chars: int | None = 4000) -> str:
    log.seek(0)
    return log.read()[-chars:] if chars else log.read()


def _final(run: Path) -> dict:
    from glnet_lightning.sweeps.grid import find_last_checkpoint

    return torch.load(find_last_checkpoint(run), map_location="cpu", weights_only=True)


def assert_same_final_state(reference: Path, resumed: Path) -> None:
    ref, got = _final(reference), _final(resumed)
    assert got["global_step"] == ref["global_step"]
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "ema_state_dict"):
        assert max_difference(ref[key], got[key]) == 0.0, f"{key} differs from the uninterrupted run's"


def assert_same_batches(reference: Path, resumed: Path, world_size: int) -> None:
    """Each rank's batches of the last resumed process are the last batches of the uninterrupted run
    (testkit.probes.RecordBatches: labels and per-image sums, so the augmentations too)."""
    for rank in range(world_size):
        ref = torch.load(reference / f"seen-rank{rank}.pt", weights_only=True)
        got = torch.load(resumed / f"seen-rank{rank}.pt", weights_only=True)
        assert got["world_size"] == ref["world_size"] == world_size
        tail = len(ref["labels"]) - len(got["labels"])
        assert 0 < tail < len(ref["labels"])
        for key in ("labels", "images"):
            assert all(torch.equal(a, b) for a, b in zip(ref[key][tail:], got[key])), f"rank {rank}: {key} differ"


def interruptions(steps_per_epoch: int) -> list[tuple[int, signal.Signals, int]]:
    """(hold after step, signal, step of the ``last.ckpt`` it leaves), in the order they happen. The
    SIGTERM comes at a step of the second epoch with neither a step checkpoint nor a validation (which
    refreshes ``last.ckpt`` too), so the checkpoint it leaves is the one written on the way out."""
    assert STEP_CHECKPOINT_EVERY + 1 < steps_per_epoch
    term_at = next(step for step in range(steps_per_epoch + 1, 2 * steps_per_epoch)
                   if step % STEP_CHECKPOINT_EVERY and step % (steps_per_epoch // 2))
    return [(STEP_CHECKPOINT_EVERY + 1, signal.SIGKILL, STEP_CHECKPOINT_EVERY),  # after a step checkpoint
            (steps_per_epoch + 1, signal.SIGKILL, steps_per_epoch),  # after the epoch-end checkpoint
            (term_at, signal.SIGTERM, term_at)]


def interrupt(proc: subprocess.Popen, run: Path, hold: int, signum: int, saved_step: int) -> None:
    """Signal the run held after step ``hold``; it must end as that signal ends it, leaving ``saved_step``."""
    stderr = signal_when(proc, lambda: (run / f"held-at-{hold}").exists(), signum, group=signum == signal.SIGKILL)
    assert proc.returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL), stderr[-3000:]
    assert progress(run) == hold
    assert _final(run)["global_step"] == saved_step
    (run / f"held-at-{hold}").unlink()  # the next process may hold at the same step


def check_resumes_exactly(make_args: Callable[[Path], list[str]], tmp_path: Path, steps_per_epoch: int,
                          world_size: int = 1) -> None:
    """The reference run, in the background; the interrupted run, stopped three times and resumed each
    time (1 + 4 ``glnet fit`` processes); then both end states compared."""
    reference, run = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir()
    with open(tmp_path / "reference.log", "w+") as reference_log:
        uninterrupted = _start(["fit", *make_args(reference)], stderr=reference_log)
        try:
            resume: list[str] = []
            for hold, signum, saved_step in interruptions(steps_per_epoch):
                proc = _start(["fit", *make_args(run), "--trainer.callbacks+=" + json.dumps(hold_after(hold)), *resume])
                interrupt(proc, run, hold, signum, saved_step)
                resume = ["--ckpt_path", "last"]
            last = subprocess.run(console("glnet") + ["fit", *make_args(run), *resume], env=subprocess_env(),
                                  capture_output=True, text=True, timeout=600)
            assert last.returncode == 0, last.stderr[-4000:]
            assert uninterrupted.wait(timeout=600) == 0, _tail(reference_log)
        finally:
            _stop(uninterrupted)
        # DDP: parameters in the layout their gradients arrive in (no copy into the buckets every step)
        assert "Grad strides do not match bucket view strides" not in _tail(reference_log, None)

    starts = [int(s) for s in (run / "start-steps.txt").read_text().split()]
    assert starts == [0] + [saved for _, _, saved in interruptions(steps_per_epoch)]
    assert_same_final_state(reference, run)
    assert_same_batches(reference, run, world_size)


def test_fashion_mnist_resumes_to_the_same_weights(fashion_mnist, tmp_path):
    """No loader workers: the augmentations draw from the training process's random state."""
    check_resumes_exactly(lambda run: fashion_args(run, steps_per_epoch=6), tmp_path, steps_per_epoch=6)


def test_imagenet_folder_resumes_to_the_same_weights(imagenet_tree, tmp_path):
    """The folder tree with 2 loader workers: each worker's random state continues."""
    source = ["--data.root", str(imagenet_tree)]
    check_resumes_exactly(lambda run: imagenet_args(run, source, steps_per_epoch=6, batch_size=2), tmp_path,
                          steps_per_epoch=6)


def test_imagenet_streaming_resumes_to_the_same_weights(imagenet_tree, tmp_path):
    from glnet_lightning.cli.data import main as prepare_main

    shards = tmp_path / "shards"
    assert prepare_main(["--root", str(imagenet_tree), "--output", str(shards), "--workers", "1", "--quiet"]) == 0
    source = ["--data.root", "null", "--data.streaming", str(shards)]
    # 6 batches of 4: whole epochs of the 24 images. An epoch cut short by limit_train_batches does not
    # resume exactly on this path (litdata's loader state), unlike the folder and Fashion-MNIST paths.
    check_resumes_exactly(lambda run: imagenet_args(run, source, steps_per_epoch=6, batch_size=4), tmp_path,
                          steps_per_epoch=6)


def test_ddp_with_repeated_augmentation_resumes_to_the_same_weights(imagenet_tree, tmp_path):
    """2 processes (gloo), DeiT repeated augmentation, 2 workers each: every rank's order, workers and
    random state continue, from the epoch-end checkpoint too (see lit/exact_resume.py)."""
    source = ["--data.root", str(imagenet_tree)]
    check_resumes_exactly(lambda run: imagenet_args(run, source, steps_per_epoch=6, batch_size=2, devices=2),
                          tmp_path, steps_per_epoch=6, world_size=2)


def test_an_interrupted_ablation_variant_resumes_to_the_same_weights(fashion_mnist, tmp_path, monkeypatch, capsys):
    """``glnet sweep grid`` killed in the middle of a variant (the runner and its fit, as a scheduler
    kills a job), then the same command again: the variant resumes from its ``last.ckpt`` and ends
    where the uninterrupted grid run of it ends. Fashion-MNIST with 2 loader workers."""
    from glnet_lightning.cli.sweep import grid_main

    steps_per_epoch = 6
    sets = [*tiny_sets(), "trainer.max_epochs=2", f"trainer.limit_train_batches={steps_per_epoch}",
            "trainer.limit_val_batches=1", f"trainer.val_check_interval={steps_per_epoch // 2}",
            "trainer.enable_progress_bar=false", "test_after_fit=false", "model.slot_map_every_n_epochs=0",
            "model.warmup_epochs=1", "model.drop_path_rate=0.1", "model.mixup=0.8", "model.ema_decay=0.9",
            "data.batch_size=16", "data.crop_padding=4", "data.num_workers=2",
            f"checkpoint.last_every_n_steps={STEP_CHECKPOINT_EVERY}"]

    def grid(runs: Path, *callbacks) -> list[str]:
        return [str(REPO / "sweeps" / "ablation_fashion_mnist.yaml"), "--runs", str(runs), "--only", "seq_local_global",
                *(arg for text in [*sets, f"trainer.callbacks={json.dumps([*PROBES, *callbacks])}"]
                  for arg in ("--set", text))]

    reference, runs = tmp_path / "reference", tmp_path / "killed"
    variant = runs / "seq_local_global"
    with open(tmp_path / "reference.log", "w+") as reference_log:
        uninterrupted = _start(["sweep", "grid", *grid(reference)], stderr=reference_log)
        try:
            hold, signum, saved_step = interruptions(steps_per_epoch)[0]
            interrupt(_start(["sweep", "grid", *grid(runs, hold_after(hold))]), variant, hold, signum, saved_step)

            env = subprocess_env()  # the runner's fit subprocess loads testkit.probes
            for key in ("PYTHONPATH", "OMP_WAIT_POLICY"):
                monkeypatch.setenv(key, env[key])
            assert grid_main(grid(runs)) == 0
            assert f"seq_local_global: resuming from {variant / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out
            assert uninterrupted.wait(timeout=600) == 0, _tail(reference_log)
        finally:
            _stop(uninterrupted)

    assert [int(s) for s in (variant / "start-steps.txt").read_text().split()] == [0, saved_step]
    assert_same_final_state(reference / "seq_local_global", variant)
    assert_same_batches(reference / "seq_local_global", variant, world_size=1)
