"""``glnet bench --head ...``: what a segmentation model or a detector over a GLNet backbone costs.

Why beside the classification benchmark rather than inside it: dense models are measured the way the
paper's dense tables are, at one rectangular size per task (ADE20K 512 x 2048, COCO 800 x 1280), in
inference only, and a detector's forward takes a list of images and returns boxes, not logits. The
counting and timing are the classification benchmark's own (:func:`~.flops.count_macs`,
:func:`~.timing.run_interleaved`), so the figures mean the same thing: GMACs are multiply-accumulates
per image, what the paper's and mmseg's / mmdet's "GFLOPs" columns count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from glnet_lightning.models.backbone import resolve_backbone

from .cost import count_cost
from .errors import BenchError
from .report import cpu_flags, cpu_model, device_name, format_table
from .spec import ModelSpec
from .timing import Throughput, run_interleaved

__all__ = ["DENSE_HEADS", "DenseRow", "build_dense_model", "dense_record", "parse_size", "render_dense",
           "run_dense_benchmark"]


@dataclass(frozen=True)
class DenseHead:
    task: str  # "segmentation" | "detection"
    num_classes: int  # of the paper's data set: ADE20K's 150 classes; COCO's 80 categories + the background
    size: tuple[int, int]  # (height, width) the paper's tables count at


DENSE_HEADS = {
    "semfpn": DenseHead("segmentation", 150, (512, 2048)),
    "upernet": DenseHead("segmentation", 150, (512, 2048)),
    "maskrcnn": DenseHead("detection", 81, (800, 1280)),  # torchvision counts the background as a class
    "retinanet": DenseHead("detection", 81, (800, 1280)),
}


@dataclass
class DenseRow:
    model: str
    head: str
    size: tuple[int, int]
    params: int
    macs: int  # forward MACs per image
    throughput: Throughput


def parse_size(text: str) -> tuple[int, int]:
    """``512x2048`` (height x width) or ``512`` (square) as ``(height, width)``."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise BenchError(f"--img-size {text!r}: give HEIGHTxWIDTH (512x2048) or one side (512)")
    return size  # type: ignore[return-value]


def build_dense_model(head: str, spec: ModelSpec, num_classes: int | None = None,
                      size: tuple[int, int] | None = None) -> nn.Module:
    """The ``head`` model over the backbone ``spec`` names (untrained: nothing is downloaded).

    A detector resizes its inputs itself (``min_size`` / ``max_size``); it is set to keep ``size`` as it is,
    so the figures are those of that size (800 x 1280 stays 800 x 1280 under torchvision's 800 / 1333 too)."""
    if head not in DENSE_HEADS:
        raise BenchError(f"--head {head!r}: choose one of {', '.join(DENSE_HEADS)}")
    info = DENSE_HEADS[head]
    classes = info.num_classes if num_classes is None else num_classes
    try:
        backbone = resolve_backbone(spec.name, **spec.kwargs)
        if info.task == "segmentation":
            from glnet_lightning.models.segmentation import build_segmentation_model

            return build_segmentation_model(head, backbone, classes)
        from glnet_lightning.models.detection import build_detection_model

        h, w = size or info.size
        return build_detection_model(head, backbone, classes, min_size=min(h, w), max_size=max(h, w))
    except (ValueError, TypeError) as exc:
        raise BenchError(f"cannot create {head} over {spec.text!r}: {exc}") from exc


def run_dense_benchmark(head: str, specs: list[ModelSpec], size: tuple[int, int], *, batch_size: int = 1,
                        warmup: int = 1, repeats: int = 5, num_classes: int | None = None,
                        device: str = "cpu") -> list[DenseRow]:
    """Parameters, forward MACs of one image and fp32 inference images/s of each model, timed interleaved."""
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise BenchError(f"need --batch-size >= 1, --repeats >= 1, --warmup >= 0; got {batch_size}, {repeats}, "
                         f"{warmup}")
    target = torch.device(device)
    images = torch.randn(batch_size, 3, *size, generator=torch.Generator().manual_seed(0)).to(target)
    models, counts, steps = [], [], []
    for spec in specs:
        model = build_dense_model(head, spec, num_classes, size).to(target).eval()
        counts.append(count_cost(model, size))
        models.append(model)

        def step(model: nn.Module = model) -> None:
            with torch.inference_mode():
                model(images)

        steps.append(step)
    times = run_interleaved(steps, warmup, repeats, target)
    return [DenseRow(spec.text, head, size, params, macs, Throughput.from_times(seconds, batch_size))
            for spec, (params, macs), seconds in zip(specs, counts, times)]


def dense_record(row: DenseRow) -> dict:
    """One row as plain data for ``--json``."""
    return {"model": row.model, "head": row.head, "height": row.size[0], "width": row.size[1], "params": row.params,
            "macs": row.macs, "images_per_s": row.throughput.median, "images_per_s_min": row.throughput.min,
            "images_per_s_max": row.throughput.max, "ms_per_batch": row.throughput.ms_per_batch}


def render_dense(rows: list[DenseRow], *, batch_size: int, warmup: int, repeats: int, device: str) -> str:
    """The report: what was measured on which CPU (its flags), then one row per model."""
    head = rows[0].head
    h, w = rows[0].size
    lines = [
        f"glnet bench: {head} ({DENSE_HEADS[head].task}) at {h}x{w}, fp32 inference, batch={batch_size}, "
        f"device={device} ({device_name(device)}), threads={torch.get_num_threads()}, torch={torch.__version__}",
        f"cpu: {cpu_model()}; flags: {' '.join(cpu_flags()) or 'none listed'}",
        f"GMACs: forward multiply-accumulates of one {h}x{w} image (the 'GFLOPs' of the paper's and mmseg's / "
        f"mmdet's tables); im/s: median and min-max of {repeats} interleaved repeats after {warmup} warm-up",
        "",
    ]
    table = [[r.model, f"{r.params / 1e6:.2f}", f"{r.macs / 1e9:.1f}", f"{r.throughput.median:.2f}",
              f"{r.throughput.min:.2f}-{r.throughput.max:.2f}"] for r in rows]
    return "\n".join(lines) + format_table(["backbone", "params M", "GMACs", "im/s", "min-max"], table)
