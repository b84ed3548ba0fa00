"""A pre-empted run resumes to the weights the uninterrupted run ends with, bit for bit.

Each data path trains the same short run four ways, as ``glnet fit`` subprocesses: left alone;
stopped by SIGTERM between checkpoints (the project saves ``last.ckpt`` and exits 143) and
resumed with ``--ckpt_path last``; SIGKILLed after a step checkpoint (``last_every_n_steps``)
and resumed from it; SIGKILLed after the checkpoint at the end of an epoch and resumed. Random
crops, flips, RandAugment, random erasing, drop path, Mixup/CutMix, EMA and mid-epoch validation
all run, so every random stream and every piece of loop state has to continue where it stopped. The final ``last.ckpt`` of the resumed runs must equal the
uninterrupted one: weights, optimizer, scheduler, EMA and step.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = ("{depths: [1, 1, 1, 1], dims: [16, 32, 48, 64], head_dim: 16, "
              "stage_mixers: [glmix, glmix, glmix, glmix], num_slots: 4}")
PROGRESS = "--trainer.callbacks+=run_probe.MarkProgress"
BATCHES = "--trainer.callbacks+=run_probe.RecordBatches"
STEP_CHECKPOINT_EVERY = 4


def _common(root: Path, steps_per_epoch: int) -> list[str]:
    return [
        "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2",
        "--trainer.limit_train_batches", str(steps_per_epoch), "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", str(steps_per_epoch // 2),  # validation inside the epoch
        "--trainer.num_sanity_val_steps", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        f"--model.backbone={TINY_MODEL}", "--model.warmup_epochs", "0.5",
        "--model.drop_path_rate", "0.1", "--model.mixup", "0.8", "--model.cutmix", "1.0",
        "--model.ema_decay", "0.9", "--model.slot_map_every_n_epochs", "0",
        "--checkpoint.last_every_n_steps", str(STEP_CHECKPOINT_EVERY), PROGRESS, BATCHES,
    ]


def fashion_args(root: Path, num_workers: int) -> list[str]:
    return ["--config", str(REPO / "configs" / "fashion_mnist.yaml"), "--test_after_fit", "false",
            *_common(root, steps_per_epoch=12), "--data.batch_size", "16", "--data.crop_padding", "4",
            "--data.num_workers", str(num_workers)]


def imagenet_args(root: Path, source: list[str], cpu_overrides: dict, fit_args, devices: int = 1) -> list[str]:
    """configs/imagenet_glnet_stl.yaml on the CPU (the e2e overrides), a tiny model, 32 px, 2 workers."""
    cpu = {**cpu_overrides, "trainer.devices": devices, "trainer.strategy": "ddp" if devices > 1 else "auto",
           "data.batch_size": 2, "data.num_workers": 2, "data.image_size": 32}
    for key in ("trainer.max_epochs", "trainer.limit_train_batches", "trainer.limit_val_batches"):
        del cpu[key]  # set by _common
    return ["--config", str(REPO / "configs" / "imagenet_glnet_stl.yaml"), *fit_args(cpu), *source,
            *_common(root, steps_per_epoch=12 // devices)]


def _progress(run: Path) -> int:
    try:
        return int((run / "progress.txt").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _fit(console, env, args: list[str], timeout: float = 600) -> str:
    result = subprocess.run(console("glnet") + ["fit", *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def _interrupt(console, env, args: list[str], run: Path, at_step: int, signum: int, command=("fit",)) -> None:
    """Start the run, send ``signum`` once it has finished ``at_step`` optimizer steps, wait for it to end."""
    proc = subprocess.Popen(console("glnet") + [*command, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while _progress(run) < at_step:
            assert proc.poll() is None, f"the run ended early with {proc.returncode}: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "timed out waiting for the run"
            time.sleep(0.05)
        if signum == signal.SIGKILL:  # a crash or a scheduler's kill: every process of the job, DDP ranks too
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pre-emption notice to the launching process; Lightning passes it on to the other ranks
            proc.send_signal(signum)
        stderr = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL), stderr[-3000:]


def _final(run: Path) -> dict:
    from glnet_lightning.sweeps.grid import find_last_checkpoint

    return torch.load(find_last_checkpoint(run), map_location="cpu", weights_only=True)


def _max_difference(a, b) -> float:
    """Largest absolute difference between two nested checkpoints' tensors (0.0: bit-identical)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max((_max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max((_max_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.is_floating_point():
            return 0.0 if torch.equal(a, b) else float((a.double() - b.double()).abs().max())
        return 0.0 if torch.equal(a, b) else float("inf")
    return 0.0 if a == b else float("inf")


