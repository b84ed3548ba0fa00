"""The network's description as data: typed in LightningCLI, recorded whole, rebuilt exactly."""
from __future__ import annotations

import pytest
import torch
import yaml

from glnet_lightning.cli.main import main
from glnet_lightning.lit import GLNetModule
from glnet_lightning.models import backbone as backbone_module
from glnet_lightning.models import glnet as glnet_module
from glnet_lightning.models.backbone import TimmModel, resolve_backbone
from glnet_lightning.models.glnet import NAMED_MODELS, GLNetArgs, glnet_4g, glnet_stl
from glnet_lightning.models.strategies import KMeansClusteringStrategy
from testkit import CONFIGS, tiny

TINY = tiny()


def _printed_config(capsys, *args: str) -> dict:
    assert main(["fit", *args, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_prints_the_whole_description(config, capsys):
    model = _printed_config(capsys, "--config", str(CONFIGS / config))["model"]
    # a task module named by class_path (segmentation, detection) holds the backbone among its init_args
    printed = model["init_args"]["backbone"] if "class_path" in model else model["backbone"]
    description = resolve_backbone(printed)
    assert set(printed["init_args"]) == {f for f in GLNetArgs.__dataclass_fields__}
    written = yaml.safe_load((CONFIGS / config).read_text())["model"]
    written = written.get("init_args", written)["backbone"]
    if isinstance(written, str):  # a named model, one word in the config: all of its published values
        name = written
        assert printed["class_path"] == f"glnet_lightning.models.glnet.{name}"
        assert description == resolve_backbone(name)
    if config == "imagenet_glnet_stl.yaml":
        assert printed["init_args"]["num_slots"] == 64 and printed["init_args"]["kernel_size"] == 5
        assert printed["init_args"]["clustering"] == "soft" and printed["init_args"]["depths"] == [2, 2, 6, 2]


def test_help_lists_every_setting_with_type_and_default(capsys):
    assert main(["fit", "--model.backbone.help", "glnet_4g"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--model.backbone.num_slots" in text and "(type: Union[int, List[int]], default: 64)" in text
    assert "--model.backbone.depths" in text and "default: [4, 4, 18, 4]" in text
    assert "depthwise kernel of the dwconv local branch" in text


@pytest.mark.parametrize("override, message", [
    ("--model.backbone.num_slotz=9", "model.backbone.num_slotz: glnet_stl has no such setting; did you mean num_slots?"),
    ("--model.backbone.num_slots=many", "model.backbone.num_slots: Expected a <class 'int'>"),
    ("--model.backbone.stem=fancy", "model.backbone.stem: Expected a typing.Literal['patch', 'overlap']"),
    ("--model.backbone=glnet_stll", "unknown model 'glnet_stll'; did you mean glnet_stl?"),
])
def test_a_wrong_type_or_unknown_key_is_a_parser_error_naming_the_key(override, message, capsys):
    assert main(["fit", "--config", str(CONFIGS / "fashion_mnist.yaml"), override]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_a_strategy_mapping_may_not_contradict_the_descriptions_own_setting():
    with pytest.raises(ValueError, match="local sets kernel_size=7 but kernel_size is 5: set kernel_size itself"):
        glnet_stl(local={"name": "dwconv", "kernel_size": 7})
    assert glnet_stl(local={"name": "dwconv", "kernel_size": 7}, kernel_size=7).local == "dwconv"


def test_settings_of_a_strategy_not_chosen_are_unused():
    window = glnet_stl(**TINY, local="window_mhsa", window_size=2).build(10)  # kernel_size 5 is not for it
    assert window.mixer_configs[0].local.window_size == 2
    local_only = glnet_stl(**TINY, global_branch="none").build(10)
    assert all(c.global_branch is None for c in local_only.mixer_configs)


def test_a_checkpoint_rebuilds_its_network_when_the_code_defaults_change(tmp_path, monkeypatch):
    module = GLNetModule(glnet_stl(**TINY, clustering="kmeans"), num_classes=10, ema_decay=None)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.0"}, path)
    recorded = module.hparams["backbone"]["init_args"]
    assert recorded["clustering"] == {"name": "kmeans", "iters": 4, "seed": 0}  # spelled out, not just "kmeans"
    # change the code's defaults: the named model's slot count and the k-means iterations
    changed = glnet_module._named_description("glnet_stl", {**NAMED_MODELS["glnet_stl"], "num_slots": 16, "kernel_size": 3})
    monkeypatch.setattr(glnet_module, "glnet_stl", changed)  # by class path
    monkeypatch.setitem(backbone_module._NAMED, "glnet_stl", changed)  # by name
    monkeypatch.setattr(KMeansClusteringStrategy.__init__, "__defaults__", (1, 0))
    fresh = resolve_backbone("glnet_stl", clustering="kmeans")
    assert (fresh.num_slots, fresh.kernel_size, fresh.clustering["iters"]) == (16, 3, 1)  # the change is real
    loaded = GLNetModule.load_from_checkpoint(path)
    assert loaded.backbone.num_slots == 4 and loaded.backbone.kernel_size == 5
    assert loaded.model.mixer_configs[0].global_branch.clustering.iters == 4
    own, back = module.model.state_dict(), loaded.model.state_dict()
    assert own.keys() == back.keys() and all(torch.equal(own[k], back[k]) for k in own)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(module.model.eval()(x), loaded.model.eval()(x))


def test_named_models_are_one_table_shared_by_timm_and_the_descriptions():
    import timm

    for name, settings in NAMED_MODELS.items():  # each description is GLNetArgs with its table row
        row = {k: v for k, v in settings.items() if k != "__doc__"}
        assert resolve_backbone(name).settings() == GLNetArgs(**row).settings() != GLNetArgs().settings() or not row
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        a = timm.create_model("glnet_4g", num_classes=7, num_slots=16)
        b = glnet_4g(num_slots=16).build(7)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


@pytest.mark.parametrize("spec, edits, expected", [
    ("glnet_stl", {"num_slots": 49}, glnet_stl(num_slots=49)),
    ({"class_path": "glnet_stl", "init_args": {"kernel_size": 7}}, {}, glnet_stl(kernel_size=7)),
    (glnet_stl().describe(), {}, glnet_stl()),
    ("resnet10t", {"in_chans": 1}, TimmModel("resnet10t", {"in_chans": 1})),
])
def test_every_form_resolves_to_the_same_description(spec, edits, expected):
    assert resolve_backbone(spec, **edits) == expected


@pytest.mark.parametrize("spec, edits, message", [
    ("glnet_nope", {}, "unknown model 'glnet_nope'"),
    ("glnet_stl", {"num_slotz": 1}, r"glnet_stl has no setting\(s\) \['num_slotz'\]"),
    ("glnet_stl", {"num_classes": 3}, "model.num_classes"),
    ({"class_path": "glnet_stl", "init": {}}, {}, "unknown key"),
])
def test_bad_descriptions_say_what_to_fix(spec, edits, message):
    with pytest.raises(ValueError, match=message):
        resolve_backbone(spec, **edits)
