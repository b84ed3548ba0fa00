"""torch.export (.pt2) and ONNX exports of every named model (issue 16), and the ``glnet export`` command.

Exported graphs must take any batch and any height / width >= MIN_SIDE (odd ones too), give eager's
logits within 1e-4 and, through forward_intermediates, the stage shapes forward_features gives."""
from __future__ import annotations

import pytest
import sympy
import timm
import torch
from torch.utils._sympy.numbers import int_oo

import glnet_lightning  # noqa: F401  (registers the models)
from glnet_lightning.cli.export import main
from glnet_lightning.export import (MIN_SIDE, StageOutputs, dynamic_shapes, export_model, load_exported,
                                    verify_export, within_tolerance)
from glnet_lightning.models.glnet import glnet_stl
from testkit import tiny, tiny_named, tiny_named_models, tiny_spec

# traced at 2 x 96 x 128; checked at sizes the trace never saw: batch 1 and 3, odd sides, 513 x 769
SHAPES = [(1, 3, MIN_SIDE, MIN_SIDE), (3, 3, 161, 97), (1, 3, 513, 769)]
# The named models that differ at the tiny sizes (glnet_9g is glnet_4g there).
NAMED = tiny_named_models()


def tiny_model(name: str, **edits):
    """A named model at the tiny sizes, with its own block types, in eval mode."""
    return timm.create_model(name, **tiny_named(**edits)).eval()


def stage_shapes(model, x) -> list[torch.Size]:
    """forward_features' stage output shapes (hooks), then its final shape."""
    shapes = []
    handles = [s.register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for s in model.stages]
    try:
        with torch.no_grad():
            final = model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return [final.shape, *shapes]


def check_matches_eager(model, exported, shapes=SHAPES):
    """Within 1e-4 of eager, relative to the outputs: randomly initialised models give logits of ~0.05, so
    the command's bound (1e-4 x max(1, |eager|)) would let a wrong graph pass here."""
    for shape in shapes:
        diff, scale = verify_export(model, exported, torch.randn(shape))
        assert within_tolerance(diff, scale) and diff <= 1e-4 * scale, \
            f"{shape}: max |exported - eager| = {diff:.3g} (outputs up to {scale:.3g})"


def in_memory(program):
    module = program.module()
    return lambda x: [module(x)]


# ------------------------------------------------------------------------------------------- torch.export
# Every export takes seconds (torch.export traces and solves the shapes): all of them are slow tests.
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMED)
@torch.no_grad()
def test_torch_export_takes_any_batch_and_size(name):
    model = tiny_model(name)
    program = torch.export.export(model, (torch.randn(2, 3, 96, 128),), dynamic_shapes=dynamic_shapes(96, 128))
    assert input_ranges(program) == [(1, None), 3, (MIN_SIDE, None), (MIN_SIDE, None)]
    check_matches_eager(model, in_memory(program))


def input_ranges(program) -> list:
    """Per dim of the image input: its size if static, else (min, max) with None for unbounded."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    out = []
    for size in node.meta["val"].shape:
        if isinstance(size, int):
            out.append(size)
            continue
        bounds = program.range_constraints[size.node.expr]
        out.append((int(bounds.lower), None if bounds.upper in (int_oo, sympy.oo) else int(bounds.upper)))
    return out


@pytest.mark.slow
def test_pt2_file_gives_forward_features_stage_shapes_at_odd_sizes(tmp_path):
    model = tiny_model("glnet_stl")
    path = export_model(StageOutputs(model), "pt2", tmp_path / "stages.pt2", 96, 128, batch=2)
    exported = load_exported(path, "pt2")
    for shape in [(1, 3, 513, 769), (2, 3, 65, 99)]:
        x = torch.randn(shape)
        assert [o.shape for o in exported(x)] == stage_shapes(model, x)
    check_matches_eager(StageOutputs(model), exported, [(2, 3, 65, 99)])


@pytest.mark.slow
def test_small_inputs_export_at_their_size_with_a_dynamic_batch(tmp_path):
    model = tiny_model("glnet_4g")
    path = export_model(model, "pt2", tmp_path / "small.pt2", 32, 32)  # 1 x 1 maps in stage 4
    assert input_ranges(torch.export.load(str(path))) == [(1, None), 3, 32, 32]
    exported = load_exported(path, "pt2")
    check_matches_eager(model, exported, [(1, 3, 32, 32), (5, 3, 32, 32)])
    with pytest.raises(Exception):
        exported(torch.randn(1, 3, 64, 64))


@pytest.mark.slow
def test_window_attention_ablation_exports_for_a_fixed_size(tmp_path):
    """Its pad-to-windows reshapes are beyond torch.export's shape solver for a dynamic size; the batch stays dynamic."""
    model = tiny_model("glnet_stl", local="window_mhsa", window_size=4)
    with pytest.raises(Exception):
        export_model(model, "pt2", tmp_path / "dynamic.pt2", 88, 72)
    path = export_model(model, "pt2", tmp_path / "window.pt2", 88, 72, fixed_size=True)
    check_matches_eager(model, load_exported(path, "pt2"), [(1, 3, 88, 72), (3, 3, 88, 72)])


