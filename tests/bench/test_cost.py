"""bench.cost: the one protocol for params, MACs and images/s, checked against hand counts."""
import pytest
import torch
from torch import nn

from glnet_lightning.bench.cost import ModelCost, count_cost, inference_throughput, measure_cost


def _tiny_net() -> nn.Module:
    """Conv 3->8 (3x3, stride 2, pad 1), BN, pooled to a 5-way linear: MACs are easy to count by hand."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def test_counts_are_analytic():
    model = _tiny_net()
    cost = measure_cost(model, 16, throughput=False)
    conv_macs = 8 * 8 * 8 * 3 * 3 * 3  # 8x8 output pixels, 8 channels, 3 inputs x 3x3 kernel each
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.macs == conv_macs + 8 * 5
    assert (cost.params_m, cost.gmacs) == (cost.params / 1e6, cost.macs / 1e9)
    assert cost.throughput is None and cost.figures() == {"params_m": cost.params_m, "gmacs": cost.gmacs}
    assert count_cost(model, 16) == (cost.params, cost.macs)


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_modes_are_restored(grad_enabled, training):
    """Measuring runs in eval mode without autograd, but leaves the model's and the caller's modes as they were."""
    model = _tiny_net().train(training)
    seen = []
    model[0].register_forward_hook(lambda module, *_: seen.append((module.training, torch.is_grad_enabled())))
    with torch.set_grad_enabled(grad_enabled):
        measure_cost(model, 8, batch_size=2, warmup=1, repeats=2)
        assert torch.is_grad_enabled() == grad_enabled
    assert model.training == training and all(m.training == training for m in model.modules())
    assert seen and all(mode == (False, False) for mode in seen)
    assert model[1].num_batches_tracked.item() == 0  # BatchNorm never saw a batch in train mode


def test_throughput_times_warmup_then_repeats_of_one_batch():
    model = _tiny_net()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    cost = measure_cost(model, 8, batch_size=3, warmup=2, repeats=4)
    assert calls == [1] + [3] * (2 + 4)  # one image counted, then warm-up and timed batches
    assert isinstance(cost, ModelCost) and cost.batch_size == 3 and cost.image_size == 8
    speed = cost.throughput
    assert speed.median > 0 and speed.min <= speed.median <= speed.max
    assert cost.figures()["throughput"] == speed.median
    assert cost.figures()["ms_per_batch"] == speed.ms_per_batch > 0


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        inference_throughput(_tiny_net(), 8, batch_size=0)
