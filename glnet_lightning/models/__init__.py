"""GLNet models: the configurable architecture, its strategies, timm registration and the
bridge to the reference implementation's arguments and checkpoints."""
from .glnet import GLNet, GLNetStage, checkpoint_filter_fn, glnet_from_official_kwargs
from .official import convert_official_state_dict, unwrap_state_dict
from .strategies import (
    DWConvLocal,
    GLMixConfig,
    KMeansClusteringStrategy,
    LocalThenGlobalFusion,
    GlobalThenLocalFusion,
    ParallelFusion,
    ParamSlotInitStrategy,
    PooledSlotInitStrategy,
    SlotAttentionGlobal,
    SoftClusteringStrategy,
    WindowMHSALocal,
    resolve_strategy,
    strategy_names,
)

MODEL_NAMES = ("glnet_stl", "glnet_stl_paramslot", "glnet_4g", "glnet_9g", "glnet_16g")

__all__ = [
    "GLNet", "GLNetStage", "checkpoint_filter_fn", "convert_official_state_dict", "glnet_from_official_kwargs",
    "unwrap_state_dict", "DWConvLocal", "WindowMHSALocal", "SlotAttentionGlobal", "PooledSlotInitStrategy",
    "ParamSlotInitStrategy", "SoftClusteringStrategy", "KMeansClusteringStrategy", "ParallelFusion",
    "GlobalThenLocalFusion", "LocalThenGlobalFusion", "GLMixConfig", "resolve_strategy", "strategy_names",
    "MODEL_NAMES",
]
