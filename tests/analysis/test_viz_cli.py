"""``glnet viz``: PNG figures for a fit checkpoint (with the early-vs-late comparison), clear errors, exit 2."""
from __future__ import annotations

import pytest
from PIL import Image

from glnet_lightning.cli.viz import main
from glnet_lightning.cli.main import main as glnet_main
from testkit import published_state_dict, tiny, tiny_spec


def test_help_lists_the_options(capsys):
    assert glnet_main(["viz", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: glnet viz" in out and "--early" in out and "--blocks" in out


@pytest.mark.parametrize("args, message", [
    (["{ckpt}", "--blocks", "2", "0"], "block numbers are GLMix blocks counted from 1; got [2, 0]"),
    (["{ckpt}", "--blocks", "two"], "invalid int value: 'two'"),
    (["{missing}"], "checkpoint {missing} does not exist"),
    (["{ckpt}", "--images", "{broken}"], "cannot read image {broken}"),
    (["{ckpt}", "--images", "{missing}"], "image {missing} does not exist"),
    (["{ckpt}", "--model", "glnet_stl:num_slots"], "expected KEY=VALUE, got 'num_slots'"),
    (["{ckpt}", "--size", "4"], "--size 4 is too small"),
    (["{ckpt}", "--slots", "0"], "--slots 0: show at least one"),
])
def test_user_errors_exit_2_with_one_clear_line(args, message, tmp_path, capsys):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"")  # never loaded: arguments and images are checked before the checkpoint
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    names = dict(ckpt=ckpt, missing=tmp_path / "missing.ckpt", broken=broken)
    argv = [a.format(**names) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(**names) in err and "Traceback" not in err


@pytest.mark.slow
def test_writes_slot_figures_and_comparison(tiny_runs, tmp_path, capsys):
    Image.new("RGB", (50, 30), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "figures"
    code = main([str(tiny_runs.late), "--early", str(tiny_runs.early), "--images", str(tmp_path / "red.png"),
                 "skimage:chelsea", "--blocks", "1", "4", "--size", "48", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["chelsea_early_vs_late.png", "chelsea_slots.png",
                                                      "red_early_vs_late.png", "red_slots.png"]
    with Image.open(out / "red_slots.png") as figure:
        assert figure.width > 600 and figure.height > 300  # 2 block rows x (input, assignment, 4 slots)
    assert capsys.readouterr().out.split() == [str(p) for p in [out / "red_slots.png", out / "chelsea_slots.png",
                                                                out / "red_early_vs_late.png",
                                                                out / "chelsea_early_vs_late.png"]]


@pytest.mark.slow
def test_published_checkpoint_is_recognised_without_a_model_name(conformance, tmp_path, capsys):
    """A file with the published GLNet-STL keys and shapes (random values) gives figures of blocks 2, 5, 10."""
    import torch

    torch.save({"model": published_state_dict(conformance, "glnet_stl")}, tmp_path / "glnet_stl.pth")
    out = tmp_path / "figures"
    assert main([str(tmp_path / "glnet_stl.pth"), "--images", "skimage:coffee", "--size", "64", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "note:" not in captured.err  # all of 2, 5, 10 exist in GLNet-STL
    assert [p.name for p in out.iterdir()] == ["coffee_slots.png"]


@pytest.mark.parametrize("weights, kind", [("auto", "raw"), ("raw", "raw"), ("ema", "EMA")])
def test_weights_of_a_file_with_model_and_model_ema(tmp_path, caplog, capsys, weights, kind):
    """auto is the raw ``model`` (as the reference evaluates); the tensors are load_model's (tests/analysis/test_loading.py)."""
    import timm
    import torch

    torch.save({key: timm.create_model("glnet_stl", num_classes=3, **tiny()).state_dict()
                for key in ("model", "model_ema")}, tmp_path / "both.pth")
    args = [str(tmp_path / "both.pth"), "--model", tiny_spec(), "--images", "skimage:coffee", "--blocks", "1", "--size", "32",
            "--out", str(tmp_path / "figures"), "--weights", weights]
    with caplog.at_level("INFO"):
        assert main(args) == 0, capsys.readouterr().err
    key = "model_ema" if kind == "EMA" else "model"
    assert f"weights: the {kind} weights ({key}) of both.pth" in caplog.text
    assert (tmp_path / "figures" / "coffee_slots.png").is_file()


def test_ema_of_a_file_without_it_is_one_line(tmp_path, capsys):
    import timm
    import torch

    torch.save(timm.create_model("glnet_stl", num_classes=3, **tiny()).state_dict(), tmp_path / "plain.pth")
    assert main([str(tmp_path / "plain.pth"), "--model", "glnet_stl", "--weights", "ema"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'plain.pth'} has no EMA weights: it has the raw weights (a plain state dict); pass " \
           "--weights raw or --weights auto" in err and err.count("\n") == 1
