"""Token-labeling targets and loss reproduce the reference's (fixture made by running its code), mix only
the class term by the MixToken box, and name the setting to change when shapes do not fit."""
from __future__ import annotations

import re

import pytest
import torch

from glnet_lightning.errors import UserError
from glnet_lightning.token_labeling import TokenLabelError, TokenLabelLoss, token_label_targets

TOLERANCE = 1e-5
KINDS = {"plain": False, "gt": True}


@pytest.fixture(scope="module")
def reference(conformance):
    return torch.load(conformance / "token_label_targets.pt", weights_only=False)


def reference_cases(reference) -> list[tuple[str, tuple[int, int, int, int], float]]:
    """(kind, box, loss) of every key like 'plain(0, 1, 1, 2)'."""
    cases = []
    for key, value in reference["losses"].items():
        kind, numbers = re.fullmatch(r"(\w+)\(([\d, ]+)\)", key).groups()
        cases.append((kind, tuple(int(n) for n in numbers.split(",")), value))
    return cases


def outputs(reference, box, requires_grad=False):
    cls = reference["output_cls"].clone().requires_grad_(requires_grad)
    aux = reference["output_aux"].clone().requires_grad_(requires_grad)
    return cls, aux, box


def test_targets_match_the_reference(reference):
    target = token_label_targets(reference["label_maps_topk"], reference["num_classes"], reference["label_size"])
    assert target.shape == reference["target"].shape
    assert (target - reference["target"]).abs().max().item() <= TOLERANCE


def test_every_loss_kind_and_box_matches_the_reference(reference):
    cases = reference_cases(reference)
    assert {kind for kind, _, _ in cases} == set(KINDS)
    assert {box == (0, 0, 0, 0) for _, box, _ in cases} == {True, False}, "an empty and a mixing box"
    target = token_label_targets(reference["label_maps_topk"], reference["num_classes"], reference["label_size"])
    for kind, box, expected in cases:
        loss = TokenLabelLoss(ground_truth=KINDS[kind])(outputs(reference, box), target)
        assert abs(loss.item() - expected) <= TOLERANCE, f"{kind}{box}: {loss.item()} vs {expected}"


@pytest.mark.parametrize("ground_truth", [False, True])
def test_an_empty_box_mixes_nothing(reference, ground_truth):
    loss = TokenLabelLoss(ground_truth=ground_truth)
    target = reference["target"]
    unmixed = loss(outputs(reference, None), target)
    for empty in [(0, 0, 0, 0), (1, 0, 1, 2), (0, 1, 2, 1)]:  # no area: zero height or zero width
        assert torch.equal(loss(outputs(reference, empty), target), unmixed), empty
    assert not torch.allclose(loss(outputs(reference, (0, 1, 1, 2)), target), unmixed)


def test_a_box_mixes_the_class_target_with_the_flipped_batch_by_its_area(reference):
    """Cross entropy is linear in the target, so the mixed class term is lam * own + (1 - lam) * flipped."""
    class_only = TokenLabelLoss(dense_weight=0.0)
    target = reference["target"]
    flipped = target.clone()
    flipped[:, :, 1] = target[:, :, 1].flip(0)
    box = (0, 0, 1, 2)  # 2 of the 4 tokens
    lam = 1 - 2 / 4
    mixed = class_only(outputs(reference, box), target)
    expected = lam * class_only(outputs(reference, None), target) + (1 - lam) * class_only(
        outputs(reference, None), flipped)
    assert abs(mixed.item() - expected.item()) <= TOLERANCE
    tokens_only = TokenLabelLoss(cls_weight=0.0)
    assert torch.equal(tokens_only(outputs(reference, box), target), tokens_only(outputs(reference, None), target))


def test_ground_truth_trusts_the_image_label_more_where_the_label_map_disagrees(reference):
    """gt blends the crop label with the one-hot label: weight 0.5 if their top classes agree, else 0.1."""
    target = reference["target"].clone()
    agreeing = target[0, :, 1].argmax()
    target[0, :, 0] = torch.nn.functional.one_hot(agreeing, target.shape[1])  # sample 0 agrees
    assert (target[1:, :, 0].argmax(1) != target[1:, :, 1].argmax(1)).all(), "the others must disagree"
    gt, plain = TokenLabelLoss(dense_weight=0.0, ground_truth=True), TokenLabelLoss(dense_weight=0.0)
    for i, weight in [(0, 0.5), (1, 0.1), (2, 0.1)]:
        cls, aux, _ = outputs(reference, None)
        sample = (cls[i:i + 1], aux[i:i + 1], None)
        label_only = target[i:i + 1].clone()
        label_only[:, :, 1] = label_only[:, :, 0]
        expected = weight * plain(sample, label_only) + (1 - weight) * plain(sample, target[i:i + 1])
        assert abs(gt(sample, target[i:i + 1]).item() - expected.item()) <= TOLERANCE, i


def test_gradients_reach_both_logits(reference):
    cls, aux, box = outputs(reference, (0, 1, 1, 2), requires_grad=True)
    TokenLabelLoss(dense_weight=0.5)((cls, aux, box), reference["target"]).backward()
    for name, logits in [("cls", cls), ("aux", aux)]:
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, name


def one_line_error(call) -> str:
    with pytest.raises(TokenLabelError) as caught:
        call()
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_aux_tokens_that_are_not_the_label_grid_name_the_label_size_to_set(reference):
    target = token_label_targets(reference["label_maps_topk"], reference["num_classes"], label_size=3)
    message = one_line_error(lambda: TokenLabelLoss()(outputs(reference, None), target))
    assert "4 tokens" in message and "label_size 3" in message and "set label_size to 2" in message


def test_label_maps_of_the_wrong_shape_are_one_line(reference):
    maps = reference["label_maps_topk"]
    assert "(batch, 3, k, S, S)" in one_line_error(lambda: token_label_targets(maps[:, :2], 10, 2))
    assert "(batch, 3, k, S, S)" in one_line_error(lambda: token_label_targets(maps[0], 10, 2))


def test_class_indices_beyond_num_classes_name_the_setting(reference):
    message = one_line_error(lambda: token_label_targets(reference["label_maps_topk"], 5, 2))
    assert "num_classes is 5" in message


def test_logits_for_other_classes_than_the_targets_are_one_line(reference):
    cls, aux, box = outputs(reference, None)
    message = one_line_error(lambda: TokenLabelLoss()((cls[:, :7], aux[:, :, :7], box), reference["target"]))
    assert "num_classes" in message
