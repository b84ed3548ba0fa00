"""End to end through the console scripts on the real Fashion-MNIST config, shrunk to seconds:
fit writes checkpoints + TensorBoard events, validate reproduces the logged metric, predict writes
probabilities, and 2-process DDP on CPU (gloo) agrees. (A killed run resumed from ``last``:
tests/reliability/test_faults.py and tests/e2e/test_exact_resume.py.)"""
from __future__ import annotations

import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glnet_lightning.cli.lightning_cli import GLNetCLI
from glnet_lightning.lit import GLNetModule
from testkit import run_script, scalars, tiny_args

pytestmark = pytest.mark.slow


def in_process(args: list[str]) -> GLNetCLI:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return GLNetCLI(args=args)


def test_fit_then_validate_and_predict(fashion_mnist, tmp_path):
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


def test_ddp_two_processes_on_cpu(fashion_mnist, tmp_path):
    run = tmp_path / "run"
    result = run_script("glnet", ["fit", *tiny_args(run, train_batches=3, val_batches=1),
                                  "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
                                  "--trainer.callbacks+=testkit.probes.RecordBatches", "--model.ema_decay=0.9"],
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
