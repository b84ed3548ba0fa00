"""Local branches of GLMix: they work on the fine pixel grid of the normed block input."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

from .layers import Conv2d, PointwiseConv, self_attention


class DWConvBranch(nn.Module):
    """conv1x1 -> depthwise conv k x k -> conv1x1, all with bias, nothing in between (the paper's)."""

    def __init__(self, dim: int, kernel_size: int = 5):
        super().__init__()
        self.proj_in = PointwiseConv(dim, dim)
        self.dwconv = Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.proj_out = PointwiseConv(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.dwconv(self.proj_in(x)))


def relative_position_index(window_size: int) -> torch.Tensor:
    """(w*w, w*w) index into a ((2w-1)**2)-entry bias table, one entry per relative offset."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, w*w)
    rel = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)  # (2, N, N), each in [0, 2w-2]
    return rel[0] * (2 * window_size - 1) + rel[1]


@register_notrace_function  # whether to pad depends on the map size: one call node for torch.fx
def pad_to_windows(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Zero-pad an NCHW map at the bottom/right to multiples of ``window_size``; as is when it fits."""
    pad_h, pad_w = (-x.shape[-2]) % window_size, (-x.shape[-1]) % window_size
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


class WindowAttentionBranch(nn.Module):
    """Window MHSA local branch (ablation): non-overlapping w x w windows, no shift, learned
    relative position bias. Maps whose sides are not multiples of w are zero-padded at the
    bottom/right and cropped back; padded tokens take part in attention (no mask), as in Swin's
    unshifted windows.
    """

    def __init__(self, dim: int, head_dim: int = 32, window_size: int = 7):
        super().__init__()
        self.window_size = window_size
        self.attn = self_attention(dim, head_dim)
        self.rel_pos_bias = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, self.attn.num_heads))
        nn.init.trunc_normal_(self.rel_pos_bias, std=0.02)
        self.register_buffer("rel_pos_index", relative_position_index(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        w = self.window_size
        x = pad_to_windows(x, w)
        Hp, Wp = x.shape[-2:]
        # (B, C, Hp, Wp) -> (B * nH * nW, w*w, C)
        windows = x.view(B, C, Hp // w, w, Wp // w, w).permute(0, 2, 4, 3, 5, 1).reshape(-1, w * w, C)
        bias = self.rel_pos_bias[self.rel_pos_index].permute(2, 0, 1).unsqueeze(0).to(windows.dtype)
        windows = self.attn(windows, attn_mask=bias)
        x = windows.view(B, Hp // w, Wp // w, w, w, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, Hp, Wp)
        return x[:, :, :H, :W]
