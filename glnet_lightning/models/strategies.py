"""Pluggable strategies of the GLMix block, chosen from config.

Each strategy is a small frozen dataclass that validates its settings when created and builds the
``nn.Module`` for a given width. Five kinds, each with an abstract base that fixes its ``build``
signature and documents what the built module must do:

=============  =====================  ========================================  ===========================
kind           base                   names (``resolve_strategy``)              ``build(...)``
=============  =====================  ========================================  ===========================
local          ``LocalStrategy``      ``dwconv``, ``window_mhsa``, ``none``      ``(dim, head_dim)``
global         ``GlobalStrategy``     ``slots``, ``none``                        ``(dim, head_dim)``
slot_init      ``SlotInitStrategy``   ``pool``, ``param``                        ``(dim, num_slots)``
clustering     ``ClusteringStrategy`` ``soft``, ``kmeans``                       ``(dim, num_slots)``
fusion         ``FusionStrategy``     ``parallel``, ``global_local``,            ``(dim, local, global)``
                                      ``local_global``
=============  =====================  ========================================  ===========================

A spec may be a strategy object, a registered name, ``{"name": ..., **settings}``, or
LightningCLI's ``{"class_path": ..., "init_args": {...}}``, so a subclass of a base written in the
user's own code plugs in without registering. ``strategy.spec()`` gives back the plain-dict form
that checkpoints and sweep files store (``class_path`` form for unregistered classes).
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from .local_branches import DWConvBranch, WindowAttentionBranch
from .slot_attention import KMeansClustering, ParamSlotInit, PooledSlotInit, SlotAttentionBranch, SoftClustering

KINDS = ("local", "global", "clustering", "slot_init", "fusion")
_REGISTRY: dict[str, dict[str, type]] = {k: {} for k in KINDS}
NONE_NAMES = ("none", "None", "")


def register(kind: str, name: str):
    """Class decorator: make a strategy (a subclass of the kind's base) selectable by ``name`` in config."""

    def wrap(cls):
        if kind not in _REGISTRY:
            raise ValueError(f"unknown strategy kind {kind!r}; kinds are {sorted(_REGISTRY)}")
        if not (isinstance(cls, type) and issubclass(cls, Strategy) and cls.kind == kind):
            raise TypeError(f"{cls!r} is registered as a {kind} strategy, so it must subclass {_BASES[kind].__name__}")
        cls.name = name
        _REGISTRY[kind][name] = cls
        return cls

    return wrap


def strategy_names(kind: str) -> list[str]:
    return sorted(_REGISTRY[kind])


def _label(cls: type) -> str:
    """The config name of a strategy class, or its class path when it is not registered."""
    name = getattr(cls, "name", None)
    if name is not None and _REGISTRY.get(getattr(cls, "kind", ""), {}).get(name) is cls:
        return name
    return f"{cls.__module__}.{cls.__qualname__}"


def _strategy_hint(hint: Any) -> tuple[type | None, bool]:
    """(strategy class, None allowed) of a field annotation such as ``LocalStrategy | None``."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    classes = [a for a in args if isinstance(a, type) and issubclass(a, Strategy)]
    return (classes[0] if classes else None), type(None) in args


def _strategy_fields(cls: type) -> dict[str, tuple[type, bool]]:
    """The fields of dataclass ``cls`` that hold strategies: name -> (class, None allowed)."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # a postponed annotation naming something out of reach
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        strategy_cls, allow_none = _strategy_hint(hints.get(f.name, f.type))
        if strategy_cls is not None:
            out[f.name] = (strategy_cls, allow_none)
    return out


def _resolve_settings(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """Check ``settings`` are fields of ``cls`` and turn the values of strategy fields into objects."""
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"{_label(cls)} is not a dataclass: a strategy's settings are its dataclass fields")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        kind = getattr(cls, "kind", "strategy")
        raise ValueError(
            f"{kind} strategy {_label(cls)!r} has no setting(s) {unknown}; its settings are {sorted(allowed)}"
        )
    out = dict(settings)
    for name, (strategy_cls, allow_none) in _strategy_fields(cls).items():
        if name in out:
            out[name] = resolve_strategy(strategy_cls.kind, out[name], allow_none=allow_none)
    return out


def _check_strategy_fields(obj: Any) -> None:
    """Fields typed as strategies must hold strategy objects: names and dicts go through ``from_spec``."""
    for name, (strategy_cls, allow_none) in _strategy_fields(type(obj)).items():
        value = getattr(obj, name)
        if not (isinstance(value, strategy_cls) or (allow_none and value is None)):
            raise TypeError(
                f"{type(obj).__name__}.{name} must be a {strategy_cls.__name__}{' or None' if allow_none else ''}, "
                f"got {value!r}; build from names or dicts with {type(obj).__name__}.from_spec(...)"
            )


def _spec_of(value: Any) -> Any:
    return value.spec() if isinstance(value, Strategy) else value


class Strategy(abc.ABC):
    """Base of all strategies. Subclass one of the five kind bases below, as a frozen dataclass
    whose fields are the settings (checked in ``__post_init__``)."""

    kind: ClassVar[str]
    name: ClassVar[str | None] = None

    @classmethod
    def from_spec(cls, **settings: Any):
        """Create from plain config: nested strategy fields may be names or dicts, unknown keys raise."""
        return cls(**_resolve_settings(cls, settings))

    def replace(self, **settings: Any):
        """``dataclasses.replace`` that resolves names and dicts given for strategy fields."""
        return dataclasses.replace(self, **_resolve_settings(type(self), settings))

    def spec(self) -> dict[str, Any]:
        """Plain config that ``resolve_strategy`` turns back into an equal strategy."""
        settings = {f.name: _spec_of(getattr(self, f.name)) for f in dataclasses.fields(self)}
        label = _label(type(self))
        if label == self.name:
            return {"name": label, **settings}
        return {"class_path": label, "init_args": settings}


class LocalStrategy(Strategy):
    """A local branch: mixes each pixel with its neighbourhood on the grid.

    ``build(dim, head_dim)`` returns a module whose ``forward(h)`` maps the normed block input
    ``h`` (B, dim, H, W) to a map of the same shape, for any H and W. ``head_dim`` is the model's
    attention head width, for branches that attend; others ignore it.
    """

    kind: ClassVar[str] = "local"

    @abc.abstractmethod
    def build(self, dim: int, head_dim: int) -> nn.Module:
        ...


class GlobalStrategy(Strategy):
    """A global branch: mixes information across the whole map.

    ``build(dim, head_dim)`` returns a module whose ``forward(h, block_input)`` maps the normed
    block input ``h`` (B, dim, H, W) to a map of the same shape; ``block_input`` is the block's
    input before CPE and norm (the paper's slot init pools it). Slot maps and the assignment
    analysis look for ``record_assignment`` / ``assignment`` on it and skip branches without.
    """

    kind: ClassVar[str] = "global"

    @abc.abstractmethod
    def build(self, dim: int, head_dim: int) -> nn.Module:
        ...


class SlotInitStrategy(Strategy):
    """The initial slots of the slot-attention global branch.

    ``build(dim, num_slots)`` returns a module whose ``forward(block_input)`` maps the block input
    (B, dim, H, W) to slots (B, num_slots, dim). ``validate(num_slots)`` raises ``ValueError`` for a
    slot count it cannot make; the global strategy calls it when it is created.
    """

    kind: ClassVar[str] = "slot_init"

    def validate(self, num_slots: int) -> None:
        pass

    @abc.abstractmethod
    def build(self, dim: int, num_slots: int) -> nn.Module:
        ...


class ClusteringStrategy(Strategy):
    """How pixels are grouped into slots and the slots sent back.

    ``build(dim, num_slots)`` returns a module with
    ``forward(init_slots (B, M, C), pixels (B, L, C)) -> (slots (B, M, C), ctx)``,
    ``dispatch(slots (B, M, C), ctx) -> (B, L, C)`` and ``assignment(ctx) -> (B, M, L)``, each
    pixel's weights over the slots (summing to 1 over M; for the slot visualisations).
    ``validate(num_slots)`` raises ``ValueError`` for a slot count it cannot handle.
    """

    kind: ClassVar[str] = "clustering"

    def validate(self, num_slots: int) -> None:
        pass

    @abc.abstractmethod
    def build(self, dim: int, num_slots: int) -> nn.Module:
        ...


class GLMixer(nn.Module):
    """Base of the modules fusion strategies build: keeps the branches as ``local_branch`` and
    ``global_branch`` (either may be None), the names the state-dict keys of published checkpoints
    and the slot maps rely on. Subclasses combine them in ``forward(h, block_input)``, with ``h``
    the normed block input and ``block_input`` the raw one (the global branch takes both).
    """

    def __init__(self, local_branch: nn.Module | None, global_branch: nn.Module | None):
        super().__init__()
        self.local_branch = local_branch
        self.global_branch = global_branch

    def forward(self, h, block_input):
        raise NotImplementedError(f"{type(self).__name__} must define forward(h, block_input)")


class FusionStrategy(Strategy):
    """How the two branches combine.

    ``build(dim, local_branch, global_branch)`` returns a ``GLMixer`` subclass holding both branches
    (modules built by the local and global strategies, or None for an absent branch) whose
    ``forward(h, block_input)`` gives a (B, dim, H, W) map. ``validate(has_local, has_global)``
    raises ``ValueError`` if the fusion cannot work with that set of branches; by default both are
    required. At least one branch is always present.
    """

    kind: ClassVar[str] = "fusion"

    def validate(self, has_local: bool, has_global: bool) -> None:
        if not (has_local and has_global):
            raise ValueError(
                f"fusion={_label(type(self))!r} needs both branches, but one of them is 'none'; use fusion='parallel' "
                f"for a single-branch block"
            )

    @abc.abstractmethod
    def build(self, dim: int, local_branch: nn.Module | None, global_branch: nn.Module | None) -> GLMixer:
        ...


def _check_int(where: str, value: Any, minimum: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}={value!r} is invalid: {hint}")


_BASES: dict[str, type[Strategy]] = {
    "local": LocalStrategy, "global": GlobalStrategy, "clustering": ClusteringStrategy,
    "slot_init": SlotInitStrategy, "fusion": FusionStrategy,
}


def _import_class(kind: str, path: Any) -> type[Strategy]:
    module_name, _, cls_name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{kind} strategy class_path {path!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, _BASES[kind])):
        raise ValueError(f"{kind} strategy class_path {path!r} is not a subclass of {_BASES[kind].__name__}")
    return cls


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
        if not isinstance(spec, _BASES[kind]):
            raise ValueError(f"expected a {kind} strategy, got {type(spec).__name__} (a {spec.kind} strategy)")
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"{kind} strategy must be a name, a dict or a strategy object, got {spec!r}")
    spec = dict(spec)
    if "class_path" in spec:
        cls, kwargs = _import_class(kind, spec["class_path"]), dict(spec.get("init_args") or {})
    else:
        name = spec.pop("name", None)
        if name is None or (isinstance(name, str) and name in NONE_NAMES):
            if allow_none and not spec:
                return None
            raise ValueError(f"{kind} strategy dict needs a 'name', one of {choices}; got {spec!r}")
        if name not in _REGISTRY[kind]:
            raise ValueError(f"unknown {kind} strategy {name!r}; choose one of {choices}")
        cls, kwargs = _REGISTRY[kind][name], spec
    return cls.from_spec(**kwargs)


