"""count_macs / count_params against hand-computed counts."""
import torch.nn as nn
import torch.nn.functional as F

from glnet_lightning.bench.flops import count_macs, count_params


class _Attention(nn.Module):
    """Bare self-attention on a (heads, tokens, head_dim) input."""

    def forward(self, x):
        return F.scaled_dot_product_attention(x, x, x)


def test_linear_macs_are_in_times_out():
    assert count_macs(nn.Linear(10, 20), (10,)) == 10 * 20


def test_conv_macs_are_analytic():
    conv = nn.Conv2d(4, 8, kernel_size=3, stride=2, padding=1, groups=2)
    out_pixels = 8 * 8  # 16x16 input, stride 2
    assert count_macs(conv, (4, 16, 16)) == out_pixels * 8 * (4 // 2) * 3 * 3


def test_sdpa_counts_both_matmuls():
    heads, tokens, dim = 2, 16, 8
    qk = heads * tokens * tokens * dim  # Q @ K^T
    pv = heads * tokens * tokens * dim  # P @ V
    assert count_macs(_Attention(), (heads, tokens, dim)) == qk + pv


def test_backward_adds_the_gradient_matmuls():
    linear = nn.Linear(10, 20)
    # the input needs no gradient, so backward only adds the weight gradient
    assert count_macs(linear, (10,), backward=True) == 2 * 10 * 20
    assert all(p.grad is None for p in linear.parameters())


def test_backward_of_grouped_convs_respects_groups():
    """torch's own conv-backward formula counts a depthwise conv as dense; ours must not."""
    dense = nn.Conv2d(4, 8, 3, padding=1)
    depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8)
    model = nn.Sequential(dense, depthwise)
    dense_macs = 16 * 16 * 8 * 4 * 9
    depthwise_macs = 16 * 16 * 8 * 1 * 25
    assert count_macs(model, (4, 16, 16)) == dense_macs + depthwise_macs
    # backward: weight gradients of both convs, the input gradient of the depthwise one only
    # (the model input needs none), each costing its forward MACs
    assert count_macs(model, (4, 16, 16), backward=True) == 2 * dense_macs + 3 * depthwise_macs


def test_count_macs_restores_training_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    count_macs(model, (4,))
    assert model.training


def test_count_params_counts_shared_weights_once():
    linear = nn.Linear(3, 5)
    assert count_params(nn.Sequential(linear, nn.ReLU(), linear)) == 3 * 5 + 5
    assert count_params(nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2))) == (15 + 5) + (10 + 2)


def test_default_input_is_imagenet_sized():
    conv = nn.Conv2d(3, 1, kernel_size=1, bias=False)
    assert count_macs(conv) == 224 * 224 * 3
    assert isinstance(count_macs(conv), int)


def test_meta_device_counts_what_the_cpu_counts():
    """Full-size networks are counted on the meta device (tests/sweeps/test_ablation.py): shapes only, the same
    params and MACs as real tensors, attention (the CPU flash kernel's formula), k-means and windows included."""
    import timm
    import torch

    import glnet_lightning  # noqa: F401  (registers the models)
    from testkit import tiny, tiny_named

    for name, settings in [("glnet_stl", tiny(stage_mixers=["glmix", "glmix", "glmix", "mha"])),
                           ("glnet_stl", tiny(clustering="kmeans", fusion="local_global", slot_init="param")),
                           ("glnet_stl", tiny(local="window_mhsa", window_size=7)),
                           ("glnet_4g", tiny_named(depths=[1, 1, 2, 1]))]:
        cpu = timm.create_model(name, **settings)
        with torch.device("meta"):
            meta = timm.create_model(name, **settings)
        assert next(meta.parameters()).is_meta
        assert count_params(meta) == count_params(cpu)
        assert count_macs(meta, (3, 64, 64)) == count_macs(cpu, (3, 64, 64)) > 0, (name, settings)
