"""Assignments come from the model's own forward pass, are normalised over slots, and blocks map sensibly."""
from __future__ import annotations

import pytest
import timm
import torch

from glnet_lightning.analysis.assignments import (BlockError, representative_slots, select_blocks,
                                                  slot_assignments)
from glnet_lightning.lit.slot_maps import global_branches
from testkit import tiny

TINY = tiny(depths=[1, 1, 2, 1])  # 5 GLMix blocks


def test_existing_blocks_are_kept_and_missing_ones_map_to_lower_middle_upper():
    assert [(c.block, c.note) for c in select_blocks([2, 5, 10], 12)] == [(2, ""), (5, ""), (10, "")]
    mapped = select_blocks([2, 5, 10], 4)
    assert [(c.requested, c.block) for c in mapped] == [(2, 2), (5, 3), (10, 4)]
    assert mapped[2].note == "block 10 -> 4 (upper of the model's 4 GLMix blocks)"
    # 5 is this model's upper block already: shown once, with the note of the block it stands for
    merged = select_blocks([2, 5, 10], 5)
    assert [(c.requested, c.block) for c in merged] == [(2, 2), (5, 5)]
    assert merged[1].note == "block 10 -> 5 (upper of the model's 5 GLMix blocks), shown once"
    assert [c.block for c in select_blocks([7], 3)] == [3]
    assert [c.block for c in select_blocks([2, 5, 10], 1)] == [1]


@pytest.mark.parametrize("blocks, count", [([0, 2], 4), ([-1], 4), ([], 4), ([1.5], 4), ([1], 0)])
def test_bad_blocks_raise(blocks, count):
    with pytest.raises(BlockError):
        select_blocks(blocks, count)


@pytest.mark.parametrize("clustering", ["soft", "kmeans"])
def test_assignments_are_normalised_over_slots_and_leave_the_model_as_it_was(clustering):
    model = timm.create_model("glnet_stl", num_classes=10, clustering=clustering, **TINY).train()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    maps = slot_assignments(model, x, [1, 3, 5])
    assert [m.shape for m in maps] == [(3, 4, 16, 16), (3, 4, 4, 4), (3, 4, 2, 2)]
    for m in maps:
        assert m.dtype == torch.float32 and (m >= 0).all()
        assert torch.allclose(m.sum(1), torch.ones_like(m.sum(1)), atol=1e-5)
    if clustering == "kmeans":
        assert set(maps[0].unique().tolist()) <= {0.0, 1.0}
    assert model.training and all(not b.record_assignment and b.assignment is None for b in global_branches(model))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)  # recording changed nothing


def test_assignment_is_the_softmax_over_slots_of_the_forward_logits():
    """The maps equal softmax_M(tau * cos(init slots, normed pixels)) of block 1, computed by hand."""
    model = timm.create_model("glnet_stl", num_classes=10, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    block = model.glmix_blocks()[0]
    seen = {}
    block.norm1.register_forward_hook(lambda m, i, o: seen.update(h=o, x=i[0]))
    got = slot_assignments(model, x, [1])[0]
    branch = block.mixer.global_branch
    pixels = seen["h"].flatten(2).transpose(1, 2)
    init = torch.nn.functional.adaptive_avg_pool2d(seen["x"], 2).flatten(2).transpose(1, 2)
    logits = branch.clustering.tau * torch.nn.functional.normalize(init, dim=-1) @ \
        torch.nn.functional.normalize(pixels, dim=-1).transpose(1, 2)
    assert torch.allclose(got, logits.softmax(1).unflatten(2, (8, 8)), atol=1e-5)


def test_representative_slots_are_slots_of_the_map():
    assignment = torch.rand(9, 6, 6).softmax(0)
    result = representative_slots(assignment, k=4)
    assert len(result.medoids) == 4 and set(result.medoids) <= set(range(9)) and len(result.labels) == 9
    assert representative_slots(assignment[:3], k=4).medoids == (0, 1, 2)  # fewer slots than k: all of them