@pytest.mark.slow
def test_pt2_of_a_full_width_named_model(tmp_path):
    model = timm.create_model("glnet_stl").eval()
    path = export_model(model, "pt2", tmp_path / "glnet_stl.pt2", 96, 96, batch=2)
    check_matches_eager(model, load_exported(path, "pt2"), [(1, 3, 64, 64), (2, 3, 97, 129)])


# ------------------------------------------------------------------------------------------------- ONNX
# glnet_4g's graph is exported below (its stage maps) and by the CLI test (its logits, reference weights);
# glnet_16g is the same graph plus layer scale. glnet_4g_tklb is glnet_4g's plus the token head: ONNX
# converts the torch.export program, checked for it above (20 s saved).
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMED if n not in ("glnet_4g", "glnet_4g_tklb")])
def test_onnx_matches_eager_in_onnxruntime(name, tmp_path):
    model = tiny_model(name)
    path = export_model(model, "onnx", tmp_path / f"{name}.onnx", 96, 128, batch=2)
    check_matches_eager(model, load_exported(path, "onnx"))


@pytest.mark.slow
def test_onnx_stage_shapes_match_forward_features_at_odd_sizes(tmp_path):
    model = tiny_model("glnet_4g")
    path = export_model(StageOutputs(model), "onnx", tmp_path / "stages.onnx", 96, 128, batch=2)
    exported = load_exported(path, "onnx")
    x = torch.randn(1, 3, 513, 769)
    assert [o.shape for o in exported(x)] == stage_shapes(model, x)
    check_matches_eager(StageOutputs(model), exported, [(1, 3, 513, 769)])


