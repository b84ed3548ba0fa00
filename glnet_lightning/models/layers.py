"""Small building blocks shared by the GLNet blocks.

Everything here is generic (attention, MLPs, positional encoding, stems); the GLMix-specific
math lives in ``slot_attention.py`` and the blocks in ``blocks.py``. Where timm's layers compute
the same thing they are used (``Attention``, ``Mlp``, ``LayerNorm2d``, ``LayerScale``); what is
here computes something of its own (CPU conv precision, 1x1 convs as GEMMs, the hidden dwconv).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
from timm.layers import Attention, LayerScale, LayerScale2d, get_act_layer, get_norm_layer, register_notrace_module
from torch import nn

LN_EPS = 1e-6  # every norm of GLNet's blocks (token or channels-first) uses this eps


def resolve_norm_layer(norm_layer: Any, option: str) -> Callable[[int], nn.Module]:
    """A norm layer by timm name (``layernorm2d``, ``rmsnorm``, ...) or class, built with GLNet's eps."""
    try:
        return functools.partial(get_norm_layer(norm_layer), eps=LN_EPS)
    except (KeyError, AssertionError, TypeError):
        raise ValueError(f"{option}={norm_layer!r} is not a norm layer: give a name timm.layers.get_norm_layer "
                         f"knows (layernorm2d, layernorm, rmsnorm2d, rmsnorm, ...) or a class") from None


def resolve_act_layer(act_layer: Any) -> type[nn.Module]:
    """An activation layer by timm name (``gelu``, ``relu``, ``silu``, ...) or class."""
    try:
        resolved = get_act_layer(act_layer)
    except KeyError:
        resolved = None
    if resolved is None:
        raise ValueError(f"act_layer={act_layer!r} is not an activation: give a name timm.layers.get_act_layer "
                         f"knows (gelu, relu, silu, ...) or a class")
    return resolved


def is_exporting() -> bool:
    """``torch.compiler.is_exporting()`` (torch.export, ONNX), False in TorchScript, which cannot compile the query."""
    if not torch.jit.is_scripting():
        return torch.compiler.is_exporting()
    return False


def is_compiling() -> bool:
    """``torch.compiler.is_compiling()`` (dynamo, torch.export), False in TorchScript."""
    if not torch.jit.is_scripting():
        return torch.compiler.is_compiling()
    return False


def layer_scale(dim: int, init_value: float | None, channels_first: bool = True) -> nn.Module:
    """timm's per-channel learned scale (on NCHW maps or on tokens); identity unless a value is set (GLNet-16G: 1e-4)."""
    if not init_value:
        return nn.Identity()
    return LayerScale2d(dim, init_value) if channels_first else LayerScale(dim, init_value)


#: How :class:`Conv2d` runs under CPU autocast: ``auto`` follows autocast where oneDNN has
#: low-precision convolution kernels for this CPU (AVX512-core and up: AVX512-BF16, AMX) and runs
#: float32 elsewhere; ``float32`` / ``autocast`` force one path. Environment variable
#: ``GLNET_CPU_CONV_PRECISION`` or :func:`set_cpu_conv_precision`.
CPU_CONV_PRECISIONS = ("auto", "float32", "autocast")
CPU_CONV_PRECISION_ENV = "GLNET_CPU_CONV_PRECISION"


def _native_cpu_conv_dtypes() -> frozenset:
    """Low-precision dtypes oneDNN convolves natively on this CPU (asked once, at import)."""
    try:
        native = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                  torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported()}
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return frozenset()
    return frozenset(dtype for dtype, ok in native.items() if ok)


_NATIVE_CPU_CONV_DTYPES = _native_cpu_conv_dtypes()
_cpu_conv_precision = "auto"


def set_cpu_conv_precision(mode: str) -> None:
    """Choose how convolutions run under CPU autocast (see :data:`CPU_CONV_PRECISIONS`)."""
    global _cpu_conv_precision
    if mode not in CPU_CONV_PRECISIONS:
        raise ValueError(f"CPU conv precision must be one of {CPU_CONV_PRECISIONS}, got {mode!r}")
    _cpu_conv_precision = mode


