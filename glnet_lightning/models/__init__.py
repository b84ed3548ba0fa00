"""GLNet models: the configurable architecture, its strategies, timm registration and the
bridge to the reference implementation's arguments and checkpoints."""
from .backbone import Backbone, TimmModel, resolve_backbone
from .glnet import NAMED_MODELS, GLNet, GLNetArgs, GLNetStage, checkpoint_filter_fn, glnet_from_official_kwargs
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

MODEL_NAMES = tuple(NAMED_MODELS)  # the published named models, from their one table

__all__ = [
    "Backbone", "TimmModel", "resolve_backbone", "NAMED_MODELS", "GLNetArgs",
    "GLNet", "GLNetStage", "checkpoint_filter_fn", "convert_official_state_dict", "glnet_from_official_kwargs",
    "WEIGHTS_CHOICES", "Weights", "WeightsError", "load_weights", "read_weights", "DWConvLocal", "WindowMHSALocal", "SlotAttentionGlobal", "PooledSlotInitStrategy",
    "ParamSlotInitStrategy", "SoftClusteringStrategy", "KMeansClusteringStrategy", "ParallelFusion",
    "GlobalThenLocalFusion", "LocalThenGlobalFusion", "GLMixConfig", "GLMixer", "resolve_strategy",
    "strategy_names", "register", "LocalStrategy", "GlobalStrategy", "SlotInitStrategy", "ClusteringStrategy",
    "FusionStrategy", "MODEL_NAMES",
]
