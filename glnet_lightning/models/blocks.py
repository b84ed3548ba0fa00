"""The three block types of the GLNet family (docs/design.md, sections 1 and 2), all NCHW in and out."""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from .layers import LN_EPS, ConvMlp, ConvPosEnc, LayerNorm2d, MultiHeadSelfAttention, TokenMlp, layer_scale
from .pixel_chunks import map_pixel_chunks, runs_in_chunks
from .slot_attention import grid_of, pixels_of
from .strategies import GLMixConfig


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


class _ConvMlpBlock(nn.Module):
    """What GLMix and 'mha_nchw' blocks share: an optional CPE in front and the
    norm -> conv MLP -> layer scale -> residual half; subclasses add the token mixer."""

    def __init__(self, dim: int, mlp_ratio: float, cpe_kernel: int, mlp_dwconv: bool,
                 layer_scale_init: float | None, drop_path: float):
        super().__init__()
        self.cpe = ConvPosEnc(dim, cpe_kernel) if cpe_kernel else None
        self.norm2 = LayerNorm2d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), dwconv=mlp_dwconv)
        self.ls2 = layer_scale(dim, layer_scale_init)
        self.drop_path2 = _drop_path(drop_path)

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        # Without the hidden depthwise conv every op here is pixel-wise: on CPU inference it runs
        # in cache-sized chunks (pixel_chunks.py says why); same math, same result.
        if not torch.jit.is_scripting():  # TorchScript cannot pass a bound method along
            if self.mlp.dwconv is None and runs_in_chunks(self, x):
                return map_pixel_chunks(self._mlp_residual, x)
        return self._mlp_residual(x)

    def _mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class GLMixBlock(_ConvMlpBlock):
    """GLMix block: [CPE] -> norm -> GLMixer (local + global branch, per the fusion strategy) ->
    residual, then norm -> conv MLP -> residual. The slot init sees the block input before CPE/norm.
    """

    def __init__(self, dim: int, mixer: GLMixConfig, head_dim: int = 32, mlp_ratio: float = 4.0, cpe_kernel: int = 0,
                 mlp_dwconv: bool = False, layer_scale_init: float | None = None, drop_path: float = 0.0):
        super().__init__(dim, mlp_ratio, cpe_kernel, mlp_dwconv, layer_scale_init, drop_path)
        self.norm1 = LayerNorm2d(dim)
        self.mixer = mixer.build(dim, head_dim)
        self.ls1 = layer_scale(dim, layer_scale_init)
        self.drop_path1 = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block_input = x
        if self.cpe is not None:
            x = self.cpe(x)
        x = x + self.drop_path1(self.ls1(self.mixer(self.norm1(x), block_input)))
        return self.mlp_residual(x)


class TransformerBlock(nn.Module):
    """Plain pre-norm transformer block on the tokens of an NCHW map (GLNet-STL stage 4, 'mha')."""

    def __init__(self, dim: int, head_dim: int = 32, mlp_ratio: float = 4.0, drop_path: float = 0.0, **_unused):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MultiHeadSelfAttention(dim, head_dim)
        self.drop_path1 = _drop_path(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = TokenMlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        t = pixels_of(x)
        t = t + self.drop_path1(self.attn(self.norm1(t)))
        t = t + self.drop_path2(self.mlp(self.norm2(t)))
        return grid_of(t, H, W)


class MHSANCHWBlock(_ConvMlpBlock):
    """Full-attention block of the 4G family ('mha_nchw'): CPE, token MHSA, conv MLP, layer scale."""

    def __init__(self, dim: int, head_dim: int = 32, mlp_ratio: float = 4.0, cpe_kernel: int = 0,
                 mlp_dwconv: bool = False, layer_scale_init: float | None = None, drop_path: float = 0.0, **_unused):
        super().__init__(dim, mlp_ratio, cpe_kernel, mlp_dwconv, layer_scale_init, drop_path)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MultiHeadSelfAttention(dim, head_dim)
        self.ls1 = layer_scale(dim, layer_scale_init, channel_dim=-1)
        self.drop_path1 = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpe is not None:
            x = self.cpe(x)
        H, W = x.shape[-2:]
        attn = self.ls1(self.attn(self.norm1(pixels_of(x))))
        x = x + self.drop_path1(grid_of(attn, H, W))
        return self.mlp_residual(x)


BLOCK_TYPES = {"glmix": GLMixBlock, "mha": TransformerBlock, "mha_nchw": MHSANCHWBlock}