# --------------------------------------------------------------------------------------- local
@register("local", "dwconv")
@dataclass(frozen=True)
class DWConvLocal(LocalStrategy):
    """The paper's local branch: conv1x1 -> depthwise k x k -> conv1x1."""

    kernel_size: int = 5

    def __post_init__(self):
        k = self.kernel_size
        if isinstance(k, int) and not isinstance(k, bool) and k >= 1 and k % 2:
            return
        raise ValueError(
            f"kernel_size={k!r} is invalid: the depthwise kernel must be an odd integer >= 1 (e.g. 3, 5, 7)"
        )

    def build(self, dim: int, head_dim: int) -> nn.Module:
        return DWConvBranch(dim, self.kernel_size)


@register("local", "window_mhsa")
@dataclass(frozen=True)
class WindowMHSALocal(LocalStrategy):
    """Ablation: MHSA inside non-overlapping windows instead of convolutions."""

    window_size: int = 7

    def __post_init__(self):
        _check_int("window_size", self.window_size, 1, "the window side must be an integer >= 1 (the paper uses 7)")

    def build(self, dim: int, head_dim: int) -> nn.Module:
        return WindowAttentionBranch(dim, head_dim, self.window_size)


# ----------------------------------------------------------------------------------- slot init
@register("slot_init", "pool")
@dataclass(frozen=True)
class PooledSlotInitStrategy(SlotInitStrategy):
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
class ParamSlotInitStrategy(SlotInitStrategy):
    """Static slots: a learned (1, M, C) tensor, trunc-normal init."""

    std: float = 0.02

    def build(self, dim: int, num_slots: int) -> nn.Module:
        return ParamSlotInit(dim, num_slots, self.std)


