"""Pluggable strategies of the GLMix block, chosen from config.

Each strategy is a small frozen dataclass that validates its settings when created and builds the
``nn.Module`` for a given width. Five kinds:

=============  =========================================  ===================================
kind           names (``resolve_strategy``)               builds
=============  =========================================  ===================================
local          ``dwconv``, ``window_mhsa``, ``none``       the pixel-grid branch
global         ``slots``, ``none``                         clustering -> slot MHSA -> dispatch
clustering     ``soft``, ``kmeans``                        grid <-> slot assignment
slot_init      ``pool``, ``param``                         the initial slots
fusion         ``parallel``, ``global_local``,             how the two branches combine
               ``local_global``
=============  =========================================  ===================================

A spec may be a strategy object, a name, ``{"name": ..., **settings}``, or LightningCLI's
``{"class_path": ..., "init_args": {...}}``; ``strategy.spec()`` gives back the plain-dict form
that checkpoints and sweep files store.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from .local_branches import DWConvBranch, WindowAttentionBranch
from .slot_attention import KMeansClustering, ParamSlotInit, PooledSlotInit, SlotAttentionBranch, SoftClustering

_REGISTRY: dict[str, dict[str, type]] = {k: {} for k in ("local", "global", "clustering", "slot_init", "fusion")}
NONE_NAMES = ("none", "None", "")


def register(kind: str, name: str):
    """Class decorator: make a strategy selectable by ``name`` in config."""

    def wrap(cls):
        cls.kind, cls.name = kind, name
        _REGISTRY[kind][name] = cls
        return cls

    return wrap


def strategy_names(kind: str) -> list[str]:
    return sorted(_REGISTRY[kind])


class Strategy:
    """Base of all strategies: ``spec()`` turns one back into plain config."""

    kind: ClassVar[str]
    name: ClassVar[str]

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.spec() if isinstance(value, Strategy) else value
        return out


def _check_int(where: str, value: Any, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}={value!r} is invalid: {hint}")


def resolve_strategy(kind: str, spec: Any, allow_none: bool = False) -> Strategy | None:
    """Turn a config value into a strategy object of ``kind`` (see module docstring for forms)."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown strategy kind {kind!r}; kinds are {sorted(_REGISTRY)}")
    choices = strategy_names(kind) + (["none"] if allow_none else [])
    if spec is None or (isinstance(spec, str) and spec in NONE_NAMES):
        if allow_none:
            return None
        raise ValueError(f"{kind} strategy is required here; choose one of {strategy_names(kind)}")
    if isinstance(spec, Strategy):
        if spec.kind != kind:
            raise ValueError(f"expected a {kind} strategy, got {type(spec).__name__} (a {spec.kind} strategy)")
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"{kind} strategy must be a name, a dict or a strategy object, got {spec!r}")
    spec = dict(spec)
    if "class_path" in spec:
        module_name, _, cls_name = spec["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"{kind} strategy class_path {spec['class_path']!r} cannot be imported: {err}") from None
        kwargs = dict(spec.get("init_args") or {})
    else:
        name = spec.pop("name", None)
        if name is None or (isinstance(name, str) and name in NONE_NAMES):
            if allow_none and not spec:
                return None
            raise ValueError(f"{kind} strategy dict needs a 'name', one of {choices}; got {spec!r}")
        if name not in _REGISTRY[kind]:
            raise ValueError(f"unknown {kind} strategy {name!r}; choose one of {choices}")
        cls, kwargs = _REGISTRY[kind][name], spec
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"{kind} strategy {cls.name!r} has no setting(s) {unknown}; its settings are {sorted(allowed)}")
    return cls(**kwargs)


# --------------------------------------------------------------------------------------- local
@register("local", "dwconv")
@dataclass(frozen=True)
class DWConvLocal(Strategy):
    """The paper's local branch: conv1x1 -> depthwise k x k -> conv1x1."""

    kernel_size: int = 5

    def __post_init__(self):
        if isinstance(self.kernel_size, int) and not isinstance(self.kernel_size, bool) and self.kernel_size >= 1 and self.kernel_size % 2:
            return
        raise ValueError(f"kernel_size={self.kernel_size!r} is invalid: the depthwise kernel must be an odd integer >= 1 (e.g. 3, 5, 7)")

    def build(self, dim: int, head_dim: int) -> nn.Module:
        return DWConvBranch(dim, self.kernel_size)


