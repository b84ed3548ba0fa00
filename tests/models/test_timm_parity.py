"""timm parity (issue 16): forward_intermediates / prune_intermediate_layers, features_only through the
getter and torch.fx, FX tracing and TorchScript, checked as timm's own test_models.py checks its families."""
from __future__ import annotations

import copy
import math
from typing import List

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules, set_layer_config
from timm.models._features import FeatureGetterNet, FeatureInfo
from timm.models._features_fx import FeatureGraphNet, create_feature_extractor
from torchvision.models import feature_extraction as tv_fx

import glnet_lightning  # noqa: F401  (registers the models)
from testkit import tiny_named, tiny_named_models

# Every named model's structure at the tiny sizes (the models that differ there: glnet_9g is glnet_4g); 96 px
# puts 576 pixels in stage 1 at batch 1, so eager CPU inference takes the chunked MLP path (pixel_chunks.py)
# that FX and TorchScript graphs leave out.
TINY = tiny_named()
NAMED = tiny_named_models()
DIMS = TINY["dims"]
SIZE = 96
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
TRACER_KWARGS = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                     param_shapes_constant=True)  # what timm's FX tests trace with


def tiny_model(name: str = "glnet_4g", **edits):
    return timm.create_model(name, **tiny_named(**edits)).eval()


def stage_outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Each stage's output as forward_features sees it, recorded by hooks (independent of forward_intermediates)."""
    outs = []
    handles = [s.register_forward_hook(lambda m, i, o: outs.append(o)) for s in model.stages]
    try:
        model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return outs


def assert_maps_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and torch.equal(g, e)


def check_timm_feature_maps(maps, feature_info, input_size, batch_size):
    """The assertions of timm's test_model_forward_features / _intermediates, for NCHW maps."""
    assert len(maps) == len(feature_info.channels())
    for c, r, o in zip(feature_info.channels(), feature_info.reduction(), maps):
        assert o.shape[0] == batch_size and o.shape[1] == c
        assert o.shape[2] <= math.ceil(input_size[0] / r) + 1 and o.shape[3] <= math.ceil(input_size[1] / r) + 1
        assert not torch.isnan(o).any()


# ------------------------------------------------------------------------------ forward_intermediates
@pytest.mark.parametrize("name", ["glnet_stl", "glnet_4g"])
@torch.no_grad()
def test_forward_intermediates_gives_every_stage_and_the_features(name):
    model = tiny_model(name)
    x = torch.randn(2, 3, 64, 64)
    final, maps = model.forward_intermediates(x)
    assert torch.equal(final, model.forward_features(x))
    assert_maps_equal(maps, stage_outputs(model, x))
    check_timm_feature_maps(maps, FeatureInfo(model.feature_info, (0, 1, 2, 3)), (64, 64), 2)


@torch.no_grad()
def test_indices_pick_stages_like_timm():
    model = tiny_model()
    x = torch.randn(1, 3, 64, 64)
    full = model.forward_intermediates(x, intermediates_only=True)
    for indices, expected in [(1, [3]), (2, [2, 3]), (4, [0, 1, 2, 3]), ([0, -1], [0, 3]), ([-3, 2], [1, 2]), ((1,), [1])]:
        maps = model.forward_intermediates(x, indices=indices, intermediates_only=True)
        assert_maps_equal(maps, [full[i] for i in expected])
    for bad in (0, 5, [4], [-5]):
        with pytest.raises(AssertionError, match="out of range"):
            model.forward_intermediates(x, indices=bad)


@torch.no_grad()
def test_norm_applies_the_final_norm_to_the_last_stage_only():
    model = tiny_model()
    model.norm.running_mean.normal_()  # a BatchNorm that visibly changes its input
    x = torch.randn(1, 3, 64, 64)
    raw = stage_outputs(model, x)
    final, maps = model.forward_intermediates(x, indices=[1, 3], norm=True)
    assert torch.equal(maps[0], raw[1])
    assert torch.equal(maps[1], model.norm(raw[3])) and torch.equal(maps[1], final)
    assert not torch.equal(maps[1], raw[3])


@torch.no_grad()
def test_stop_early_runs_only_the_needed_stages():
    model = tiny_model()
    x = torch.randn(1, 3, 64, 64)
    calls = []
    for i, stage in enumerate(model.stages):
        stage.register_forward_hook(lambda m, inp, out, i=i: calls.append(i))
    final, maps = model.forward_intermediates(x, indices=[1], stop_early=True)
    assert calls == [0, 1]
    assert torch.equal(final, maps[0])  # the last stage run, not normed (the norm belongs to stage 4)
    calls.clear()
    final, _ = model.forward_intermediates(x, indices=[1])
    assert calls == [0, 1, 2, 3] and torch.equal(final, model.forward_features(x))