# ---------------------------------------------------------------------------------- clustering
@register("clustering", "soft")
@dataclass(frozen=True)
class SoftClusteringStrategy(ClusteringStrategy):
    """The paper's soft clustering and dispatching (shared cosine-similarity logits)."""

    def build(self, dim: int, num_slots: int) -> nn.Module:
        return SoftClustering(dim)


@register("clustering", "kmeans")
@dataclass(frozen=True)
class KMeansClusteringStrategy(ClusteringStrategy):
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
class SlotAttentionGlobal(GlobalStrategy):
    """The global branch: ``slot_init`` -> ``clustering`` -> slot MHSA -> dispatch, on ``num_slots`` slots.

    ``slot_init`` and ``clustering`` hold strategy objects; ``from_spec`` accepts names and dicts.
    """

    num_slots: int = 64
    slot_init: SlotInitStrategy = field(default_factory=PooledSlotInitStrategy)
    clustering: ClusteringStrategy = field(default_factory=SoftClusteringStrategy)

    def __post_init__(self):
        _check_int("num_slots", self.num_slots, 1, "the number of slots must be an integer >= 1 (the paper uses 64)")
        _check_strategy_fields(self)
        self.slot_init.validate(self.num_slots)
        self.clustering.validate(self.num_slots)

    def build(self, dim: int, head_dim: int) -> nn.Module:
        return SlotAttentionBranch(
            self.slot_init.build(dim, self.num_slots), self.clustering.build(dim, self.num_slots), dim, head_dim
        )


