"""The global branch of GLMix: grid -> slots (clustering), slot MHSA, slots -> grid (dispatch).

Soft clustering and dispatching are both attention with the *same* cosine-similarity logits
(docs/design.md, section 1, steps 4-6):

    logits = tau * <normalize(init_slots), normalize(pixels)>              (B, M, L)
    slots  = softmax_L(logits) @ pixels                                     clustering
    out    = softmax_M(logits^T) @ MHSA(slots)                              dispatching

so each is one ``scaled_dot_product_attention`` call with queries/keys swapped. SDPA never hands
the (B, M, L) matrix to autograd, fused kernels keep the softmax in float32 under autocast, and
no Python loop runs over the batch or the slots.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import is_exporting, self_attention


def pixels_of(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a free view for channels_last tensors."""
    return x.flatten(2).transpose(1, 2)


def grid_of(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), the inverse of :func:`pixels_of`."""
    return tokens.transpose(1, 2).unflatten(2, (height, width))


def adaptive_pool_weights(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) weights that average ``size`` positions into ``bins`` the way adaptive average
    pooling does: bin i covers [floor(i * size / bins), ceil((i + 1) * size / bins))."""
    index = torch.arange(bins, device=like.device)
    start = (index * size) // bins
    end = ((index + 1) * size + bins - 1) // bins
    position = torch.arange(size, device=like.device)
    inside = (position >= start[:, None]) & (position < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class PooledSlotInit(nn.Module):
    """Per-image slot init: adaptive average pooling of the block input to a sqrt(M) x sqrt(M) grid."""

    def __init__(self, num_slots: int):
        super().__init__()
        self.side = math.isqrt(num_slots)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_exporting():
            # ONNX has no adaptive pooling: its exporter bakes the example input's kernel into an
            # AveragePool, wrong for any other map size. Two small averaging matmuls hold for all sizes.
            H, W = x.shape[-2:]
            rows, cols = adaptive_pool_weights(H, self.side, x), adaptive_pool_weights(W, self.side, x)
            return pixels_of(rows @ x @ cols.transpose(0, 1))
        return pixels_of(F.adaptive_avg_pool2d(x, self.side))


class ParamSlotInit(nn.Module):
    """Static slot init: learned (1, M, C) slots shared by all images."""

    def __init__(self, dim: int, num_slots: int, std: float = 0.02):
        super().__init__()
        self.slots = nn.Parameter(torch.empty(1, num_slots, dim))
        nn.init.trunc_normal_(self.slots, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A copy, not an expand() view: views of a parameter made under no_grad break module
        # hooks (torch's FlopCounterMode); the copy is only B x M x C.
        return self.slots.repeat(x.shape[0], 1, 1)


class SoftClustering(nn.Module):
    """The paper's soft clustering/dispatching with a learnable temperature ``tau`` (init C**-0.5)."""

    def __init__(self, dim: int):
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(dim**-0.5))

    def forward(self, init_slots: torch.Tensor, pixels: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Group pixels (B, L, C) into slots (B, M, C); returns the slots and what dispatch needs."""
        queries = F.normalize(init_slots, dim=-1).unsqueeze(1)  # (B, 1, M, C)
        # tau / |p| on the small (B, L, 1) tensor: one pass over the pixels instead of two
        scale = self.tau / torch.linalg.vector_norm(pixels, dim=-1, keepdim=True).clamp_min(1e-12)
        keys = (pixels * scale).unsqueeze(1)  # (B, 1, L, C): tau * normalised pixels
        slots = F.scaled_dot_product_attention(queries, keys, pixels.unsqueeze(1), scale=1.0)
        return slots.squeeze(1), (queries, keys)

    def dispatch(self, slots: torch.Tensor, ctx: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Send slots (B, M, C) back to pixels (B, L, C) with softmax over slots of the same logits."""
        queries, keys = ctx
        return F.scaled_dot_product_attention(keys, queries, slots.unsqueeze(1), scale=1.0).squeeze(1)

    def assignment(self, ctx: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Per-pixel soft assignment over slots, (B, M, L), summing to one over M (for visualisation)."""
        queries, keys = ctx
        logits = queries.squeeze(1).float() @ keys.squeeze(1).float().transpose(1, 2)
        return logits.softmax(dim=1)


class KMeansClustering(nn.Module):
    """Hard k-means clustering with hashing init (the paper's unstable ablation, docs/design.md, section 3).

    Initial centroids: each normalised pixel's bucket is the sign pattern of log2(M) fixed random
    projections; bucket means are the centroids (empty buckets fall back to the slot init). Then
    ``iters`` Lloyd iterations on cosine similarity. Assignment is one-hot both ways: a slot is the
    mean of its pixels, a pixel receives its slot. Gradients reach the pixels through the means,
    never through the (discrete) assignment.
    """

    def __init__(self, dim: int, num_slots: int, iters: int, seed: int = 0):
        super().__init__()
        bits = int(math.log2(num_slots))
        self.num_slots = num_slots
        self.iters = iters
        generator = torch.Generator().manual_seed(seed)
        # Persistent, so a trained model hashes exactly as it did during training.
        self.register_buffer("hash_proj", torch.randn(dim, bits, generator=generator))
        self.register_buffer("bit_values", 2 ** torch.arange(bits), persistent=False)

    def _one_hot(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.one_hot(index, self.num_slots).to(dtype)  # (B, L, M)

    def _means(self, one_hot: torch.Tensor, values: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        counts = one_hot.sum(dim=1).unsqueeze(-1)  # (B, M, 1)
        means = one_hot.transpose(1, 2) @ values / counts.clamp(min=1)
        return torch.where(counts > 0, means, fallback)

    def forward(self, init_slots: torch.Tensor, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            unit = F.normalize(pixels.detach(), dim=-1)
            bucket = ((unit @ self.hash_proj.to(unit.dtype)) > 0).long() @ self.bit_values
            centroids = self._means(self._one_hot(bucket, unit.dtype), unit, F.normalize(init_slots.detach(), dim=-1))
            for _ in range(self.iters):
                nearest = (unit @ F.normalize(centroids, dim=-1).transpose(1, 2)).argmax(dim=-1)
                centroids = self._means(self._one_hot(nearest, unit.dtype), unit, centroids)
            nearest = (unit @ F.normalize(centroids, dim=-1).transpose(1, 2)).argmax(dim=-1)
            one_hot = self._one_hot(nearest, pixels.dtype)
        slots = self._means(one_hot, pixels, init_slots)
        return slots, one_hot

    def dispatch(self, slots: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot @ slots

    def assignment(self, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot.transpose(1, 2).float()


class SlotAttentionBranch(nn.Module):
    """Global branch: slot init from the block input, clustering of the normed pixels, slot MHSA,
    dispatch back to the grid.

    Set ``record_assignment = True`` to keep the last per-pixel assignment over slots in
    ``self.assignment`` (B, M, H, W): computed from the same logits as the forward pass, for the
    slot visualisations.
    """

    # Declared on the class (a real type, not a postponed string: no __future__ import here) so TorchScript types it.
    assignment: Optional[torch.Tensor]

    def __init__(self, slot_init: nn.Module, clustering: nn.Module, dim: int, head_dim: int):
        super().__init__()
        self.slot_init = slot_init
        self.clustering = clustering
        self.relation = self_attention(dim, head_dim)
        self.record_assignment = False
        self.assignment = None

    def forward(self, h: torch.Tensor, block_input: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        pixels = pixels_of(h)
        slots, ctx = self.clustering(self.slot_init(block_input), pixels)
        out = self.clustering.dispatch(self.relation(slots), ctx)
        if self.record_assignment:
            self.assignment = self.clustering.assignment(ctx).detach().unflatten(2, (H, W))
        return grid_of(out, H, W)