# ------------------------------------------------------------------------------------------ glnet export
@pytest.mark.slow
def test_cli_exports_a_published_checkpoint_to_onnx(conformance, tmp_path, capsys):
    """Real (reference-layout) weights: the logits are O(10), so 1e-4 is a real bound."""
    fixture = torch.load(conformance / "g4_tiny.pt", weights_only=False)
    torch.save(fixture["state_dict"], tmp_path / "g4.pth")
    out = tmp_path / "g4.onnx"
    code = main([str(tmp_path / "g4.pth"), "--model", "glnet_4g:depths=[1,1,2,2],dims=[32,64,96,128],num_slots=16",
                 "--format", "onnx", "--out", str(out), "--img-size", "64", "96", "--batch", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0] == f"exported g4.pth (glnet_4g) to {out} (onnx)"
    assert lines[1].startswith("max abs difference to eager at 2x3x64x96: ")
    assert lines[2].startswith("max abs difference to eager at 3x3x96x128: ")  # the dynamic batch and size
    assert all(float(line.split(": ")[1].split()[0]) <= 1e-4 for line in lines[1:])
    logits = load_exported(out, "onnx")(fixture["input"])[0]
    assert (logits - fixture["logits"]).abs().max() <= 1e-4 * fixture["logits"].abs().max()


@pytest.mark.slow
def test_cli_exports_the_ema_or_raw_weights_of_a_fit_checkpoint(fit_checkpoint, tmp_path, capsys):
    """auto is the EMA of a fit checkpoint (its network recorded in it); raw the trained model."""
    x = torch.randn(1, 3, 32, 32)
    outputs = {}
    for kind, state in [("ema", fit_checkpoint.ema), ("raw", fit_checkpoint.raw)]:
        model = glnet_stl(**tiny()).build(4)
        model.load_state_dict(state)
        with torch.no_grad():
            outputs[kind] = model.eval()(x)
    assert not torch.allclose(outputs["raw"], outputs["ema"], atol=1e-6)
    for weights, expected in [("auto", outputs["ema"]), ("raw", outputs["raw"])]:
        out = tmp_path / f"{weights}.pt2"
        assert main([str(fit_checkpoint.path), "--out", str(out), "--img-size", "32", "--weights", weights]) == 0
        assert ("EMA" in capsys.readouterr().out.splitlines()[0]) == (weights == "auto")
        torch.testing.assert_close(load_exported(out, "pt2")(x)[0], expected, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("weights, kind", [("auto", "model"), ("ema", "model_ema")])
def test_cli_exports_the_raw_model_or_the_ema_of_a_reference_layout_file(tmp_path, capsys, weights, kind):
    """A file holding both ``model`` and ``model_ema`` (different values): auto is the raw model, as the
    reference evaluates its published checkpoints. (``--weights raw``: the fit checkpoint's test above shows
    the command passes it on; tests/models/test_weights.py that raw reads ``model`` of such a file.)"""
    saved = {key: timm.create_model("glnet_stl", **tiny()).state_dict() for key in ("model", "model_ema")}
    assert not torch.equal(saved["model"]["head.weight"], saved["model_ema"]["head.weight"])
    torch.save(saved, tmp_path / "both.pth")
    out = tmp_path / f"{weights}.pt2"
    assert main([str(tmp_path / "both.pth"), "--model", tiny_spec(), "--out", str(out), "--img-size", "32",
                 "--weights", weights]) == 0, capsys.readouterr().err
    exported = torch.export.load(str(out)).state_dict
    assert all(torch.equal(exported[k], saved[kind][k]) for k in ("head.weight", "stem.0.weight"))


def test_cli_refuses_ema_of_a_file_without_it(tmp_path, capsys):
    torch.save(tiny_model("glnet_stl").state_dict(), tmp_path / "plain.pth")
    assert main([str(tmp_path / "plain.pth"), "--model", "glnet_stl", "--format", "pt2", "--weights", "ema"]) == 2
    err = capsys.readouterr().err
    assert err == (f"glnet export: error: {tmp_path / 'plain.pth'} has no EMA weights: it has the raw weights (a plain "
                   "state dict); pass --weights raw or --weights auto\n")


@pytest.mark.parametrize("args, message", [
    (["{missing}", "--format", "onnx"], "checkpoint {missing} does not exist"),
    (["{ckpt}", "--format", "tflite"], "unknown format 'tflite'; choose one of onnx, pt2"),
    (["{ckpt}", "--out", "model.bin"], "give --format (onnx or pt2) or an --out file ending in .onnx or .pt2"),
    (["{ckpt}", "--format", "pt2", "--img-size", "224", "224", "3"], "--img-size takes a height and optionally a width"),
    (["{ckpt}", "--format", "pt2", "--batch", "0"], "--batch 0: the batch needs at least one image"),
    (["{ckpt}", "--format", "pt2", "--weights", "best"], "--weights 'best': choose auto, raw or ema"),
    (["{ckpt}", "--format", "pt2"], "cannot read checkpoint {ckpt}"),
])
def test_user_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"not a checkpoint")
    names = dict(ckpt=ckpt, missing=tmp_path / "missing.ckpt")
    assert main([a.format(**names) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glnet export: error: ") and message.format(**names) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("*.pt2")) and not list(tmp_path.glob("*.onnx"))


def test_glnet_lists_the_export_command(capsys):
    from glnet_lightning.cli.main import main as glnet_main

    assert glnet_main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: glnet export" in out and "--img-size" in out and "--weights" in out
