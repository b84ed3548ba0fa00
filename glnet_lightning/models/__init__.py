"""GLNet models: the configurable architecture, its strategies, timm registration and the
bridge to the reference implementation's arguments and checkpoints."""
from .glnet import GLNet, GLNetStage, checkpoint_filter_fn, glnet_from_official_kwargs
from .official import convert_official_state_dict
from .weights import WEIGHTS_CHOICES, Weights, WeightsError, load_weights, read_weights
from .strategies import (
    ClusteringStrategy,
    DWConvLocal,
    FusionStrategy,
    GLMixConfig,
    GLMixer,
    GlobalStrategy,
    KMeansClusteringStrategy,
    LocalStrategy,
    LocalThenGlobalFusion,
    GlobalThenLocalFusion,
    ParallelFusion,
    ParamSlotInitStrategy,
    PooledSlotInitStrategy,
    SlotAttentionGlobal,
    SlotInitStrategy,
    SoftClusteringStrategy,
    WindowMHSALocal,
    register,
    resolve_strategy,
    strategy_names,
)

MODEL_NAMES = ("glnet_stl", "glnet_stl_paramslot", "glnet_4g", "glnet_9g", "glnet_16g")

__all__ = [
    "GLNet", "GLNetStage", "checkpoint_filter_fn", "convert_official_state_dict", "glnet_from_official_kwargs",
    "WEIGHTS_CHOICES", "Weights", "WeightsError", "load_weights", "read_weights", "DWConvLocal", "WindowMHSALocal", "SlotAttentionGlobal", "PooledSlotInitStrategy",
    "ParamSlotInitStrategy", "SoftClusteringStrategy", "KMeansClusteringStrategy", "ParallelFusion",
    "GlobalThenLocalFusion", "LocalThenGlobalFusion", "GLMixConfig", "GLMixer", "resolve_strategy",
    "strategy_names", "register", "LocalStrategy", "GlobalStrategy", "SlotInitStrategy", "ClusteringStrategy",
    "FusionStrategy", "MODEL_NAMES",
]
