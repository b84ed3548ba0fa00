"""Model-spec parsing and the scaling slope: pure functions, no timing."""
import math

import pytest

from glnet_lightning.bench.errors import BenchError
from glnet_lightning.bench.runner import log_log_slope
from glnet_lightning.bench.spec import parse_model_spec
from testkit import tiny, tiny_spec


def test_plain_name_has_no_kwargs():
    spec = parse_model_spec("resnet18")
    assert (spec.name, spec.kwargs) == ("resnet18", {})


def test_kwargs_are_typed():
    spec = parse_model_spec("glnet_stl:num_slots=9,drop_path_rate=0.1,slot_init=param,flag=true")
    assert spec.name == "glnet_stl"
    assert spec.kwargs == {"num_slots": 9, "drop_path_rate": 0.1, "slot_init": "param", "flag": True}
    assert isinstance(spec.kwargs["num_slots"], int)


def test_a_comma_inside_brackets_belongs_to_its_value_and_the_spec_builds_that_network():
    from glnet_lightning.bench.spec import build_model

    text = tiny_spec(depths=[1, 1, 2, 1], num_slots=16)  # glnet_stl:depths=[1,1,2,1],dims=[16,32,48,64],...
    spec = parse_model_spec(text + ",local={name: dwconv}")
    assert spec.kwargs == {**tiny(depths=[1, 1, 2, 1], num_slots=16), "local": {"name": "dwconv"}}
    model = build_model(parse_model_spec(text), 64, 10)
    assert [len(s.blocks) for s in model.stages] == [1, 1, 2, 1] and model.head.out_features == 10
    assert model.stages[0].blocks[0].mixer.global_branch.slot_init.side == 4  # 16 slots: a 4x4 pooled grid


@pytest.mark.parametrize("text", [":a=1", "resnet18:oops", "resnet18:=3"])
def test_bad_specs_raise(text):
    with pytest.raises(BenchError):
        parse_model_spec(text)


def test_slope_of_a_power_law_is_its_exponent():
    xs = [32 ** 2, 64 ** 2, 128 ** 2]
    assert math.isclose(log_log_slope(xs, [3 * x ** 1.5 for x in xs]), 1.5)


def test_slope_is_undefined_for_one_point_or_nonpositive_values():
    assert log_log_slope([1024], [2.0]) is None
    assert log_log_slope([1024, 4096], [0.0, 1.0]) is None
