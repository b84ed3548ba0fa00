"""Multiply-accumulate and parameter counts, reusable outside the benchmark.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2), so they
cover convolutions, linears and attention matmuls but not element-wise ops --
the fvcore-style convention the paper's GFLOPs use. PyTorch's counter has no
formula for the CPU flash-attention kernel that ``scaled_dot_product_attention``
dispatches to, so we supply one: without it attention would count as zero on CPU.
Its convolution-backward formula ignores ``groups`` (a depthwise conv's gradients
counted as if the conv were dense), so we supply a grouped one too.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _attention_macs(query_shape, key_shape, value_shape) -> int:
    """MACs of Q @ K^T and P @ V; key/value heads are broadcast to the query heads."""
    *lead, q_len, head_dim = query_shape
    k_len, v_dim = key_shape[-2], value_shape[-1]
    batch_heads = 1
    for size in lead:
        batch_heads *= size
    return batch_heads * q_len * k_len * (head_dim + v_dim)


def _cpu_flash_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention_macs(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                              out_shape=None, **kwargs) -> int:
    # Backward recomputes the scores and runs four more matmuls (dP, dV, dQ, dK):
    # 2.5x the forward matmul work.
    return 5 * _attention_macs(query_shape, key_shape, value_shape)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each requested gradient (input, weight) costs the forward conv's MACs, with ``groups`` respected:
    the weight shape already holds ``in_channels / groups`` per output channel."""
    per_output = 1
    for size in w_shape[1:]:
        per_output *= size
    outputs = 1
    for size in (x_shape if transposed else grad_out_shape):  # the elements the forward conv produced
        outputs *= size
    return 2 * outputs * per_output * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


_EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
    aten.convolution_backward: _conv_backward_flops,
}


def _first_parameter(model: nn.Module) -> torch.Tensor | None:
    return next(iter(model.parameters()), None)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives (its first parameter's device; the CPU for a model without parameters)."""
    reference = _first_parameter(model)
    return reference.device if reference is not None else torch.device("cpu")


def count_macs(model: nn.Module, input_size=(3, 224, 224), *, backward: bool = False) -> int:
    """Multiply-accumulates of one forward pass on a single input of ``input_size``.

    With ``backward=True`` the backward pass (of ``output.sum()``) is counted too,
    which is what a training step really executes. The model runs in eval mode
    (restored afterwards) so batch-of-one BatchNorm works; matmul work is the same.
    """
    reference = _first_parameter(model)
    device = model_device(model)
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    inputs = torch.randn(1, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
        with counter, torch.set_grad_enabled(backward):
            output = model(inputs)
            if backward:
                first_tensor(output).float().sum().backward()
    finally:
        model.train(was_training)
        if backward:
            model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // 2


def first_tensor(output) -> torch.Tensor:
    """Some models return tuples (e.g. distillation heads); the first entry is the logits."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
