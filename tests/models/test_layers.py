"""Layer-level behaviour that the model files rely on."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glnet_lightning.models.layers import Conv2d


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (2, 7), (9, 9)])
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_depthwise_conv_on_maps_smaller_than_its_kernel_matches_the_full_kernel(size, kernel_size):
    """Conv2d crops the taps that only see zero padding; outputs and all gradients must be unchanged."""
    torch.manual_seed(0)
    conv = Conv2d(6, 6, kernel_size, padding=kernel_size // 2, groups=6)
    x = torch.randn(2, 6, *size, requires_grad=True)
    ours = conv(x)
    reference = F.conv2d(x, conv.weight, conv.bias, padding=kernel_size // 2, groups=6)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (x, conv.weight, conv.bias), grad_out)
    ref_grads = torch.autograd.grad(reference, (x, conv.weight, conv.bias), grad_out)
    for got, expected in zip(ours_grads, ref_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if size[0] < kernel_size // 2 + 1:  # rows of taps that never see the input get no gradient, as before
        assert ours_grads[1][:, :, 0].abs().sum() == 0
