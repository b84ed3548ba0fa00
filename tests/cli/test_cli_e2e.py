"""End to end through the console scripts on the real Fashion-MNIST config, shrunk to seconds:
fit writes checkpoints + TensorBoard events, validate reproduces the logged metric, predict writes
probabilities, a SIGKILLed run resumes from ``last``, and 2-process DDP on CPU (gloo) agrees."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glnet_lightning.cli.lightning_cli import GLNetCLI
from glnet_lightning.lit import GLNetModule

pytestmark = pytest.mark.slow


def scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def in_process(args: list[str]) -> GLNetCLI:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return GLNetCLI(args=args)


def test_fit_then_validate_and_predict(fashion_mnist, run_script, tiny_args, tmp_path):
    run = tmp_path / "run"
    result = run_script("lightning", ["fit", *tiny_args(run, test_after_fit=True)])
    assert result.returncode == 0, result.stderr[-3000:]

    # one directory = one run
    assert {"config.yaml", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert list(run.glob("events.out.tfevents.*"))
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    logged = scalars(run, "val/acc1")
    assert len(logged) == 1 and 0.0 <= logged[0][1] <= 1.0
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert {"train/loss", "val/loss", "val/acc5", "lr-AdamW/decay"} <= set(events.Tags()["scalars"])
    assert "val_ema/acc1" not in events.Tags()["scalars"]  # the Fashion-MNIST config has no EMA
    assert {"test/acc1", "test/acc5"} <= set(events.Tags()["scalars"])  # --test_after_fit
    assert [im.step for im in events.Images("slot_maps")] == [4]

    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 4 and ckpt["hyper_parameters"]["num_classes"] == 10
    model = GLNetModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt")  # no config needed
    assert model.model.head.out_features == 10

    cli = in_process(["validate", *tiny_args(tmp_path / "validate"), "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    assert cli.trainer.callback_metrics["val/acc1"].item() == pytest.approx(logged[0][1], abs=1e-6)

    in_process(["predict", *tiny_args(tmp_path / "predict"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    predictions = torch.load(tmp_path / "predict" / "predictions.pt")
    assert predictions["probs"].shape == (64, 10)
    assert torch.allclose(predictions["probs"].sum(1), torch.ones(64), atol=1e-5)


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.2)


def test_sigkill_mid_epoch_then_resume_from_last(fashion_mnist, console, subprocess_env, tiny_args, tmp_path):
    run = tmp_path / "run"
    args = [*tiny_args(run, train_batches=12, val_batches=1, epochs=2),
            "--trainer.callbacks+=run_probe.MarkProgress", "--model.ema_decay=0.9"]
    proc = subprocess.Popen(console("glnet") + ["fit", *args], env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    last, progress = run / "checkpoints" / "last.ckpt", run / "progress.txt"
    try:
        # wait until epoch 0 is checkpointed and epoch 1 is well under way, then kill without warning
        _wait_for(lambda: last.exists() and progress.exists() and int(progress.read_text() or 0) >= 15, 240, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    ckpt = torch.load(last, weights_only=False, map_location="cpu")  # readable, from the end of epoch 0
    assert ckpt["global_step"] == 12 and ckpt["epoch"] == 0 and "ema_state_dict" in ckpt
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]

    result = subprocess.run(console("glnet") + ["fit", *args, "--ckpt_path", "last"], env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    starts = [int(s) for s in (run / "start-steps.txt").read_text().split()]
    assert starts == [0, 12]  # the resumed run continued from the checkpoint's step
    final = torch.load(last, weights_only=False, map_location="cpu")
    assert final["global_step"] == 24 and final["epoch"] == 1
    assert [step for step, _ in scalars(run, "val/acc1")] == [11, 23]


def test_ddp_two_processes_on_cpu(fashion_mnist, run_script, tiny_args, tmp_path):
    run = tmp_path / "run"
    result = run_script("glnet", ["fit", *tiny_args(run, train_batches=3, val_batches=1),
                                  "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
                                  "--trainer.callbacks+=run_probe.RecordBatches", "--model.ema_decay=0.9"],
                        timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(run / "seen-rank0.pt")
    rank1 = torch.load(run / "seen-rank1.pt")
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert len(rank0["images"]) == len(rank1["images"]) == 3
    # the distributed sampler gave each rank its own samples
    assert all(not torch.equal(a, b) for a, b in zip(rank0["images"], rank1["images"]))
    assert any(not torch.equal(a, b) for a, b in zip(rank0["labels"], rank1["labels"]))
    # DDP kept the replicas identical, and the checkpoint holds exactly those weights
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    saved = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert saved.keys() == rank0["state_dict"].keys()
    for key, value in rank0["state_dict"].items():
        assert torch.equal(saved[key], value), key
        assert torch.allclose(rank1["state_dict"][key], value), key
    assert ckpt["global_step"] == 3
    # lr scaled by the global batch: 32 per rank x 2 ranks at base_batch_size 128
    assert ckpt["lr_schedulers"][0]["lr_lambdas"][0]["base_lr"] == pytest.approx(2e-3 * 64 / 128)
