"""AdamW groups: no weight decay on norms, biases, clustering temperatures and learned slots."""
from __future__ import annotations

import timm

import glnet_lightning  # noqa: F401
from glnet_lightning.lit import build_param_groups
from testkit import tiny


def test_no_decay_for_norm_bias_tau_slots():
    tiny_kwargs = tiny()
    model = timm.create_model("glnet_stl", num_classes=10, slot_init="param", **tiny_kwargs)
    groups = {g["name"]: g for g in build_param_groups(model, 0.05)}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    name_of = {id(p): n for n, p in model.named_parameters()}
    no_decay = {name_of[id(p)] for p in groups["no_decay"]["params"]}
    decay = {name_of[id(p)] for p in groups["decay"]["params"]}
    assert no_decay.isdisjoint(decay) and no_decay | decay == set(name_of.values())

    taus = {n for n in name_of.values() if n.endswith(".tau")}
    slots = {n for n in name_of.values() if n.endswith(".slots")}
    biases = {n for n in name_of.values() if n.endswith(".bias")}
    norms = {n for n, p in model.named_parameters() if "norm" in n}
    assert taus and slots and biases and norms
    assert taus | slots | biases | norms <= no_decay
    assert any(p.ndim == 3 for n, p in model.named_parameters() if n in slots)  # not caught by ndim <= 1
    assert all(p.ndim >= 2 for n, p in model.named_parameters() if n in decay)
    assert "head.weight" in decay and "stem.0.weight" in decay