# -------------------------------------------------------------------------------------- fusion
class ParallelMixer(GLMixer):
    """out = global(h) + local(h); with a single branch, that branch's output."""

    def forward(self, h, block_input):
        if self.local_branch is None:
            return self.global_branch(h, block_input)
        if self.global_branch is None:
            return self.local_branch(h)
        return self.global_branch(h, block_input) + self.local_branch(h)


class GlobalThenLocalMixer(GLMixer):
    """z = global(h); out = z + local(z): the local branch refines the global output."""

    def forward(self, h, block_input):
        z = self.global_branch(h, block_input)
        return z + self.local_branch(z)


class LocalThenGlobalMixer(GLMixer):
    """z = local(h); out = z + global(z): the global branch refines the local output."""

    def forward(self, h, block_input):
        z = self.local_branch(h)
        return z + self.global_branch(z, block_input)


@register("fusion", "parallel")
@dataclass(frozen=True)
class ParallelFusion(FusionStrategy):
    """The paper's: both branches on the same input, outputs summed; also runs a single branch."""

    def validate(self, has_local: bool, has_global: bool) -> None:
        pass

    def build(self, dim: int, local_branch: nn.Module | None, global_branch: nn.Module | None) -> GLMixer:
        return ParallelMixer(local_branch, global_branch)


@register("fusion", "global_local")
@dataclass(frozen=True)
class GlobalThenLocalFusion(FusionStrategy):
    """Ablation: the local branch refines the global branch's output (needs both branches)."""

    def build(self, dim: int, local_branch: nn.Module | None, global_branch: nn.Module | None) -> GLMixer:
        return GlobalThenLocalMixer(local_branch, global_branch)


@register("fusion", "local_global")
@dataclass(frozen=True)
class LocalThenGlobalFusion(FusionStrategy):
    """Ablation: the global branch refines the local branch's output (needs both branches)."""

    def build(self, dim: int, local_branch: nn.Module | None, global_branch: nn.Module | None) -> GLMixer:
        return LocalThenGlobalMixer(local_branch, global_branch)


@dataclass(frozen=True)
class GLMixConfig:
    """The strategies of one GLMix block, checked together; ``from_spec`` takes names and dicts."""

    local: LocalStrategy | None = field(default_factory=DWConvLocal)
    global_branch: GlobalStrategy | None = field(default_factory=SlotAttentionGlobal)
    fusion: FusionStrategy = field(default_factory=ParallelFusion)

    def __post_init__(self):
        _check_strategy_fields(self)
        # Fail at config time, not when the first block is built.
        if self.local is None and self.global_branch is None:
            raise ValueError(
                "a GLMix block needs at least one branch: local='none' together with global_branch='none' leaves "
                "nothing to mix; keep the local branch, the global branch, or both"
            )
        self.fusion.validate(self.local is not None, self.global_branch is not None)

    @classmethod
    def from_spec(cls, local: Any = "dwconv", global_branch: Any = "slots", fusion: Any = "parallel") -> GLMixConfig:
        """Resolve each spec (name, dict, ``class_path`` dict or object; ``none`` for a branch) and check them."""
        return cls(
            local=resolve_strategy("local", local, allow_none=True),
            global_branch=resolve_strategy("global", global_branch, allow_none=True),
            fusion=resolve_strategy("fusion", fusion),
        )

    def build(self, dim: int, head_dim: int) -> GLMixer:
        local = self.local.build(dim, head_dim) if self.local else None
        glob = self.global_branch.build(dim, head_dim) if self.global_branch else None
        return self.fusion.build(dim, local, glob)

    def spec(self) -> dict[str, Any]:
        return {
            "local": self.local.spec() if self.local else "none",
            "global_branch": self.global_branch.spec() if self.global_branch else "none",
            "fusion": self.fusion.spec(),
        }