@torch.no_grad()
def test_intermediates_only_and_nhwc_output():
    model = tiny_model()
    x = torch.randn(2, 3, 64, 64)
    nchw = model.forward_intermediates(x, intermediates_only=True)
    assert isinstance(nchw, list) and len(nchw) == 4
    nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    for a, b in zip(nhwc, nchw):
        assert a.is_contiguous() and torch.equal(a, b.permute(0, 2, 3, 1))
    with pytest.raises(AssertionError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NCL")


# ------------------------------------------------------------------------------ prune_intermediate_layers
@torch.no_grad()
def test_pruned_model_gives_the_same_maps():
    model = tiny_model()
    x = torch.randn(2, 3, 64, 64)
    full = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([0, -2]) == [0, 2]
    assert len(pruned.stages) == 3 and isinstance(pruned.norm, torch.nn.Identity)
    assert isinstance(pruned.head, torch.nn.Identity) and pruned.num_features == DIMS[2]
    assert_maps_equal(pruned.forward_intermediates(x, indices=[0, 2], intermediates_only=True), full)
    assert torch.equal(pruned(x), full[1])  # no norm, no pooling, no head: the stage-3 map
    assert set(pruned.state_dict()) < set(model.state_dict())


@torch.no_grad()
def test_pruning_to_the_last_stage_keeps_norm_unless_asked():
    model = tiny_model()
    x = torch.randn(1, 3, 64, 64)
    kept = copy.deepcopy(model)
    assert kept.prune_intermediate_layers(1) == [3]
    assert len(kept.stages) == 4 and isinstance(kept.head, torch.nn.Identity)
    assert torch.equal(kept.forward_features(x), model.forward_features(x))
    with_head = copy.deepcopy(model)
    with_head.prune_intermediate_layers(4, prune_head=False)
    assert torch.equal(with_head(x), model(x))
    no_norm = copy.deepcopy(model)
    no_norm.prune_intermediate_layers(4, prune_norm=True)
    assert isinstance(no_norm.norm, torch.nn.Identity)
    assert torch.equal(no_norm.forward_features(x), stage_outputs(model, x)[-1])


# ------------------------------------------------------------------------------ features_only
@pytest.mark.parametrize("name", ["glnet_stl", "glnet_4g"])
@torch.no_grad()
def test_features_only_uses_forward_intermediates_of_a_pruned_model(name):
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.manual_seed(0)
    reference = tiny_model(name)
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True, out_indices=(0, 1), **TINY).eval()
    assert isinstance(features, FeatureGetterNet)
    assert len(features.model.stages) == 2 and isinstance(features.model.head, torch.nn.Identity)
    assert features.feature_info.channels() == DIMS[:2] and features.feature_info.reduction() == [4, 8]
    maps = features(x)
    assert_maps_equal(maps, reference.forward_intermediates(x, indices=[0, 1], intermediates_only=True))
    check_timm_feature_maps(maps, features.feature_info, (SIZE, SIZE), 1)


