"""Pixel-wise work in cache-sized chunks on the CPU inference path.

The conv MLP half of a block (norm -> 1x1 -> GELU -> 1x1 -> residual) treats every pixel on its
own. Run on the whole map at once it materialises a (B, 4C, H, W) hidden tensor: 77 MB at batch
16 and 56x56 for GLNet-STL's first stage. glibc hands allocations above 32 MB straight to
``mmap``, so each forward page-faults that memory in again (up to 122k minor faults per forward
measured on the 2-core CPU of docs/benchmarks.md), and the GELU streams it through DRAM. In chunks
of a few hundred pixels the hidden tensor stays in L2 and the allocations are recycled.

Only for CPU inference: autograd would have to keep every chunk anyway, CUDA's caching allocator
has no page-fault cost and prefers few large kernels, and under ``torch.compile`` inductor fuses
the same ops itself (a Python loop would just be unrolled into the graph). ``torch.fx`` graphs and
TorchScript take the whole-map path too: a shape-dependent loop cannot be recorded in either.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

PIXELS_PER_CHUNK = 512
"""Rows per chunk: the stage-1 hidden chunk of GLNet-STL (512 x 384 floats, 768 KiB) splits over
the two threads' 512 KiB L2 caches, and GEMMs of 512 rows still run near the machine's peak."""


def runs_in_chunks(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` should take its chunked path for input ``x``: CPU, eval mode, no autograd,
    not being traced by ``torch.compile`` or ``torch.fx`` (checked first: a Proxy has no device)."""
    if isinstance(x, torch.fx.Proxy):
        return False
    return (x.device.type == "cpu" and not module.training and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


def map_pixel_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     pixels_per_chunk: int | None = None) -> torch.Tensor:
    """``fn(x)`` for a pixel-wise ``fn`` on an NCHW map, computed ``pixels_per_chunk`` pixels at a time
    (default :data:`PIXELS_PER_CHUNK`).

    ``fn`` receives each chunk as a (1, C, 1, n) channels_last map, so it can be the module's own
    NCHW forward; it must treat pixels independently (1x1 convs, norms over channels, pointwise
    ops). The result is a channels_last (B, C_out, H, W) tensor; a channels_last input is read
    in place, any other layout is copied once. A map of at most one chunk goes to ``fn`` whole.
    """
    pixels_per_chunk = pixels_per_chunk or PIXELS_PER_CHUNK
    batch, channels, height, width = x.shape
    if x.numel() == 0 or batch * height * width <= pixels_per_chunk:
        return fn(x)  # one chunk: nothing to gain from copying it into a new buffer
    pixels = x.permute(0, 2, 3, 1).reshape(-1, channels)  # (B*H*W, C), a view when channels_last
    out = None
    for start in range(0, pixels.shape[0], pixels_per_chunk):
        chunk = pixels[start:start + pixels_per_chunk]
        result = fn(chunk.view(1, 1, -1, channels).permute(0, 3, 1, 2))
        result = result.permute(0, 2, 3, 1).reshape(chunk.shape[0], -1)
        if out is None:
            out = result.new_empty(pixels.shape[0], result.shape[1])
        out[start:start + chunk.shape[0]] = result
    return out.view(batch, height, width, -1).permute(0, 3, 1, 2)