def assert_same_final_state(reference: Path, resumed: Path) -> None:
    ref, got = _final(reference), _final(resumed)
    assert got["global_step"] == ref["global_step"]
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "ema_state_dict"):
        assert _max_difference(ref[key], got[key]) == 0.0, f"{key} differs from the uninterrupted run's"


def assert_same_batches(reference: Path, resumed: Path, world_size: int) -> None:
    """Each rank's resumed batches are the last batches of the uninterrupted run (run_probe.RecordBatches)."""
    for rank in range(world_size):
        ref = torch.load(reference / f"seen-rank{rank}.pt", weights_only=True)
        got = torch.load(resumed / f"seen-rank{rank}.pt", weights_only=True)
        tail = len(ref["labels"]) - len(got["labels"])
        assert 0 < tail < len(ref["labels"])
        for key in ("labels", "images"):
            assert all(torch.equal(a, b) for a, b in zip(ref[key][tail:], got[key])), f"rank {rank}: {key} differ"


def check_resumes_exactly(console, env, make_args, tmp_path: Path, sigterm_at: int, world_size: int = 1,
                          steps_per_epoch: int = 12) -> None:
    """Left alone vs SIGTERM at ``sigterm_at`` + resume vs SIGKILL after the step-4 checkpoint + resume vs
    SIGKILL after the checkpoint at the end of the first epoch + resume (validation, which writes
    ``last.ckpt`` too, runs at half and at the end of each epoch: step 6 and later)."""
    reference = tmp_path / "reference"
    log = _fit(console, env, make_args(reference))
    # DDP: parameters in the layout their gradients arrive in (no copy into the buckets every step)
    assert "Grad strides do not match bucket view strides" not in log

    stopped = tmp_path / "sigterm"
    _interrupt(console, env, make_args(stopped), stopped, sigterm_at, signal.SIGTERM)
    saved_step = _final(stopped)["global_step"]
    assert saved_step >= sigterm_at and saved_step % STEP_CHECKPOINT_EVERY  # between step checkpoints
    _fit(console, env, [*make_args(stopped), "--ckpt_path", "last"])
    assert_same_final_state(reference, stopped)
    assert_same_batches(reference, stopped, world_size)

    killed = tmp_path / "sigkill"
    _interrupt(console, env, make_args(killed), killed, STEP_CHECKPOINT_EVERY + 1, signal.SIGKILL)
    assert _final(killed)["global_step"] == STEP_CHECKPOINT_EVERY
    _fit(console, env, [*make_args(killed), "--ckpt_path", "last"])
    assert_same_final_state(reference, killed)
    assert_same_batches(reference, killed, world_size)
    starts = [int(s) for s in (killed / "start-steps.txt").read_text().split()]
    assert starts == [0, STEP_CHECKPOINT_EVERY]

    at_epoch_end = tmp_path / "epoch_end"  # the resumed run begins with a new epoch's order and augmentations
    _interrupt(console, env, make_args(at_epoch_end), at_epoch_end, steps_per_epoch + 1, signal.SIGKILL)
    assert _final(at_epoch_end)["global_step"] == steps_per_epoch
    _fit(console, env, [*make_args(at_epoch_end), "--ckpt_path", "last"])
    assert_same_final_state(reference, at_epoch_end)
    assert_same_batches(reference, at_epoch_end, world_size)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_fashion_mnist_resumes_to_the_same_weights(num_workers, fashion_mnist, console, subprocess_env, tmp_path):
    check_resumes_exactly(console, subprocess_env(), lambda run: fashion_args(run, num_workers), tmp_path,
                          sigterm_at=13)  # in the second epoch, after its first validation


