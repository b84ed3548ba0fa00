"""Lightning side of the project: the training recipe as a LightningModule, and its callbacks."""
from .checkpoint_io import AtomicCheckpointIO
from .ema import EmaWeights
from .module import GLNetModule
from .optim import build_param_groups
from .prediction_writer import PredictionWriter
from .schedule import WarmupCosine, scale_lr
from .slot_maps import SlotMapCallback

__all__ = [
    "GLNetModule",
    "SlotMapCallback",
    "PredictionWriter",
    "AtomicCheckpointIO",
    "EmaWeights",
    "WarmupCosine",
    "scale_lr",
    "build_param_groups",
]
