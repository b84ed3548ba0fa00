"""The warm-up + cosine learning-rate curve and the linear batch scaling rule."""
from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from glnet_lightning.lit import WarmupCosine, scale_lr


def test_warmup_then_cosine_values():
    s = WarmupCosine(base_lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.0, warmup_lr=0.0)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(5) == pytest.approx(0.5)
    assert s.lr_at(10) == pytest.approx(1.0)  # peak right after warm-up
    assert s.lr_at(60) == pytest.approx(0.5)  # half way down the cosine
    assert s.lr_at(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert s.lr_at(110) == pytest.approx(0.0)
    assert s.lr_at(500) == pytest.approx(0.0)  # stays at the floor


def test_floor_and_warmup_start():
    s = WarmupCosine(base_lr=2e-3, total_steps=100, warmup_steps=20, min_lr=1e-5, warmup_lr=1e-6)
    assert s.lr_at(0) == pytest.approx(1e-6)
    assert s.lr_at(100) == pytest.approx(1e-5)
    values = [s.lr_at(t) for t in range(101)]
    assert values.index(max(values)) == 20
    assert all(a <= b for a, b in zip(values[:20], values[1:21]))  # rising
    assert all(a >= b for a, b in zip(values[20:], values[21:]))  # falling


def test_lambda_lr_follows_the_curve_and_round_trips():
    s = WarmupCosine(base_lr=0.1, total_steps=30, warmup_steps=5, min_lr=1e-3)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = LambdaLR(opt, s)
    for step in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(s.lr_at(step))
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["lr_lambdas"][0]["warmup_steps"] == 5  # the curve travels in the checkpoint
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = LambdaLR(opt2, WarmupCosine(base_lr=0.1, total_steps=999, warmup_steps=1))
    sched2.load_state_dict(state)
    sched2.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_scale_lr_and_bad_arguments():
    assert scale_lr(2e-3, 256 * 8, 2048) == pytest.approx(2e-3)
    assert scale_lr(2e-3, 128, 2048) == pytest.approx(1.25e-4)
    with pytest.raises(ValueError):
        scale_lr(1e-3, 0, 2048)
    with pytest.raises(ValueError):
        WarmupCosine(base_lr=1.0, total_steps=10, warmup_steps=11)


def test_cooldown_holds_the_floor_after_the_cosine():
    """The token-labeling recipe: the cosine ends ``cooldown_steps`` early, the rest is spent at ``min_lr``."""
    s = WarmupCosine(base_lr=1.0, total_steps=120, warmup_steps=10, min_lr=0.01, cooldown_steps=10)
    plain = WarmupCosine(base_lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.01)
    assert [s.lr_at(t) for t in range(111)] == [plain.lr_at(t) for t in range(111)]
    assert s.lr_at(60) == pytest.approx(0.505)  # half way down a cosine of 100 steps, not of 110
    assert [s.lr_at(t) for t in range(110, 121)] == [pytest.approx(0.01)] * 11
    assert "cooldown_steps=10" in repr(s) and "cooldown" not in repr(plain)
    with pytest.raises(ValueError, match="cooldown_steps=6"):
        WarmupCosine(base_lr=1.0, total_steps=10, warmup_steps=5, cooldown_steps=6)
