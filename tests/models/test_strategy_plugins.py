"""Strategies written outside the package, one per kind, plug in by ``class_path`` or by
registering a name, and the model they make trains. Same test for all five kinds."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glnet_lightning.models import GLNet, strategies
from glnet_lightning.models.slot_attention import pixels_of
from glnet_lightning.models.strategies import (ClusteringStrategy, FusionStrategy, GLMixConfig, GLMixer,
                                               GlobalStrategy, LocalStrategy, SlotInitStrategy)
from testkit import tiny

TINY = tiny(num_classes=5)


# ------------------------------------------------------------------ the user's modules
class GroupConvBranch(nn.Module):
    def __init__(self, dim: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=groups)

    def forward(self, h):
        return self.conv(h)


class PooledContextBranch(nn.Module):
    """Global context as in SE / GC blocks: pool the map, project, add everywhere."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, h, block_input):
        return h + self.proj(h.mean(dim=(2, 3)))[:, :, None, None]


class ScaledPoolInit(nn.Module):
    def __init__(self, dim: int, num_slots: int):
        super().__init__()
        self.side = math.isqrt(num_slots)
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return pixels_of(F.adaptive_max_pool2d(x, self.side)) * self.scale


class ProjectedKeyClustering(nn.Module):
    """Soft clustering with a learned key projection; the logits are the dispatch context."""

    def __init__(self, dim: int):
        super().__init__()
        self.key = nn.Linear(dim, dim)

    def forward(self, init_slots, pixels):
        logits = init_slots @ self.key(pixels).transpose(1, 2) / init_slots.shape[-1] ** 0.5  # (B, M, L)
        return logits.softmax(-1) @ pixels, logits

    def dispatch(self, slots, logits):
        return logits.transpose(1, 2).softmax(-1) @ slots

    def assignment(self, logits):
        return logits.softmax(1)


class GatedMixer(GLMixer):
    """out = g * global(h) + (1 - g) * local(h), with a learned per-channel gate g."""

    def __init__(self, dim: int, local_branch: nn.Module, global_branch: nn.Module):
        super().__init__(local_branch, global_branch)
        self.gate = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, h, block_input):
        g = self.gate.sigmoid()
        return g * self.global_branch(h, block_input) + (1 - g) * self.local_branch(h)


# ------------------------------------------------------------------ the user's strategies
@dataclass(frozen=True)
class GroupConvLocal(LocalStrategy):
    groups: int = 4

    def build(self, dim, head_dim):
        return GroupConvBranch(dim, self.groups)


@dataclass(frozen=True)
class PooledContextGlobal(GlobalStrategy):
    def build(self, dim, head_dim):
        return PooledContextBranch(dim)


@dataclass(frozen=True)
class ScaledPoolSlotInit(SlotInitStrategy):
    def validate(self, num_slots):
        if math.isqrt(num_slots) ** 2 != num_slots:
            raise ValueError(f"num_slots={num_slots} must be square")

    def build(self, dim, num_slots):
        return ScaledPoolInit(dim, num_slots)


@dataclass(frozen=True)
class ProjectedKeyClusteringStrategy(ClusteringStrategy):
    def build(self, dim, num_slots):
        return ProjectedKeyClustering(dim)


@dataclass(frozen=True)
class GatedFusion(FusionStrategy):
    def build(self, dim, local_branch, global_branch):
        return GatedMixer(dim, local_branch, global_branch)


# kind -> (GLNet argument, strategy class, settings, the module it must put in each GLMix block)
PLUGINS = {
    "local": ("local", GroupConvLocal, {"groups": 2}, lambda mixer: mixer.local_branch, GroupConvBranch),
    "global": ("global_branch", PooledContextGlobal, {}, lambda mixer: mixer.global_branch, PooledContextBranch),
    "slot_init": ("slot_init", ScaledPoolSlotInit, {}, lambda mixer: mixer.global_branch.slot_init, ScaledPoolInit),
    "clustering": ("clustering", ProjectedKeyClusteringStrategy, {}, lambda mixer: mixer.global_branch.clustering,
                   ProjectedKeyClustering),
    "fusion": ("fusion", GatedFusion, {}, lambda mixer: mixer, GatedMixer),
}


@pytest.fixture
def register_for_test(monkeypatch):
    """Register a class under a name for one test; the registry and the class are put back after."""

    def register(kind, name, cls):
        monkeypatch.setitem(strategies._REGISTRY, kind, dict(strategies._REGISTRY[kind]))
        monkeypatch.setattr(cls, "name", None)
        strategies.register(kind, name)(cls)

    return register


@pytest.mark.parametrize("how", ["class_path", "registered"])
@pytest.mark.parametrize("kind", list(PLUGINS))
def test_a_users_strategy_of_every_kind_builds_and_trains(kind, how, register_for_test):
    argument, cls, settings, find, module_type = PLUGINS[kind]
    if how == "registered":
        register_for_test(kind, f"my_{kind}", cls)
        spec = {"name": f"my_{kind}", **settings}
    else:
        spec = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": settings}
    torch.manual_seed(0)
    extra = {"num_slots": None} if kind == "global" else {}  # a shortcut of the slots branch it replaces
    model = GLNet(**{**TINY, argument: spec, **extra})
    plugged = [find(block.mixer) for block in model.glmix_blocks()]
    assert len(plugged) == 4 and all(type(m) is module_type for m in plugged)

    # the model's config round-trips through its plain spec, as a checkpoint stores it
    config = model.mixer_configs[0]
    assert GLMixConfig.from_spec(**config.spec()) == config
    if how == "class_path":
        assert spec["class_path"] in str(config.spec())

    before = {n: p.detach().clone() for m in plugged for n, p in m.named_parameters()}
    assert before, "each test strategy has parameters of its own"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = {n: p.detach() for m in plugged for n, p in m.named_parameters()}
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_registering_needs_the_kinds_base(register_for_test):
    with pytest.raises(TypeError, match="must subclass LocalStrategy"):
        register_for_test("local", "gated", GatedFusion)


def test_a_fusion_keeps_the_branch_names_the_state_dict_uses():
    model = GLNet(**{**TINY, "fusion": {"class_path": f"{__name__}.GatedFusion"}})
    keys = model.state_dict().keys()
    assert "stages.0.blocks.0.mixer.gate" in keys
    assert "stages.0.blocks.0.mixer.local_branch.dwconv.weight" in keys
    assert "stages.0.blocks.0.mixer.global_branch.clustering.tau" in keys
