"""``glnet bench --head``: a segmentation model or a detector over a (tiny) GLNet, measured in process."""
import json

import pytest

from glnet_lightning.bench.dense import DENSE_HEADS, build_dense_model, parse_size
from glnet_lightning.bench.flops import count_params
from glnet_lightning.bench.spec import parse_model_spec
from testkit import tiny_spec

FAST = ["--warmup", "0", "--repeats", "1"]


@pytest.mark.parametrize("head", list(DENSE_HEADS))
def test_each_head_is_measured_with_its_own_params_and_macs_that_grow_with_the_image(head, run_bench, tmp_path):
    path = tmp_path / "dense.json"
    code, out, err = run_bench([tiny_spec(), "--head", head, "--img-size", "64x96", *FAST, "--json", str(path)])
    assert code == 0, err
    assert f"{head} ({DENSE_HEADS[head].task}) at 64x96" in out and "flags:" in out
    (row,) = json.loads(path.read_text())["rows"]
    assert (row["head"], row["height"], row["width"]) == (head, 64, 96)
    model = build_dense_model(head, parse_model_spec(tiny_spec()))
    assert row["params"] == count_params(model)  # the whole model: backbone, neck and heads
    assert row["images_per_s"] > 0 and row["macs"] > 0
    if DENSE_HEADS[head].task == "detection":  # measured at the size asked for, not resized to 800 px
        assert model.transform.min_size == (800,)
        sized = build_dense_model(head, parse_model_spec(tiny_spec()), size=(64, 96))
        assert (sized.transform.min_size, sized.transform.max_size) == ((64,), 96)
    else:  # a fully convolutional model: twice the pixels, about twice the work
        code, _, err = run_bench([tiny_spec(), "--head", head, "--img-size", "64x192", *FAST, "--json", str(path)])
        assert code == 0, err
        ratio = json.loads(path.read_text())["rows"][0]["macs"] / row["macs"]
        assert 1.8 < ratio < 2.2


def test_the_dense_models_take_the_papers_class_counts():
    spec = parse_model_spec(tiny_spec())
    assert build_dense_model("upernet", spec).num_classes == 150
    assert build_dense_model("maskrcnn", spec).roi_heads.box_predictor.cls_score.out_features == 81
    assert build_dense_model("upernet", spec, num_classes=11).num_classes == 11


@pytest.mark.parametrize("argv, message", [
    (["--head", "upernet", "--mode", "train"], "--head measures fp32 eager inference"),
    (["--head", "upernet", "--img-size", "64x"], "--img-size '64x': give HEIGHTxWIDTH"),
    (["--head", "upernet", "--img-size", "64", "96"], "--head takes one --img-size"),
    (["--img-size", "64x96"], "HEIGHTxWIDTH is for --head models"),
    (["--head", "mask_rcnn"], "invalid choice: 'mask_rcnn'"),
])
def test_bad_dense_arguments_are_one_line(argv, message, run_bench):
    code, out, err = run_bench([tiny_spec(), *argv, *FAST])
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2, err


def test_sizes_read_as_height_by_width():
    assert parse_size("512x2048") == (512, 2048)
    assert parse_size("96") == (96, 96)
