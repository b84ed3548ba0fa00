"""Lightning side of the project: the training recipe as a LightningModule, and its callbacks."""
from .checkpoint_io import AtomicCheckpointIO
from .detection import DetectionModule
from .ema import EmaWeights
from .module import GLNetModule, TokenLabeling
from .nonfinite import NonFiniteLossGuard, TrainingDiverged
from .preemption import PreemptionCheckpoint
from .run_checkpoint import RunCheckpoint
from .optim import build_param_groups
from .prediction_writer import PredictionWriter
from .schedule import WarmupCosine, scale_lr
from .segmentation import SegmentationModule
from .slot_maps import SlotMapCallback

__all__ = [
    "SegmentationModule",
    "DetectionModule",
    "GLNetModule",
    "TokenLabeling",
    "SlotMapCallback",
    "PredictionWriter",
    "AtomicCheckpointIO",
    "NonFiniteLossGuard",
    "TrainingDiverged",
    "PreemptionCheckpoint",
    "RunCheckpoint",
    "EmaWeights",
    "WarmupCosine",
    "scale_lr",
    "build_param_groups",
]
