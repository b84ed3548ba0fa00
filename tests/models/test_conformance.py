"""Our GLNet reproduces the reference implementation's stage outputs and logits from the same weights."""
from __future__ import annotations

import pytest
import torch

from glnet_lightning.models import convert_official_state_dict, glnet_from_official_kwargs

FIXTURES = ["stl_tiny", "stl_paramslot_tiny", "g4_tiny", "g16_tiny"]
TOKEN_LABELING_FIXTURES = ["g4_tklb_tiny"]  # the reference's GLNet_tklb: eval and training-mode outputs


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-4 * max(1.0, reference.abs().max().item())


def _load(conformance, name, use_aux_head=False):
    fixture = torch.load(conformance / f"{name}.pt", weights_only=False)
    model = glnet_from_official_kwargs(use_aux_head=use_aux_head, **fixture["official_kwargs"])
    model.load_state_dict(convert_official_state_dict(fixture["state_dict"]), strict=True)
    return fixture, model.eval()


def test_every_fixture_is_covered(conformance):
    assert sorted(p.stem for p in conformance.glob("*_tiny.pt")) == sorted(FIXTURES + TOKEN_LABELING_FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_stage_outputs_and_logits_match_reference(conformance, name):
    fixture, model = _load(conformance, name)
    with torch.no_grad():
        stages = model.forward_intermediates(fixture["input"], intermediates_only=True)
        logits = model(fixture["input"])
    assert len(stages) == len(fixture["stage_outputs"]) == 4
    for i, (ours, ref) in enumerate(zip(stages, fixture["stage_outputs"])):
        assert ours.shape == ref.shape, f"stage {i}"
        assert (ours - ref).abs().max().item() <= _tolerance(ref), f"stage {i} differs"
    assert (logits - fixture["logits"]).abs().max().item() <= _tolerance(fixture["logits"])


def _assert_close(ours, ref, what):
    assert ours.shape == ref.shape, what
    error = (ours - ref).abs().max().item()
    assert error <= _tolerance(ref), f"{what} differs by {error:.3g}"


@pytest.mark.parametrize("name", TOKEN_LABELING_FIXTURES)
@torch.no_grad()
def test_token_labeling_eval_outputs_match_reference(conformance, name):
    fixture, model = _load(conformance, name, use_aux_head=True)
    x = fixture["input"]
    cls_logits, aux_logits, bbox = model.forward_train(x)  # an eval model draws no box
    assert bbox == (0, 0, 0, 0)
    _assert_close(model(x), fixture["eval_logits"], "eval output")
    _assert_close(cls_logits, fixture["eval_cls_logits"], "class logits")
    _assert_close(aux_logits, fixture["eval_aux_logits"], "token logits")


@pytest.mark.parametrize("name", TOKEN_LABELING_FIXTURES)
@torch.no_grad()
def test_token_labeling_training_forward_with_the_fixture_box_matches_reference(conformance, name):
    """BatchNorm on batch statistics, no drop path (the fixture's kwargs have none), the fixture's MixToken box."""
    fixture, model = _load(conformance, name, use_aux_head=True)
    cls_logits, aux_logits, bbox = model.train().forward_train(fixture["input"], bbox=fixture["train_bbox"])
    assert bbox == tuple(fixture["train_bbox"])
    _assert_close(cls_logits, fixture["train_cls_logits"], "training class logits")
    _assert_close(aux_logits, fixture["train_aux_logits"], "training token logits")


def test_token_head_is_converted_by_name(conformance):
    fixture = torch.load(conformance / "g4_tklb_tiny.pt", weights_only=False)
    ours = convert_official_state_dict(fixture["state_dict"])
    assert torch.equal(ours["aux_head.weight"], fixture["state_dict"]["tklb_aux_head.weight"])
    assert torch.equal(ours["aux_head.bias"], fixture["state_dict"]["tklb_aux_head.bias"])
    assert not any(k.startswith("tklb_") for k in ours)


@pytest.mark.parametrize("name", ["stl_tiny", "g16_tiny"])
def test_channels_last_input_gives_same_logits(conformance, name):
    fixture, model = _load(conformance, name)
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        logits = model(fixture["input"].contiguous(memory_format=torch.channels_last))
    assert (logits - fixture["logits"]).abs().max().item() <= _tolerance(fixture["logits"])


@pytest.mark.parametrize("name", FIXTURES)
def test_bf16_autocast_keeps_fp32_top1(conformance, name):
    fixture, model = _load(conformance, name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(fixture["input"])
    assert torch.equal(logits.float().argmax(-1), fixture["logits"].argmax(-1))


def test_converted_names_and_shapes_match_reference_values(conformance):
    """Spot-check that conversion moves each tensor to the right place, not just a same-shaped one."""
    fixture = torch.load(conformance / "g16_tiny.pt", weights_only=False)
    ref = fixture["state_dict"]
    ours = convert_official_state_dict(ref)
    assert torch.equal(ours["stages.0.blocks.0.mixer.global_branch.clustering.tau"], ref["stages.0.blocks.0.slot_scale"])
    assert torch.equal(ours["stages.0.blocks.0.mixer.local_branch.dwconv.weight"], ref["stages.0.blocks.0.feature_conv.1.weight"])
    assert torch.equal(ours["stem.3.weight"], ref["downsample_layers.0.4.weight"])
    assert ours["stages.2.blocks.1.ls1.gamma"].shape == (96,)
    assert torch.equal(ours["stages.0.blocks.0.ls2.gamma"], ref["stages.0.blocks.0.ls2.gamma"].flatten())


def test_unknown_reference_key_is_named(conformance):
    fixture = torch.load(conformance / "stl_tiny.pt", weights_only=False)
    sd = dict(fixture["state_dict"], **{"stages.0.blocks.0.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="mystery"):
        convert_official_state_dict(sd)


def test_unknown_reference_kwarg_is_named():
    with pytest.raises(ValueError, match="fancy_option"):
        glnet_from_official_kwargs(depth=[1, 1, 1, 1], fancy_option=True)
