"""The chunked CPU-inference path of the conv MLP: same numbers as the whole-map path, and really chunked."""
from __future__ import annotations

import pytest
import torch

from glnet_lightning.models import pixel_chunks
from glnet_lightning.models.blocks import GLMixBlock
from glnet_lightning.models.strategies import GLMixConfig


def make_block(**kwargs) -> GLMixBlock:
    torch.manual_seed(0)
    return GLMixBlock(16, GLMixConfig.from_spec(global_branch={"name": "slots", "num_slots": 4}), head_dim=8,
                      **kwargs).eval()


def hidden_shapes(block: GLMixBlock, x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, list]:
    """Run the block; return its output and the shapes fc1 produced (the hidden tensor)."""
    shapes = []
    handle = block.mlp.fc1.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    try:
        with torch.set_grad_enabled(grad):
            out = block(x)
    finally:
        handle.remove()
    return out, shapes


@pytest.mark.parametrize("layer_scale_init", [None, 0.5])
@pytest.mark.parametrize("channels_last", [True, False])
def test_chunked_inference_matches_the_whole_map(monkeypatch, layer_scale_init, channels_last):
    monkeypatch.setattr(pixel_chunks, "PIXELS_PER_CHUNK", 7)  # 2*5*6 = 60 pixels: 9 chunks, the last ragged
    block = make_block(layer_scale_init=layer_scale_init)
    x = torch.randn(2, 16, 5, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    whole, whole_shapes = hidden_shapes(block, x, grad=True)
    chunked, chunk_shapes = hidden_shapes(block, x, grad=False)
    assert whole_shapes == [(2, 64, 5, 6)]
    assert chunk_shapes == [(1, 64, 1, 7)] * 8 + [(1, 64, 1, 4)]
    assert chunked.shape == whole.shape and chunked.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(chunked, whole.detach(), rtol=1e-5, atol=1e-6)


def test_training_mode_and_hidden_dwconv_use_the_whole_map():
    x = torch.randn(1, 16, 4, 4)
    block = make_block().train()
    assert hidden_shapes(block, x, grad=False)[1] == [(1, 64, 4, 4)]
    block = make_block(mlp_dwconv=True)  # the 3x3 conv on the hidden map needs its neighbours
    assert hidden_shapes(block, x, grad=False)[1] == [(1, 64, 4, 4)]


def test_chunked_inference_follows_bf16_autocast(monkeypatch):
    monkeypatch.setattr(pixel_chunks, "PIXELS_PER_CHUNK", 5)
    block = make_block()
    x = torch.randn(1, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole, _ = hidden_shapes(block, x, grad=True)
        chunked, shapes = hidden_shapes(block, x, grad=False)
    assert len(shapes) == 4
    assert chunked.dtype == whole.dtype
    torch.testing.assert_close(chunked, whole.detach(), rtol=2e-2, atol=2e-2)


def test_empty_batch_passes_through():
    block = make_block()
    with torch.no_grad():
        assert block(torch.randn(0, 16, 4, 4)).shape == (0, 16, 4, 4)


def test_a_map_that_fits_one_chunk_is_not_copied(monkeypatch):
    monkeypatch.setattr(pixel_chunks, "PIXELS_PER_CHUNK", 64)
    block = make_block()
    x = torch.randn(2, 16, 4, 8)  # exactly 64 pixels
    out, shapes = hidden_shapes(block, x, grad=False)
    assert shapes == [(2, 64, 4, 8)]
    torch.testing.assert_close(out, hidden_shapes(block, x, grad=True)[0].detach(), rtol=1e-5, atol=1e-6)
