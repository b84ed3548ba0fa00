"""The blocks: timm's layers where they compute the same, norm/act layers chosen by name, layer scale on every
block type, and no argument a block would silently drop."""
from __future__ import annotations

import pytest
import torch
from timm.layers import GELU, LayerNorm, LayerNorm2d, LayerScale, LayerScale2d, RmsNorm, RmsNorm2d
from torch import nn

from glnet_lightning.models import GLNet, resolve_backbone
from glnet_lightning.models.blocks import GLMixBlock, MHSANCHWBlock, TransformerBlock
from glnet_lightning.models.strategies import GLMixConfig
from testkit import tiny

# the tiny model with every block type: GLMix, alternating GLMix / mha_nchw, full-attention 'mha'
ALL_KINDS = tiny(depths=[1, 1, 2, 1], stage_mixers=["glmix", "mha_nchw", "glmix.mha_nchw", "mha"], num_classes=5)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [b for stage in model.stages for b in stage.blocks]


def _norms(model: nn.Module) -> list[tuple[str, type, type]]:
    return [(type(b).__name__, type(b.norm1), type(b.norm2)) for b in _blocks(model)]


def test_layer_scale_scales_both_residual_branches_of_an_mha_block():
    torch.manual_seed(0)
    block = TransformerBlock(32, head_dim=16, layer_scale_init=1e-4).eval()
    assert isinstance(block.ls1, LayerScale) and isinstance(block.ls2, LayerScale)
    assert torch.all(block.ls1.gamma == 1e-4) and block.ls1.gamma.shape == (32,)
    x = torch.randn(2, 32, 3, 5)
    with torch.no_grad():
        block.ls1.gamma.zero_()
        block.ls2.gamma.zero_()
        assert torch.equal(block(x), x)  # both branches scaled away
        plain = TransformerBlock(32, head_dim=16).eval()
        plain.load_state_dict({k: v for k, v in block.state_dict().items() if ".gamma" not in k})
        block.ls1.gamma.fill_(1.0)
        block.ls2.gamma.fill_(1.0)
        torch.testing.assert_close(block(x), plain(x))


def test_layer_scale_reaches_every_block_type_of_the_model():
    model = GLNet(**ALL_KINDS, layer_scale=1e-3)
    blocks = _blocks(model)
    assert [type(b).__name__ for b in blocks] == ["GLMixBlock", "MHSANCHWBlock", "GLMixBlock", "MHSANCHWBlock",
                                                  "TransformerBlock"]
    for block in blocks:
        for ls in (block.ls1, block.ls2):
            assert isinstance(ls, (LayerScale, LayerScale2d)) and torch.all(ls.gamma == 1e-3)
    assert all(isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity) for b in _blocks(GLNet(**ALL_KINDS)))


@pytest.mark.parametrize("block, kwargs", [
    (TransformerBlock, dict(cpe_kernel=3)),
    (TransformerBlock, dict(mlp_dwconv=True)),
    (MHSANCHWBlock, dict(mixer=GLMixConfig())),
    (GLMixBlock, dict(mixer=GLMixConfig(), layer_scale=1e-4)),
])
def test_an_argument_a_block_does_not_take_is_a_type_error_naming_it(block, kwargs):
    (name,) = [k for k in kwargs if k != "mixer"] or ["mixer"]
    with pytest.raises(TypeError, match=name):
        block(32, head_dim=16, **kwargs)


def test_cpe_and_hidden_dwconv_in_an_mha_stage_are_ignored_with_a_log_line(caplog):
    with caplog.at_level("INFO", logger="glnet_lightning.models.glnet"):
        model = GLNet(**ALL_KINDS, cpe_kernel=3, mlp_dwconv=True)
    notes = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert notes == ["GLNet: ignoring cpe_kernel, mlp_dwconv (stage 3): 'mha' blocks have no CPE and no hidden dwconv"]
    assert model.stages[2].blocks[1].cpe is not None and model.stages[2].blocks[1].mlp.dwconv is not None


def _expected_norms(on_maps: type, on_tokens: type) -> list[tuple[str, type, type]]:
    """GLMix blocks norm maps twice, mha_nchw blocks tokens then maps, 'mha' blocks tokens twice."""
    glmix, mha_nchw, mha = ("GLMixBlock", on_maps, on_maps), ("MHSANCHWBlock", on_tokens, on_maps), \
        ("TransformerBlock", on_tokens, on_tokens)
    return [glmix, mha_nchw, glmix, mha_nchw, mha]


def test_default_layers_are_timms_with_eps_1e_6():
    model = GLNet(**ALL_KINDS)
    assert _norms(model) == _expected_norms(LayerNorm2d, LayerNorm)
    assert {b.norm1.eps for b in _blocks(model)} == {b.norm2.eps for b in _blocks(model)} == {1e-6}
    assert all(type(b.mlp.act) is GELU for b in _blocks(model))


def test_norm_and_act_layers_by_name_through_the_description():
    model = resolve_backbone("glnet_4g", **{k: v for k, v in ALL_KINDS.items() if k != "num_classes"},
                             norm_layer="rmsnorm2d", norm_layer_cl="rmsnorm", act_layer="relu").build(5)
    assert _norms(model) == _expected_norms(RmsNorm2d, RmsNorm)
    assert {b.norm1.eps for b in _blocks(model)} == {1e-6}
    assert all(type(b.mlp.act) is nn.ReLU for b in _blocks(model))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("setting, message", [
    (dict(norm_layer="layernorm3d"), "norm_layer='layernorm3d' is not a norm layer"),
    (dict(norm_layer_cl=""), "norm_layer_cl='' is not a norm layer"),
    (dict(act_layer="swoosh"), "act_layer='swoosh' is not an activation"),
])
def test_an_unknown_layer_name_is_refused_where_it_is_given(setting, message):
    with pytest.raises(ValueError, match=message):
        resolve_backbone("glnet_stl", **setting)
    with pytest.raises(ValueError, match=message):
        GLNet(**ALL_KINDS, **setting)


@torch.no_grad()
def test_a_norm_that_sees_the_whole_map_keeps_the_whole_map_mlp_path():
    """Pixel chunks (CPU inference) are only for per-pixel norms: a GroupNorm must give the training-path result."""
    model = GLNet(**ALL_KINDS, norm_layer="groupnorm1").eval()
    block = model.stages[1].blocks[0]  # an mha_nchw block: CPE, attention, then the conv MLP half
    for module in block.modules():  # weights that make the MLP half count
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.5)
    x = torch.randn(2, 32, 24, 24)  # 1152 pixels: more than one chunk
    chunkable = block(x)
    with torch.enable_grad():  # autograd on: never chunked
        whole = block(x).detach()
    torch.testing.assert_close(chunkable, whole)
    assert not block.mlp_per_pixel and GLNet(**ALL_KINDS).stages[1].blocks[0].mlp_per_pixel
