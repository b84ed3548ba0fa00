"""Model-spec parsing and the scaling slope: pure functions, no timing."""
import math

import pytest

from glnet_lightning.bench.errors import BenchError
from glnet_lightning.bench.runner import log_log_slope
from glnet_lightning.bench.spec import parse_model_spec


def test_plain_name_has_no_kwargs():
    spec = parse_model_spec("resnet18")
    assert (spec.name, spec.kwargs) == ("resnet18", {})


def test_kwargs_are_typed():
    spec = parse_model_spec("glnet_stl:num_slots=9,drop_path_rate=0.1,slot_init=param,flag=true")
    assert spec.name == "glnet_stl"
    assert spec.kwargs == {"num_slots": 9, "drop_path_rate": 0.1, "slot_init": "param", "flag": True}
    assert isinstance(spec.kwargs["num_slots"], int)


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
