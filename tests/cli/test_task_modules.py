"""One LightningCLI for every task: a config whose ``model`` names a ``class_path`` (the segmentation and
detection configs) gets that module, with the checkpoint metric it ranks by; the classification configs,
which name none, keep GLNetModule and their ``--model.backbone`` form."""
from __future__ import annotations

import pytest
import yaml

from glnet_lightning.cli.lightning_cli import _named_model
from glnet_lightning.cli.main import main as glnet
from testkit import CONFIGS


def _printed(capsys, *args: str) -> dict:
    assert glnet(["fit", *args, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config, module, monitor", [
    ("fashion_scenes_seg.yaml", "glnet_lightning.lit.SegmentationModule", "val/mIoU"),
    ("ade20k_glnet_4g_upernet.yaml", "glnet_lightning.lit.SegmentationModule", "val/mIoU"),
    ("fashion_scenes_det.yaml", "glnet_lightning.lit.DetectionModule", "val/bbox_mAP"),
    ("coco_glnet_4g_retinanet_1x.yaml", "glnet_lightning.lit.DetectionModule", "val/bbox_mAP"),
])
def test_a_config_naming_its_module_gets_it_and_its_checkpoint_metric(config, module, monitor, capsys):
    printed = _printed(capsys, "--config", str(CONFIGS / config))
    assert printed["model"]["class_path"] == module
    assert printed["checkpoint"]["monitor"] == monitor and printed["checkpoint"]["mode"] == "max"
    # the module's own options take the short form too
    printed = _printed(capsys, "--config", str(CONFIGS / config), "--model.drop_path_rate", "0.05")
    assert printed["model"]["init_args"]["drop_path_rate"] == 0.05


def test_classification_configs_keep_glnet_module_and_accuracy(capsys):
    printed = _printed(capsys, "--config", str(CONFIGS / "fashion_mnist.yaml"))
    assert "class_path" not in printed["model"] and printed["model"]["backbone"]["class_path"].endswith("glnet_stl")
    assert printed["checkpoint"]["monitor"] == "val/acc1"


def test_the_last_word_on_the_module_wins(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text("model:\n  class_path: glnet_lightning.lit.SegmentationModule\n")
    second = tmp_path / "b.yaml"
    second.write_text("trainer: {max_steps: 1}\n")
    assert _named_model(["fit", "--config", str(first), "--config", str(second)]).endswith("SegmentationModule")
    assert _named_model(["fit", f"--config={first}", "--model", "DetectionModule"]) == "DetectionModule"
    assert _named_model(["fit", "--config", str(second)]) is None


def test_an_unknown_option_of_a_task_module_names_the_closest(capsys):
    code = glnet(["fit", "--config", str(CONFIGS / "fashion_scenes_seg.yaml"), "--model.init_args.warmup_step", "5"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "glnet: error: model.warmup_step: SegmentationModule has no such option; did you mean warmup_steps?"


def test_model_help_of_a_classification_run_says_where_the_options_are(capsys):
    code = glnet(["fit", "--config", str(CONFIGS / "fashion_mnist.yaml"), "--model.help", "SegmentationModule"])
    err = capsys.readouterr().err
    assert code == 2 and "this run's model is GLNetModule" in err and "--model.help CLASS" in err
