"""Each GLMix strategy on its own: the math it promises, shapes, gradients and its config errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glnet_lightning.models import GLNet, resolve_strategy, strategy_names
from glnet_lightning.models.local_branches import DWConvBranch, WindowAttentionBranch
from glnet_lightning.models.slot_attention import KMeansClustering, SoftClustering
from glnet_lightning.models.strategies import GLMixConfig, ParallelFusion, SlotAttentionGlobal
from testkit import tiny

TINY = tiny(num_classes=7)


def _all_params_get_grad(module: nn.Module, out: torch.Tensor) -> list[str]:
    (out.float() ** 2).mean().backward()
    return [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


# ----------------------------------------------------------------------------- local branches
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_dwconv_branch_keeps_shape_and_trains(k):
    branch = resolve_strategy("local", {"name": "dwconv", "kernel_size": k}).build(32, 16)
    assert isinstance(branch, DWConvBranch) and branch.dwconv.kernel_size == (k, k)
    x = torch.randn(2, 32, 9, 11)
    out = branch(x)
    assert out.shape == x.shape
    assert _all_params_get_grad(branch, out) == []


@pytest.mark.parametrize("hw", [(14, 14), (10, 9)])
def test_window_mhsa_branch_pads_and_attends_within_windows(hw):
    branch = resolve_strategy("local", "window_mhsa").build(32, 16)
    assert isinstance(branch, WindowAttentionBranch) and branch.window_size == 7
    x = torch.randn(2, 32, *hw, requires_grad=True)
    out = branch(x)
    assert out.shape == x.shape
    # a pixel of the first window depends on nothing outside that window
    out[0, :, 0, 0].sum().backward(retain_graph=True)
    assert x.grad[0, :, 7:, :].abs().sum() == 0 and x.grad[0, :, :, 7:].abs().sum() == 0
    assert x.grad[0, :, :7, :7].abs().sum() > 0
    x.grad = None
    assert _all_params_get_grad(branch, out) == []


# ----------------------------------------------------------------------------- slots
def test_pooled_init_pools_block_input_to_a_grid():
    init = resolve_strategy("slot_init", "pool").build(8, 16)
    x = torch.randn(2, 8, 12, 12)
    slots = init(x)
    assert slots.shape == (2, 16, 8)
    assert torch.allclose(slots[:, 0], x[:, :, :3, :3].mean(dim=(2, 3)))
    assert torch.allclose(slots[:, 5], x[:, :, 3:6, 3:6].mean(dim=(2, 3)))


def test_param_init_is_shared_by_all_images_and_learns():
    init = resolve_strategy("slot_init", "param").build(8, 10)
    slots = init(torch.randn(3, 8, 4, 4))
    assert slots.shape == (3, 10, 8) and torch.equal(slots[0], slots[2])
    assert _all_params_get_grad(init, slots) == []
    assert init.slots.std().item() == pytest.approx(0.02, rel=0.5)


def test_soft_clustering_is_the_paper_math():
    """slots = softmax_L(logits) @ pixels; dispatch = softmax_M(logits^T) @ slots, same logits."""
    torch.manual_seed(1)
    clustering = SoftClustering(dim=8)
    with torch.no_grad():
        clustering.tau.fill_(3.0)
    init, pixels = torch.randn(2, 4, 8), torch.randn(2, 30, 8)
    logits = 3.0 * F.normalize(init, dim=-1) @ F.normalize(pixels, dim=-1).transpose(1, 2)  # (B, M, L)
    slots, ctx = clustering(init, pixels)
    assert torch.allclose(slots, logits.softmax(-1) @ pixels, atol=1e-5)
    new_slots = torch.randn(2, 4, 8)
    assert torch.allclose(clustering.dispatch(new_slots, ctx), logits.transpose(1, 2).softmax(-1) @ new_slots, atol=1e-5)
    assignment = clustering.assignment(ctx)
    assert torch.allclose(assignment, logits.softmax(1), atol=1e-5)
    assert torch.allclose(assignment.sum(1), torch.ones(2, 30))


def test_soft_clustering_temperature_starts_at_inverse_sqrt_width():
    assert SoftClustering(dim=64).tau.item() == pytest.approx(64**-0.5)


def test_kmeans_assignment_is_hard_and_slots_are_member_means():
    torch.manual_seed(2)
    km = KMeansClustering(dim=8, num_slots=4, iters=3)
    pixels = torch.randn(2, 50, 8, requires_grad=True)
    init = torch.randn(2, 4, 8)
    slots, one_hot = km(init, pixels)
    assert torch.equal(one_hot.sum(-1), torch.ones(2, 50))
    assert set(one_hot.unique().tolist()) <= {0.0, 1.0}
    for b in range(2):
        for m in range(4):
            members = one_hot[b, :, m].bool()
            if members.any():
                assert torch.allclose(slots[b, m], pixels[b, members].mean(0), atol=1e-5)
            else:
                assert torch.equal(slots[b, m], init[b, m])
    out = km.dispatch(slots, one_hot)
    assert torch.allclose(out[0, 0], slots[0, one_hot[0, 0].argmax()])
    out.sum().backward()
    assert pixels.grad.abs().sum() > 0


def test_kmeans_hashing_is_fixed_and_saved():
    a, b = KMeansClustering(8, 16, 1), KMeansClustering(8, 16, 1)
    assert torch.equal(a.hash_proj, b.hash_proj) and a.hash_proj.shape == (8, 4)
    assert "hash_proj" in a.state_dict()


def test_slot_attention_branch_records_assignment_on_demand():
    branch = SlotAttentionGlobal(num_slots=9).build(32, 16)
    h, x = torch.randn(2, 32, 6, 6), torch.randn(2, 32, 6, 6)
    branch(h, x)
    assert branch.assignment is None
    branch.record_assignment = True
    out = branch(h, x)
    assert out.shape == h.shape
    assert branch.assignment.shape == (2, 9, 6, 6)
    assert torch.allclose(branch.assignment.sum(1), torch.ones(2, 6, 6), atol=1e-5)


# ----------------------------------------------------------------------------- fusion
class _Scale(nn.Module):
    def __init__(self, factor, needs_input=False):
        super().__init__()
        self.factor, self.needs_input = factor, needs_input

    def forward(self, h, block_input=None):
        return h * self.factor + (block_input if self.needs_input else 0)


@pytest.mark.parametrize("order,expected", [
    ("parallel", lambda h, x: (2 * h + x) + 3 * h),
    ("global_local", lambda h, x: (2 * h + x) + 3 * (2 * h + x)),
    ("local_global", lambda h, x: 3 * h + (2 * 3 * h + x)),
])
def test_fusion_orders(order, expected):
    mixer = resolve_strategy("fusion", order).build(4, _Scale(3), _Scale(2, needs_input=True))
    h, x = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.allclose(mixer(h, x), expected(h, x))


def test_single_branch_mixers():
    h, x = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.allclose(ParallelFusion().build(4, _Scale(3), None)(h, x), 3 * h)
    assert torch.allclose(ParallelFusion().build(4, None, _Scale(2, True))(h, x), 2 * h + x)


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("kwargs,message", [
    (dict(num_slots=10), r"num_slots=10 is not a perfect square.*slot_init='param'"),
    (dict(kernel_size=4), r"kernel_size=4 is invalid.*odd"),
    (dict(kernel_size=0), r"kernel_size=0 is invalid"),
    (dict(local="none", global_branch="none"), r"needs at least one branch"),
    (dict(local="conv", ), r"unknown local strategy 'conv'; choose one of \['dwconv', 'window_mhsa', 'none'\]"),
    (dict(clustering="spectral"), r"unknown clustering strategy 'spectral'; choose one of \['kmeans', 'soft'\]"),
    (dict(fusion="global_local", global_branch="none"), r"fusion='global_local' needs both branches"),
    (dict(clustering="kmeans", num_slots=9), r"num_slots=9 is invalid for clustering='kmeans'.*power of two"),
    (dict(local="window_mhsa", kernel_size=3), r"kernel_size=3 applies to local='dwconv'"),
    (dict(global_branch="none", num_slots=-1), r"num_slots=-1 is invalid"),
    (dict(global_branch="none", clustering="spectral"), r"unknown clustering strategy 'spectral'"),
    (dict(local="none", kernel_size=4), r"kernel_size=4 is invalid.*odd"),
    (dict(local={"name": "dwconv", "kernal_size": 3}), r"no setting\(s\) \['kernal_size'\]"),
    (dict(num_slots=[4, 4]), r"num_slots has 2 entries but the model has 4 stages"),
    (dict(dims=(16, 32, 40, 64)), r"stage 2 \(dims\[2\]\): width 40 is not a multiple of head_dim=16"),
    (dict(stage_mixers=("glmix", "glmix", "conv", "mha")), r"stage_mixers\[2\]='conv'"),
    (dict(num_slots=0), r"num_slots=0 is invalid"),
])
def test_bad_settings_raise_value_error_naming_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GLNet(**{**TINY, **kwargs})


def test_strategy_names_are_listed():
    assert strategy_names("local") == ["dwconv", "window_mhsa"]
    assert strategy_names("fusion") == ["global_local", "local_global", "parallel"]
    assert strategy_names("slot_init") == ["param", "pool"]


def test_specs_round_trip_through_plain_config():
    config = GLMixConfig.from_spec(local={"name": "window_mhsa", "window_size": 5},
                                   global_branch={"name": "slots", "num_slots": 16, "slot_init": "param",
                                                  "clustering": {"name": "kmeans", "iters": 2}},
                                   fusion="local_global")
    spec = config.spec()
    assert spec["global_branch"]["clustering"] == {"name": "kmeans", "iters": 2, "seed": 0}
    assert GLMixConfig.from_spec(**spec) == config
    class_path = {"class_path": "glnet_lightning.models.strategies.DWConvLocal", "init_args": {"kernel_size": 7}}
    assert resolve_strategy("local", class_path).kernel_size == 7


def test_per_stage_settings():
    model = GLNet(**{**TINY, "num_slots": [16, 9, 4, 1], "kernel_size": [7, 5, 3, 3]})
    inits = [s.blocks[0].mixer.global_branch.slot_init.side for s in model.stages]
    kernels = [s.blocks[0].mixer.local_branch.dwconv.kernel_size[0] for s in model.stages]
    assert inits == [4, 3, 2, 1] and kernels == [7, 5, 3, 3]


def test_shortcuts_of_an_absent_branch_are_checked_then_ignored_with_one_log_line(caplog):
    with caplog.at_level("INFO", logger="glnet_lightning.models.glnet"):  # stage 3 attention: no branches to name
        model = GLNet(**{**TINY, "stage_mixers": ["glmix", "glmix", "glmix", "mha"], "global_branch": "none",
                         "clustering": "kmeans", "kernel_size": 3})
    assert all(c is None or c.global_branch is None for c in model.mixer_configs)
    assert model.mixer_configs[0].local.kernel_size == 3
    notes = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert notes == ["GLNet: ignoring num_slots, clustering (stages 0, 1, 2): the branch they set up is 'none'"]


def test_shortcuts_of_one_branch_are_applied_together():
    # num_slots=8 alone is not square for the default pooled init; with slot_init='param' it is fine
    model = GLNet(**{**TINY, "num_slots": 8, "slot_init": "param", "clustering": "kmeans"})
    glob = model.mixer_configs[0].global_branch
    assert (glob.num_slots, glob.slot_init.name, glob.clustering.name) == (8, "param", "kmeans")


def test_strategy_fields_hold_strategy_objects_not_names():
    with pytest.raises(TypeError, match=r"SlotAttentionGlobal.clustering must be a ClusteringStrategy.*from_spec"):
        SlotAttentionGlobal(num_slots=16, clustering="kmeans")
    with pytest.raises(TypeError, match=r"GLMixConfig.local must be a LocalStrategy or None"):
        GLMixConfig(local="dwconv")
    glob = SlotAttentionGlobal.from_spec(num_slots=16, clustering={"name": "kmeans", "iters": 2})
    assert glob.clustering == resolve_strategy("clustering", {"name": "kmeans", "iters": 2})


def test_class_path_must_name_a_subclass_of_the_kinds_base():
    with pytest.raises(ValueError, match=r"is not a subclass of LocalStrategy"):
        resolve_strategy("local", {"class_path": "glnet_lightning.models.strategies.SoftClusteringStrategy"})