@register("local", "window_mhsa")
@dataclass(frozen=True)
class WindowMHSALocal(Strategy):
    """Ablation: MHSA inside non-overlapping windows instead of convolutions."""

    window_size: int = 7

    def __post_init__(self):
        _check_int("window_size", self.window_size, 1, "the window side must be an integer >= 1 (the paper uses 7)")

    def build(self, dim: int, head_dim: int) -> nn.Module:
        return WindowAttentionBranch(dim, head_dim, self.window_size)


# ----------------------------------------------------------------------------------- slot init
@register("slot_init", "pool")
@dataclass(frozen=True)
class PooledSlotInitStrategy(Strategy):
    """Per-image slots: adaptive average pooling of the block input (needs a square slot count)."""

    def validate(self, num_slots: int) -> None:
        if math.isqrt(num_slots) ** 2 != num_slots:
            raise ValueError(
                f"num_slots={num_slots} is not a perfect square, but slot_init='pool' pools to a "
                f"sqrt(M) x sqrt(M) grid; use a square number (9, 16, 25, 36, 49, 64, 81) or slot_init='param'"
            )

    def build(self, dim: int, num_slots: int) -> nn.Module:
        return PooledSlotInit(num_slots)


@register("slot_init", "param")
@dataclass(frozen=True)
class ParamSlotInitStrategy(Strategy):
    """Static slots: a learned (1, M, C) tensor, trunc-normal init."""

    std: float = 0.02

    def validate(self, num_slots: int) -> None:
        pass

    def build(self, dim: int, num_slots: int) -> nn.Module:
        return ParamSlotInit(dim, num_slots, self.std)


# ---------------------------------------------------------------------------------- clustering
@register("clustering", "soft")
@dataclass(frozen=True)
class SoftClusteringStrategy(Strategy):
    """The paper's soft clustering and dispatching (shared cosine-similarity logits)."""

    def validate(self, num_slots: int) -> None:
        pass

    def build(self, dim: int, num_slots: int) -> nn.Module:
        return SoftClustering(dim)


@register("clustering", "kmeans")
@dataclass(frozen=True)
class KMeansClusteringStrategy(Strategy):
    """Hard k-means with hashing init; ``iters`` Lloyd iterations (see KMeansClustering).

    The default of 4 iterations makes GLNet-STL count 5.14 GMACs at 224x224 (measured with
    ``glnet_lightning.bench.count_macs``), the paper's 5.2 G within 2 %; 3 gives 4.96, 5 gives 5.31.
    """

    iters: int = 4
    seed: int = 0

    def __post_init__(self):
        _check_int("kmeans iters", self.iters, 0, "the number of Lloyd iterations must be an integer >= 0")

    def validate(self, num_slots: int) -> None:
        if num_slots < 2 or num_slots & (num_slots - 1):
            raise ValueError(
                f"num_slots={num_slots} is invalid for clustering='kmeans': hashing init uses log2(M) sign bits, "
                f"so M must be a power of two >= 2 (e.g. 16, 64)"
            )

    def build(self, dim: int, num_slots: int) -> nn.Module:
        return KMeansClustering(dim, num_slots, self.iters, self.seed)


# -------------------------------------------------------------------------------------- global
@register("global", "slots")
@dataclass(frozen=True)
class SlotAttentionGlobal(Strategy):
    """The global branch: ``slot_init`` -> ``clustering`` -> slot MHSA -> dispatch, on ``num_slots`` slots."""

    num_slots: int = 64
    slot_init: Any = "pool"
    clustering: Any = "soft"

    def __post_init__(self):
        _check_int("num_slots", self.num_slots, 1, "the number of slots must be an integer >= 1 (the paper uses 64)")
        object.__setattr__(self, "slot_init", resolve_strategy("slot_init", self.slot_init))
        object.__setattr__(self, "clustering", resolve_strategy("clustering", self.clustering))
        self.slot_init.validate(self.num_slots)
        self.clustering.validate(self.num_slots)

    def build(self, dim: int, head_dim: int) -> nn.Module:
        return SlotAttentionBranch(
            self.slot_init.build(dim, self.num_slots), self.clustering.build(dim, self.num_slots), dim, head_dim
        )


