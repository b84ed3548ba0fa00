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


@pytest.mark.parametrize("mode, conv_dtype", [("float32", torch.float32), ("autocast", torch.bfloat16)])
def test_cpu_conv_precision_forced_either_way_under_bf16_autocast(mode, conv_dtype, conformance):
    """Both paths, whatever this CPU supports: the convs' dtype, and a model that keeps the fp32 top-1."""
    from glnet_lightning.models import layers

    conv = layers.Conv2d(8, 8, 5, padding=2, groups=8)
    from glnet_lightning.models import convert_official_state_dict, glnet_from_official_kwargs

    fixture = torch.load(conformance / "stl_tiny.pt", weights_only=False)
    model = glnet_from_official_kwargs(**fixture["official_kwargs"]).eval()
    model.load_state_dict(convert_official_state_dict(fixture["state_dict"]))
    before = layers._cpu_conv_precision
    try:
        layers.set_cpu_conv_precision(mode)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(torch.randn(2, 8, 16, 16)).dtype == conv_dtype
            logits = model(fixture["input"])
    finally:
        layers.set_cpu_conv_precision(before)
    assert torch.equal(logits.float().argmax(-1), fixture["logits"].argmax(-1))


def test_cpu_conv_precision_auto_follows_the_cpu(monkeypatch):
    from glnet_lightning.models import layers

    monkeypatch.setattr(layers, "_cpu_conv_precision", "auto")
    monkeypatch.setattr(layers, "_NATIVE_CPU_CONV_DTYPES", frozenset({torch.bfloat16}))
    assert layers.cpu_conv_dtype(torch.bfloat16) == torch.bfloat16 and layers.cpu_conv_dtype(torch.float16) == torch.float32
    monkeypatch.setattr(layers, "_NATIVE_CPU_CONV_DTYPES", frozenset())
    assert layers.cpu_conv_dtype(torch.bfloat16) == torch.float32
    with pytest.raises(ValueError, match="one of"):
        layers.set_cpu_conv_precision("fast")