def cpu_conv_dtype(autocast_dtype: torch.dtype, mode: str | None = None) -> torch.dtype:
    """The dtype GLNet's convolutions run in under CPU autocast to ``autocast_dtype`` (``mode``: the
    current setting unless given)."""
    mode = _cpu_conv_precision if mode is None else mode
    if mode == "autocast":
        return autocast_dtype
    if mode == "auto" and autocast_dtype in _NATIVE_CPU_CONV_DTYPES:
        return autocast_dtype
    return torch.float32


set_cpu_conv_precision(os.environ.get(CPU_CONV_PRECISION_ENV, "auto"))


@register_notrace_module  # device, autocast and map size pick the kernel at run time: a leaf for torch.fx
class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs in float32 under CPU autocast unless the CPU convolves bf16 natively.

    CPUs without native low-precision kernels (AVX2 only: no AVX512-core, AVX512-BF16 or AMX) have
    no fast bf16 convolution: PyTorch falls back to ``_slow_conv2d_forward``, one small kernel per
    group, which made the depthwise convs 2/3 of GLNet's bf16 time on a 2-core AVX2 machine. There
    the convs (stem, transitions, depthwise; a small share of the FLOPs) run in float32 and the
    GEMMs still follow autocast. Where oneDNN has bf16 kernels the convs follow autocast too (a
    5x5 depthwise conv ran 1.9x, a 1x1 conv 4.3x faster in bf16 on an AVX512-BF16 host). The choice
    is made at run time (:func:`cpu_conv_dtype`). On CUDA nothing changes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript has no per-device autocast query
            if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") \
                    and cpu_conv_dtype(torch.get_autocast_dtype("cpu")) == torch.float32:
                with torch.autocast("cpu", enabled=False):
                    return self._conv(x.float())
        return self._conv(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Same-padded depthwise convs on maps smaller than the kernel drop the taps that only see padding.

        Exact (those taps multiply zeros), and it matters for small inputs: a 5x5 depthwise conv on the
        1x1 / 2x2 maps of stages 3-4 at 32 px input was ~20 % of a Fashion-MNIST training step, since
        mkldnn's backward is slow for such shapes; cropped to 1x1 / 3x3 it costs a fraction of that.
        An exported graph always runs the full kernel: same result, and valid for every map size.
        """
        kh, kw = self.kernel_size
        h, w = x.shape[-2:]
        # torch.export: a branch on the map size would pin the exported graph to one side of it
        if is_exporting() or self.groups == 1 or self.stride != (1, 1) or self.dilation != (1, 1) \
                or self.padding != (kh // 2, kw // 2) or self.padding_mode != "zeros" or (h >= kh and w >= kw) \
                or kh % 2 == 0 or kw % 2 == 0:
            return self._conv_forward(x, self.weight, self.bias)  # super() is not scriptable
        ch, cw = max(0, kh // 2 - (h - 1)), max(0, kw // 2 - (w - 1))  # taps cropped from each side
        if is_compiling():  # dynamo cannot trace storage_offset(); compiled code lays out its gradients itself
            weight = self.weight[:, :, ch:kh - ch, cw:kw - cw]
        else:
            # as_strided, not a slice: its gradient keeps the weight's own strides (channels_last under
            # training, see channels_last_conv_weights), where a slice's would come back contiguous
            stride = self.weight.stride()
            weight = self.weight.as_strided((self.weight.shape[0], self.weight.shape[1], kh - 2 * ch, kw - 2 * cw),
                                            stride, self.weight.storage_offset() + ch * stride[2] + cw * stride[3])
        return F.conv2d(x, weight, self.bias, 1, (kh // 2 - ch, kw // 2 - cw), 1, self.groups)


class PointwiseConv(nn.Conv2d):
    """1x1 convolution computed as a GEMM on the channels-last view.

    On CPU a ``linear`` over (B*H*W, C) rows beats mkldnn's 1x1 convolution; the result is a
    channels_last NCHW tensor, so the next depthwise conv and LayerNorm need no layout copy.
    It stays an ``nn.Conv2d`` (same parameters, same state dict, same init).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


def channels_last_conv_weights(model: nn.Module) -> nn.Module:
    """Give every convolution's weight the channels_last layout its gradient has (in place).

    GLNet's maps are channels_last, so the weight gradients of its convolutions come back
    channels_last; :class:`PointwiseConv` is a GEMM whose weight gradient is contiguous and keeps
    its layout. DDP shapes its gradient buckets after the parameters, so a mismatch costs a copy per
    parameter per step. Only strides change; values, names and state dicts stay the same.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and not isinstance(module, PointwiseConv):
            weight = module.weight.data
            # a new tensor, not .contiguous(): a (C, 1, k, k) depthwise weight counts as channels_last already,
            # but its strides are the contiguous ones, and those are what DDP compares
            module.weight.data = torch.empty_like(weight, memory_format=torch.channels_last).copy_(weight)
    return model


class ConvPosEnc(nn.Module):
    """Conditional positional encoding: ``x + depthwise_conv(x)``."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.proj = Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


class ConvMlp(nn.Module):
    """1x1 conv MLP on NCHW maps with an optional residual 3x3 depthwise conv on the hidden features.

    Ours, not timm's ConvMlp: that one has no hidden depthwise conv (the 4G family's) and runs its 1x1s
    as ``nn.Conv2d``, where :class:`PointwiseConv` is a GEMM on the channels-last view.
    """

    def __init__(self, dim: int, hidden_dim: int, dwconv: bool = False, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = PointwiseConv(dim, hidden_dim)
        self.dwconv = Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim) if dwconv else None
        self.act = act_layer()
        self.fc2 = PointwiseConv(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.dwconv is not None:
            x = x + self.dwconv(x)
        return self.fc2(self.act(x))


def check_head_dim(dim: int, head_dim: int, where: str) -> int:
    """Number of heads for ``dim`` channels; raises if ``dim`` is not a multiple of ``head_dim``."""
    if head_dim < 1 or dim % head_dim:
        raise ValueError(
            f"{where}: width {dim} is not a multiple of head_dim={head_dim}; "
            f"choose widths divisible by the head dimension (GLNet uses head_dim=32)."
        )
    return dim // head_dim


def self_attention(dim: int, head_dim: int) -> Attention:
    """timm's multi-head self-attention on (B, N, C) tokens with ``head_dim`` channels per head.

    With the q/k/v bias of the reference's ``nn.MultiheadAttention``, whose packed ``in_proj`` (q, k, v
    in that order) is timm's ``qkv``: published weights map one-to-one.
    """
    return Attention(dim, num_heads=check_head_dim(dim, head_dim, "attention"), qkv_bias=True)


def patch_stem(in_chans: int, dim: int) -> nn.Sequential:
    """GLNet-STL stem: non-overlapping 4x4 patches, then BatchNorm."""
    return nn.Sequential(Conv2d(in_chans, dim, 4, stride=4), nn.BatchNorm2d(dim))


def overlap_stem(in_chans: int, dim: int) -> nn.Sequential:
    """GLNet-4G/9G/16G stem: two stride-2 3x3 convs (to C/2, then C) with BN and GELU between."""
    mid = dim // 2
    return nn.Sequential(
        Conv2d(in_chans, mid, 3, stride=2, padding=1),
        nn.BatchNorm2d(mid),
        nn.GELU(),
        Conv2d(mid, dim, 3, stride=2, padding=1),
        nn.BatchNorm2d(dim),
    )


def norm_conv_transition(in_dim: int, out_dim: int) -> nn.Sequential:
    """STL downsampling between stages: BN, then 2x2 stride-2 conv."""
    return nn.Sequential(nn.BatchNorm2d(in_dim), Conv2d(in_dim, out_dim, 2, stride=2))


def conv_norm_transition(in_dim: int, out_dim: int) -> nn.Sequential:
    """4G-family downsampling between stages: 3x3 stride-2 conv, then BN."""
    return nn.Sequential(Conv2d(in_dim, out_dim, 3, stride=2, padding=1), nn.BatchNorm2d(out_dim))


STEMS = {"patch": patch_stem, "overlap": overlap_stem}
TRANSITIONS = {"norm_conv": norm_conv_transition, "conv_norm": conv_norm_transition}