@torch.no_grad()
def test_features_only_fx_matches_the_getter():
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.manual_seed(0)
    getter = timm.create_model("glnet_stl", features_only=True, out_indices=(1, 2, 3), **TINY).eval()
    torch.manual_seed(0)
    graph = timm.create_model("glnet_stl", features_only=True, feature_cls="fx", out_indices=(1, 2, 3), **TINY).eval()
    assert isinstance(graph, FeatureGraphNet)
    assert graph.feature_info.channels() == getter.feature_info.channels() == DIMS[1:]
    for a, b in zip(graph(x), getter(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.manual_seed(0)
    nhwc = FeatureGetterNet(tiny_model("glnet_stl"), out_indices=(1, 2, 3), output_fmt="NHWC")  # hands timm's Format enum over
    for a, b in zip(nhwc(x), getter(x)):
        assert torch.equal(a, b.permute(0, 2, 3, 1))


# ------------------------------------------------------------------------------ torch.fx
def fx_model(model, train: bool = False):
    """timm's test helper in short: trace with timm's leaf modules / functions and return the last node
    (the logits; GLNet has a single output in both modes)."""
    train_nodes, eval_nodes = tv_fx.get_graph_node_names(model, tracer_kwargs=TRACER_KWARGS)
    return tv_fx.create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=TRACER_KWARGS)


def fx_out(graph_module, x):
    return torch.cat(tuple(graph_module(x).values()))


@pytest.mark.parametrize("name", NAMED)
def test_model_forward_fx(name):
    model = tiny_model(name)
    x = torch.randn(1, 3, SIZE, SIZE)
    traced = fx_model(model)
    with torch.no_grad():
        out = model(x)
        fx = fx_out(traced, x)
    # timm asserts exact equality; eager inference here runs the MLP in pixel chunks, the graph on the whole map
    torch.testing.assert_close(fx, out, rtol=0, atol=1e-5)
    assert out.shape[0] == 1 and not torch.isnan(out).any()
    # with autograd on both take the same path: the graph replays exactly the eager ops
    assert torch.equal(fx_out(traced, x), model(x))


@pytest.mark.parametrize("name", NAMED)
def test_model_backward_fx(name):
    model = timm.create_model(name, num_classes=42, **TINY).train()
    num_params = sum(p.numel() for p in model.parameters())
    traced = fx_model(model, train=True)
    out = fx_out(traced, torch.randn(2, 3, 64, 64))
    out.mean().backward()
    for n, p in traced.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
    assert sum(p.grad.numel() for p in traced.parameters() if p.grad is not None) == num_params
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


@pytest.mark.parametrize("overrides", [
    dict(local="window_mhsa", window_size=4), dict(clustering="kmeans"), dict(fusion="local_global"),
    dict(local="none"), dict(global_branch="none", num_slots=None), dict(layer_scale=0.5, kernel_size=7),
], ids=["window_padded", "kmeans", "local_global", "global_only", "local_only", "ls_k7"])
@torch.no_grad()
def test_ablation_configs_trace_with_fx(overrides):
    model = tiny_model("glnet_stl", **overrides)
    x = torch.randn(1, 3, 88, 72)  # 22x18 in stage 1: windows of 4 need padding, k7 is cropped in stage 4
    traced = create_feature_extractor(model, {"stages.1": "s1", "head": "logits"})
    out = traced(x)
    torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(out["s1"], stage_outputs(model, x)[1], rtol=0, atol=1e-5)


@pytest.mark.slow
@torch.no_grad()
def test_a_named_model_traces_with_fx_at_full_width():
    model = timm.create_model("glnet_stl").eval()
    x = torch.randn(1, 3, 64, 64)
    traced = create_feature_extractor(model, ["stages.2", "head"])
    out = traced(x)
    torch.testing.assert_close(out["head"], model(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(out["stages.2"], stage_outputs(model, x)[2], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ TorchScript
@pytest.mark.parametrize("name", NAMED)
@torch.no_grad()
def test_model_forward_torchscript(name):
    with set_layer_config(scriptable=True):
        model = tiny_model(name)
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    out = scripted(x)
    assert out.shape[0] == 1 and not torch.isnan(out).any()
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMED)
@torch.no_grad()
def test_model_forward_fx_then_torchscript(name):
    """timm's model suite scripts the fx-traced graph too: the traced ``forward`` carries the input's type
    annotation, so it must be a real type (a postponed string annotation becomes a name TorchScript cannot
    resolve)."""
    with set_layer_config(exportable=True):
        model = tiny_model(name)
    scripted = torch.jit.script(fx_model(model))
    x = torch.randn(1, 3, SIZE, SIZE)
    out = fx_out(scripted, x)
    assert out.shape[0] == 1 and not torch.isnan(out).any()
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    dict(local="window_mhsa", window_size=4), dict(clustering="kmeans"), dict(slot_init="param"),
    dict(fusion="global_local"), dict(local="none"), dict(global_branch="none", num_slots=None),
], ids=["window_padded", "kmeans", "param", "global_local", "global_only", "local_only"])
@torch.no_grad()
def test_ablation_configs_script(overrides):
    model = tiny_model("glnet_stl", **overrides)
    x = torch.randn(1, 3, 88, 72)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.slow
@torch.no_grad()
def test_a_named_model_scripts_at_full_width():
    model = timm.create_model("glnet_stl").eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=0, atol=1e-5)


class _Intermediates(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        maps = self.model.forward_intermediates(x, indices=[0, -1], norm=True, intermediates_only=True)
        assert torch.jit.isinstance(maps, List[torch.Tensor])
        return maps


@torch.no_grad()
def test_forward_intermediates_is_scriptable():
    wrapper = _Intermediates(tiny_model())
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(torch.jit.script(wrapper)(x), wrapper(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ odd input sizes
@pytest.mark.parametrize("name", ["glnet_stl", "glnet_4g"])
@torch.no_grad()
def test_odd_input_size_gives_forward_features_shapes(name):
    model = tiny_model(name)
    x = torch.randn(1, 3, 161, 225)
    final, maps = model.forward_intermediates(x)
    features = model.forward_features(x)
    assert final.shape == features.shape and torch.equal(final, features)
    assert [m.shape for m in maps] == [s.shape for s in stage_outputs(model, x)]
    check_timm_feature_maps(maps, FeatureInfo(model.feature_info, (0, 1, 2, 3)), (161, 225), 1)
    # the FX graph and the TorchScript module carry no fixed shape either
    traced = create_feature_extractor(model, [f"stages.{i}" for i in range(4)])
    for a, b in zip(traced(x).values(), maps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=0, atol=1e-5)
