"""``glnet export``: a checkpoint as an ONNX file or a ``torch.export`` program (``.pt2``), checked against eager.

Why a command of its own: deployment wants one file that runs without this package, and an export
that silently computes something else is worse than none. So the command loads the weights the
same way ``glnet viz`` and ``--model.init_weights`` do (a ``fit`` checkpoint or a published state
dict; ``--weights auto|raw|ema`` as in ``models/weights.py``, through
:func:`glnet_lightning.analysis.checkpoints.load_model`), exports with a
dynamic batch and, where the example allows, a dynamic height and width, then runs the written
file (onnxruntime / ``torch.export.load``) on random inputs and prints the largest difference to
the eager model.

Exported graphs take any batch, and heights / widths of at least :data:`MIN_SIDE` pixels (the
stride-32 map must be at least 2 x 2: ``torch.export`` specialises sizes 0 and 1, so a graph traced
with larger maps cannot take 1 x 1 ones). A smaller ``--img-size`` (e.g. a 32 px Fashion-MNIST
model) exports that size only, with a dynamic batch. The graph computes what eager inference
computes, without its CPU-only shortcuts (pixel-chunked MLPs, cropped depthwise kernels; see
``models/pixel_chunks.py`` and ``models/layers.py``): the same values up to float rounding.

A ``SegmentationModule`` checkpoint (read by ``analysis.checkpoints.load_model`` like any other) exports its
per-pixel logits for sides that are multiples of 32 (:func:`size_multiple`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List

import torch
from torch import nn

from glnet_lightning.errors import UserError

__all__ = ["FORMATS", "MIN_SIDE", "ExportError", "StageOutputs", "check_format", "dynamic_shapes", "export_model",
           "input_channels", "load_exported", "size_multiple", "verify_export", "within_tolerance",
           "TOLERANCE"]

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
MIN_SIDE = 64
"""Smallest height / width a dynamic-size export accepts: 2 x GLNet's total stride of 32."""

TOLERANCE = 1e-4
"""Largest accepted |exported - eager|, times max(1, max |eager|): the ONNX and pt2 graphs differ
from eager only in float rounding."""


class ExportError(UserError, ValueError):
    """An export the user can fix (format, sizes, missing ONNX packages); shown as one error line."""


class StageOutputs(nn.Module):
    """``model.forward_intermediates`` as a module with tensor outputs (final features, then one map per
    stage), so the feature maps can be exported like the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        final, maps = self.model.forward_intermediates(x)
        return [final, *maps]


def input_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def dynamic_shapes(height: int, width: int, fixed_size: bool = False, multiple: int = 1) -> tuple[dict[int, Any]]:
    """``torch.export`` dims for the single image input: a dynamic batch, and a dynamic height / width
    of at least :data:`MIN_SIDE` when the example is that large and ``fixed_size`` is not asked for;
    with ``multiple`` > 1 (a segmentation model, :func:`size_multiple`) any multiple of it."""
    from torch.export import Dim

    dims: dict[int, Any] = {0: Dim("batch", min=1)}
    if not fixed_size and min(height, width) >= MIN_SIDE:
        if multiple > 1:
            low = -(-MIN_SIDE // multiple)
            dims[2], dims[3] = multiple * Dim("height_blocks", min=low), multiple * Dim("width_blocks", min=low)
        else:
            dims[2], dims[3] = Dim("height", min=MIN_SIDE), Dim("width", min=MIN_SIDE)
    return (dims,)


def size_multiple(model: nn.Module) -> int:
    """What an exported graph's dynamic sides must be a multiple of: 1, or a segmentation model's
    ``size_divisor`` (32). Eager, it pads any size to it and crops the logits back; ``torch.export`` cannot
    prove that the padded maps halve exactly stage after stage for every size, so the exported graph takes
    padded sides (pad the image with zeros after normalising, crop the logits)."""
    return int(getattr(model, "size_divisor", 1))


def check_format(fmt: str) -> None:
    """Raise :class:`ExportError` for an unknown format, or for ONNX without its packages (before any slow work)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        import importlib.util

        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install 'glnet-lightning[export]'")


def export_model(model: nn.Module, fmt: str, out: str | Path, height: int, width: int, batch: int = 2,
                 fixed_size: bool = False) -> Path:
    """Export ``model`` (eval mode, contiguous weights: both set in place) traced at ``batch`` x C x
    ``height`` x ``width`` and write ``out``.

    The batch is traced with at least 2 images: an example of 1 would pin the dynamic batch to 1.
    """
    check_format(fmt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # contiguous weights: a module from a training checkpoint has channels_last conv weights
    # (GLNetModule.configure_model), which make every map channels_last and give the dynamic
    # height/width stride guards that torch.export cannot prove; the layout changes no value
    model = model.eval().to(memory_format=torch.contiguous_format)
    multiple = size_multiple(model)
    if not fixed_size and (height % multiple or width % multiple):
        raise ExportError(f"--img-size {height} {width}: a {type(model).__name__} exports for sides that are "
                          f"multiples of {multiple} (pad images to them); give such a size, or --fixed-size")
    example = torch.randn(max(batch, 2), input_channels(model), height, width)
    with torch.no_grad():
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=dynamic_shapes(height, width, fixed_size, multiple))
    if fmt == "pt2":
        torch.export.save(program, out)
        return out
    outputs = ["logits"] if not isinstance(model, StageOutputs) else \
        ["features", *(f"stage{i}" for i in range(len(model.model.stages)))]
    # external_data=False: one self-contained file (fine below ONNX's 2 GB limit; GLNet-16G is 0.4 GB)
    torch.onnx.export(program, (example,), str(out), dynamo=True, input_names=["images"], output_names=outputs,
                      external_data=False, verbose=False)
    return out


def load_exported(path: str | Path, fmt: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """An exported file as a function of the image batch that returns all its outputs as tensors."""
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()

        def run_pt2(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                out = module(x)
            return list(out) if isinstance(out, (list, tuple)) else [out]

        return run_pt2
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise ExportError("onnxruntime is not installed: pip install 'glnet-lightning[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]


def verify_export(model: nn.Module, exported: Callable[[torch.Tensor], list[torch.Tensor]],
                  x: torch.Tensor) -> tuple[float, float]:
    """(largest |exported - eager|, largest |eager|) over all outputs for input ``x``; raises if the
    outputs' number or shapes differ. ``exported``: from :func:`load_exported`."""
    with torch.no_grad():
        expected = model.eval()(x)
    expected = list(expected) if isinstance(expected, (list, tuple)) else [expected]
    got = exported(x)
    if len(got) != len(expected):
        raise AssertionError(f"the exported file gives {len(got)} outputs, the model {len(expected)}")
    for g, e in zip(got, expected):
        if tuple(g.shape) != tuple(e.shape):
            raise AssertionError(f"exported output shape {tuple(g.shape)} != eager {tuple(e.shape)}")
    diff = max((g.float() - e.float()).abs().max().item() for g, e in zip(got, expected))
    return diff, max(e.abs().max().item() for e in expected)


def within_tolerance(diff: float, scale: float) -> bool:
    return diff <= TOLERANCE * max(1.0, scale)
