"""GLNet as a dense-prediction backbone: the feature pyramid and the weights it starts from.

Why here: the segmentation heads (smp's FPN / UPerNet) and the detectors (torchvision's Mask R-CNN /
RetinaNet) both need the same two things, the stride 4-32 features of any backbone description and the
classification weights loaded into them, so both get them from this one place. The features are timm's
``features_only`` model (``forward_intermediates``), the weights come through ``models/weights.py``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from torch import nn

from .backbone import resolve_backbone
from .weights import Weights, WeightsError, mismatch, read_weights

__all__ = ["DENSE_OUT_INDICES", "build_dense_backbone", "load_backbone_weights"]

#: The four stages, at strides 4, 8, 16 and 32.
DENSE_OUT_INDICES = (0, 1, 2, 3)


def build_dense_backbone(backbone: Any, drop_path_rate: float = 0.0,
                         out_indices: Sequence[int] = DENSE_OUT_INDICES) -> nn.Module:
    """timm's ``features_only`` model of ``backbone`` (any description :func:`resolve_backbone` reads).

    ``forward(x)`` returns one NCHW map per ``out_indices`` entry; ``feature_info.channels()`` and
    ``feature_info.reduction()`` describe them. Sides that are not multiples of 32 are floored by the
    strided layers, so heads pad their inputs first.
    """
    return resolve_backbone(backbone).build(0, drop_path_rate, features_only=True, out_indices=tuple(out_indices))


def _network(features: nn.Module) -> nn.Module:
    """The network inside timm's feature wrapper (``FeatureGetterNet.model``), under the classifier's key names."""
    return getattr(features, "model", features)


def _unused_modules(network: nn.Module, state: dict[str, Any]) -> list[str]:
    """The top-level parts of the weights that a features model has pruned to ``nn.Identity`` or does not
    have at all (the classifier, the final norm, the token-labeling head)."""
    names = sorted({key.split(".", 1)[0] for key in state})
    own = dict(network.named_children())
    return [n for n in names if n not in own or (isinstance(own[n], nn.Identity) and any(
        key.startswith(f"{n}.") for key in state))]


def load_backbone_weights(features: nn.Module, source: Weights | str | os.PathLike, choice: str = "auto", *,
                          what: str = "backbone weights", option: str = "--model.init_weights_key") -> str:
    """Load classification weights (a published checkpoint, a state dict, a ``fit`` checkpoint of
    ``GLNetModule``: raw or EMA by ``choice``) into a :func:`build_dense_backbone` model.

    The parts a dense backbone has no use for are dropped and named in the returned log line; every other
    tensor must fit exactly (strict), else :class:`WeightsError` says what differs before anything is loaded.
    """
    weights = source if isinstance(source, Weights) else read_weights(source, choice, what=what, option=option)
    network = _network(features)
    unused = _unused_modules(network, weights.state_dict)
    state = {k: v for k, v in weights.state_dict.items() if k.split(".", 1)[0] not in unused}
    problem = mismatch(state, network, strict=True, hyper_parameters=weights.hyper_parameters)
    if problem is not None:
        raise WeightsError(f"{what} {weights.source} do not fit the {type(network).__name__} backbone: {problem}")
    network.load_state_dict(state, strict=True)
    dropped = f"; not used for dense prediction: {', '.join(unused)}" if unused else ""
    return f"{what}: {weights.describe()}{dropped}"
