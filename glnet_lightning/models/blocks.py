"""The three block types of the GLNet family (docs/design.md, sections 1 and 2), all NCHW in and out.

``norm_layer`` is the norm on NCHW maps (timm's ``LayerNorm2d`` by default), ``norm_layer_cl`` the one on
tokens (timm's ``LayerNorm``), ``act_layer`` the MLP activation; ``models/glnet.py`` resolves names.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from timm.layers import (DropPath, LayerNorm, LayerNorm2d, Mlp, RmsNorm2d, RmsNorm2dFp32, SimpleNorm2d,
                         SimpleNorm2dFp32)
from torch import nn

from .layers import LN_EPS, ConvMlp, ConvPosEnc, layer_scale, self_attention
from .pixel_chunks import map_pixel_chunks, runs_in_chunks
from .slot_attention import grid_of, pixels_of
from .strategies import GLMixConfig

NormLayer = Callable[[int], nn.Module]
_LAYER_NORM_2D = functools.partial(LayerNorm2d, eps=LN_EPS)
_LAYER_NORM = functools.partial(LayerNorm, eps=LN_EPS)

# Norms that treat each pixel on its own (over its channels; BatchNorm in eval, where chunks run): then the
# MLP half may run in pixel chunks. Any other (a GroupNorm sees the whole map) keeps the whole-map path.
_PER_PIXEL_NORMS = (nn.LayerNorm, RmsNorm2d, RmsNorm2dFp32, SimpleNorm2d, SimpleNorm2dFp32, nn.BatchNorm2d)


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


class _ConvMlpBlock(nn.Module):
    """What GLMix and 'mha_nchw' blocks share: an optional CPE in front and the
    norm -> conv MLP -> layer scale -> residual half; subclasses add the token mixer."""

    def __init__(self, dim: int, mlp_ratio: float, cpe_kernel: int, mlp_dwconv: bool,
                 layer_scale_init: float | None, drop_path: float, norm_layer: NormLayer,
                 act_layer: type[nn.Module]):
        super().__init__()
        self.cpe = ConvPosEnc(dim, cpe_kernel) if cpe_kernel else None
        self.norm2 = norm_layer(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), dwconv=mlp_dwconv, act_layer=act_layer)
        self.ls2 = layer_scale(dim, layer_scale_init)
        self.drop_path2 = _drop_path(drop_path)
        self.mlp_per_pixel = not mlp_dwconv and isinstance(self.norm2, _PER_PIXEL_NORMS)

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        # Without the hidden depthwise conv every op here is pixel-wise: on CPU inference it runs
        # in cache-sized chunks (pixel_chunks.py says why); same math, same result.
        if not torch.jit.is_scripting():  # TorchScript cannot pass a bound method along
            if self.mlp_per_pixel and runs_in_chunks(self, x):
                return map_pixel_chunks(self._mlp_residual, x)
        return self._mlp_residual(x)

    def _mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class GLMixBlock(_ConvMlpBlock):
    """GLMix block: [CPE] -> norm -> GLMixer (local + global branch, per the fusion strategy) ->
    residual, then norm -> conv MLP -> residual. The slot init sees the block input before CPE/norm.
    """

    def __init__(self, dim: int, mixer: GLMixConfig, head_dim: int = 32, mlp_ratio: float = 4.0, cpe_kernel: int = 0,
                 mlp_dwconv: bool = False, layer_scale_init: float | None = None, drop_path: float = 0.0,
                 norm_layer: NormLayer = _LAYER_NORM_2D, act_layer: type[nn.Module] = nn.GELU):
        super().__init__(dim, mlp_ratio, cpe_kernel, mlp_dwconv, layer_scale_init, drop_path, norm_layer, act_layer)
        self.norm1 = norm_layer(dim)
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
    """Plain pre-norm transformer block on the tokens of an NCHW map (GLNet-STL stage 4, 'mha'):
    no CPE and a token MLP, as the reference's; layer scale on both residual branches when set."""

    def __init__(self, dim: int, head_dim: int = 32, mlp_ratio: float = 4.0, layer_scale_init: float | None = None,
                 drop_path: float = 0.0, norm_layer: NormLayer = _LAYER_NORM, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = self_attention(dim, head_dim)
        self.ls1 = layer_scale(dim, layer_scale_init, channels_first=False)
        self.drop_path1 = _drop_path(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.ls2 = layer_scale(dim, layer_scale_init, channels_first=False)
        self.drop_path2 = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        t = pixels_of(x)
        t = t + self.drop_path1(self.ls1(self.attn(self.norm1(t))))
        t = t + self.drop_path2(self.ls2(self.mlp(self.norm2(t))))
        return grid_of(t, H, W)


class MHSANCHWBlock(_ConvMlpBlock):
    """Full-attention block of the 4G family ('mha_nchw'): CPE, token MHSA, conv MLP, layer scale."""

    def __init__(self, dim: int, head_dim: int = 32, mlp_ratio: float = 4.0, cpe_kernel: int = 0,
                 mlp_dwconv: bool = False, layer_scale_init: float | None = None, drop_path: float = 0.0,
                 norm_layer: NormLayer = _LAYER_NORM_2D, norm_layer_cl: NormLayer = _LAYER_NORM,
                 act_layer: type[nn.Module] = nn.GELU):
        super().__init__(dim, mlp_ratio, cpe_kernel, mlp_dwconv, layer_scale_init, drop_path, norm_layer, act_layer)
        self.norm1 = norm_layer_cl(dim)
        self.attn = self_attention(dim, head_dim)
        self.ls1 = layer_scale(dim, layer_scale_init, channels_first=False)
        self.drop_path1 = _drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpe is not None:
            x = self.cpe(x)
        H, W = x.shape[-2:]
        attn = self.ls1(self.attn(self.norm1(pixels_of(x))))
        x = x + self.drop_path1(grid_of(attn, H, W))
        return self.mlp_residual(x)


BLOCK_TYPES = {"glmix": GLMixBlock, "mha": TransformerBlock, "mha_nchw": MHSANCHWBlock}