def test_imagenet_folder_resumes_to_the_same_weights(imagenet_tree, console, subprocess_env, cpu_overrides, fit_args,
                                                     tmp_path):
    source = ["--data.root", str(imagenet_tree)]
    check_resumes_exactly(console, subprocess_env(), lambda run: imagenet_args(run, source, cpu_overrides, fit_args),
                          tmp_path, sigterm_at=13)


def test_imagenet_streaming_resumes_to_the_same_weights(imagenet_tree, console, subprocess_env, cpu_overrides,
                                                        fit_args, tmp_path):
    shards = tmp_path / "shards"
    prepared = subprocess.run(console("glnet") + ["data", "prepare", "--root", str(imagenet_tree), "--output",
                                                  str(shards), "--workers", "1", "--quiet"],
                              env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    source = ["--data.root", "null", "--data.streaming", str(shards)]
    check_resumes_exactly(console, subprocess_env(), lambda run: imagenet_args(run, source, cpu_overrides, fit_args),
                          tmp_path, sigterm_at=13)


def test_ddp_with_repeated_augmentation_resumes_to_the_same_weights(imagenet_tree, console, subprocess_env,
                                                                    cpu_overrides, fit_args, tmp_path):
    """2 processes (gloo), DeiT repeated augmentation, 2 workers each: every rank's order, workers and
    random state continue."""
    source = ["--data.root", str(imagenet_tree)]
    check_resumes_exactly(console, subprocess_env(),
                          lambda run: imagenet_args(run, source, cpu_overrides, fit_args, devices=2),
                          tmp_path, sigterm_at=9, world_size=2, steps_per_epoch=12 // 2)


def test_an_interrupted_ablation_variant_resumes_to_the_same_weights(fashion_mnist, console, subprocess_env, tmp_path):
    """``glnet sweep grid`` killed in the middle of a variant (the runner and its fit, as a scheduler
    kills a job), then the same command again: the variant resumes from its ``last.ckpt`` and ends
    where the uninterrupted grid run of it ends."""
    sets = ["model.backbone.depths=[1,1,1,1]", "model.backbone.dims=[16,32,48,64]",
            "model.backbone.num_slots=4", "model.backbone.head_dim=16", "trainer.max_epochs=2",
            "trainer.limit_train_batches=12",
            "trainer.limit_val_batches=1", "trainer.val_check_interval=6", "trainer.enable_progress_bar=false",
            "test_after_fit=false", "model.slot_map_every_n_epochs=0", "model.drop_path_rate=0.1",
            "model.mixup=0.8", "model.ema_decay=0.9", "data.batch_size=16", "data.crop_padding=4",
            "data.num_workers=2", f"checkpoint.last_every_n_steps={STEP_CHECKPOINT_EVERY}",
            "trainer.callbacks=[run_probe.MarkProgress]"]

    def grid(runs: Path) -> list[str]:
        return [str(REPO / "sweeps" / "ablation_fashion_mnist.yaml"), "--runs", str(runs), "--only", "seq_local_global",
                *(arg for text in sets for arg in ("--set", text))]

    env = subprocess_env()
    reference = subprocess.run(console("glnet") + ["sweep", "grid", *grid(tmp_path / "reference")], env=env,
                               capture_output=True, text=True, timeout=900)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]

    runs = tmp_path / "killed"
    _interrupt(console, env, grid(runs), runs / "seq_local_global", STEP_CHECKPOINT_EVERY + 1, signal.SIGKILL,
               command=("sweep", "grid"))
    assert _final(runs / "seq_local_global")["global_step"] == STEP_CHECKPOINT_EVERY
    again = subprocess.run(console("glnet") + ["sweep", "grid", *grid(runs)], env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    last = runs / "seq_local_global" / "checkpoints" / "last.ckpt"
    assert f"seq_local_global: resuming from {last}" in again.stdout
    assert_same_final_state(tmp_path / "reference" / "seq_local_global", runs / "seq_local_global")