# -------------------------------------------------------------------------------------- fusion
class GLMixer(nn.Module):
    """Combines the branches on the normed input ``h``; the global branch also sees the block input.

    parallel:       out = global(h) + local(h)
    global_local:   z = global(h); out = z + local(z)   (local refines the global output)
    local_global:   z = local(h);  out = z + global(z)
    With a single branch, out is that branch's output.
    """

    def __init__(self, local_branch: nn.Module | None, global_branch: nn.Module | None, order: str):
        super().__init__()
        self.local_branch = local_branch
        self.global_branch = global_branch
        self.order = order

    def forward(self, h, block_input):
        if self.local_branch is None:
            return self.global_branch(h, block_input)
        if self.global_branch is None:
            return self.local_branch(h)
        if self.order == "parallel":
            return self.global_branch(h, block_input) + self.local_branch(h)
        if self.order == "global_local":
            z = self.global_branch(h, block_input)
            return z + self.local_branch(z)
        z = self.local_branch(h)
        return z + self.global_branch(z, block_input)


@dataclass(frozen=True)
class _Fusion(Strategy):
    order: ClassVar[str]

    def build(self, local_branch: nn.Module | None, global_branch: nn.Module | None) -> GLMixer:
        if local_branch is None and global_branch is None:
            raise ValueError(
                "a GLMix block needs at least one branch: local='none' together with global_branch='none' leaves "
                "nothing to mix; keep the local branch, the global branch, or both"
            )
        if self.order != "parallel" and (local_branch is None or global_branch is None):
            raise ValueError(
                f"fusion={self.name!r} chains both branches, but one of them is 'none'; use fusion='parallel' "
                f"for a single-branch block"
            )
        return GLMixer(local_branch, global_branch, self.order)


@register("fusion", "parallel")
@dataclass(frozen=True)
class ParallelFusion(_Fusion):
    """The paper's: both branches on the same input, outputs summed."""

    order: ClassVar[str] = "parallel"


@register("fusion", "global_local")
@dataclass(frozen=True)
class GlobalThenLocalFusion(_Fusion):
    """Ablation: the local branch refines the global branch's output."""

    order: ClassVar[str] = "global_local"


@register("fusion", "local_global")
@dataclass(frozen=True)
class LocalThenGlobalFusion(_Fusion):
    """Ablation: the global branch refines the local branch's output."""

    order: ClassVar[str] = "local_global"


@dataclass(frozen=True)
class GLMixConfig:
    """The strategies of one GLMix block, resolved and checked together."""

    local: Any = "dwconv"
    global_branch: Any = "slots"
    fusion: Any = "parallel"

    def __post_init__(self):
        object.__setattr__(self, "local", resolve_strategy("local", self.local, allow_none=True))
        object.__setattr__(self, "global_branch", resolve_strategy("global", self.global_branch, allow_none=True))
        object.__setattr__(self, "fusion", resolve_strategy("fusion", self.fusion))
        # Fail at config time, not when the first block is built.
        self.fusion.build(self.local and nn.Identity(), self.global_branch and nn.Identity())

    def build(self, dim: int, head_dim: int) -> GLMixer:
        local = self.local.build(dim, head_dim) if self.local else None
        glob = self.global_branch.build(dim, head_dim) if self.global_branch else None
        return self.fusion.build(local, glob)

    def spec(self) -> dict[str, Any]:
        return {
            "local": self.local.spec() if self.local else "none",
            "global_branch": self.global_branch.spec() if self.global_branch else "none",
            "fusion": self.fusion.spec(),
        }
