"""The assembled GLNet: every ablation row trains, gradients reach every parameter, compile works."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import glnet_lightning  # noqa: F401
from glnet_lightning.models import GLNet
from glnet_lightning.sweeps import load_sweep
from testkit import tiny, tiny_named, tiny_named_models

# The tiny model with two blocks in stage 3 and an attention stage 4 (GLNet-STL's block types): 5 blocks, 4 GLMix.
TINY_STL = tiny(depths=[1, 1, 2, 1], stage_mixers=["glmix", "glmix", "glmix", "mha"], num_classes=7)
# The paper's ablation table as the shipped sweep file lists it (tests/sweeps/test_ablation.py checks each row's
# params and GMACs against the paper at full size).
ABLATION_VARIANTS = load_sweep(Path(__file__).resolve().parents[2] / "sweeps" / "ablation_stl.yaml").variants


@pytest.mark.parametrize("variant", ABLATION_VARIANTS, ids=lambda v: v.name)
def test_every_ablation_row_trains_at_small_size(variant):
    """Each row's overrides on the tiny model (its slot count too: pooled init pools up as well as down)."""
    sizes = {f"model.backbone.{k}": v for k, v in TINY_STL.items() if k != "num_classes"}
    model = variant.build_model(num_classes=7, extra={**sizes, "model.drop_path_rate": 0.0}).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    # kmeans assignments are discrete: its clustering has no parameters, everything else still learns
    stale = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert stale == []


def test_drop_path_grows_linearly_to_the_rate():
    model = GLNet(**TINY_STL, drop_path_rate=0.3)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 5).tolist())


def test_layer_scale_starts_at_its_value():
    model = GLNet(**{**TINY_STL, "layer_scale": 1e-4})
    gamma = model.stages[0].blocks[0].ls1.gamma
    assert gamma.shape == (16,) and torch.all(gamma == 1e-4)


def test_glmix_blocks_expose_assignments_in_order():
    model = GLNet(**{**TINY_STL, "stage_mixers": ["glmix"] * 4}).eval()
    blocks = model.glmix_blocks()
    assert len(blocks) == 5
    for b in blocks:
        b.mixer.global_branch.record_assignment = True
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert [tuple(b.mixer.global_branch.assignment.shape) for b in blocks] == [
        (1, 4, 16, 16), (1, 4, 8, 8), (1, 4, 4, 4), (1, 4, 4, 4), (1, 4, 2, 2)]


@pytest.fixture
def fresh_dynamo():
    """Each compile test starts from an empty dynamo cache: a dozen models through the same
    ``GLNet.forward`` would otherwise hit dynamo's recompile limit, a hard error under fullgraph."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("overrides", [
    {}, dict(local="window_mhsa"), dict(clustering="kmeans"), dict(slot_init="param"),
    dict(fusion="local_global"), dict(global_branch="none", num_slots=None),
], ids=["default", "window", "kmeans", "param", "seq", "local_only"])
def test_compiles_with_fullgraph_no_graph_breaks(overrides, fresh_dynamo):
    model = GLNet(**{**TINY_STL, **overrides}).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_inductor_compile_matches_eager(fresh_dynamo):
    model = timm.create_model("glnet_4g", **tiny_named(depths=[1, 1, 2, 1], num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)


@pytest.mark.parametrize("name", tiny_named_models())
def test_every_named_model_compiles_with_fullgraph(name, fresh_dynamo):
    """Each named model's structure (stem, transitions, block types, layer scale, hidden dwconv) at toy width."""
    model = timm.create_model(name, **tiny_named(num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_the_package_has_no_import_cycles():
    """Module-level and function-level imports alike: a cycle (models/glnet.py <-> models/official.py
    once) makes import order matter and hides which module owns what."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "glnet_lightning"
    modules = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [f"{target}.{alias.name}" for alias in node.names]
                deps |= {n for n in [target, *names] if n in modules and n != name}
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name in modules}
        graph[name] = {d for d in deps if not name.startswith(d + ".") and d != "glnet_lightning"}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return path + [start]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, path + [dep]))
        return None

    cycles = {tuple(c) for c in map(cycle_from, graph) if c}
    assert not cycles, f"import cycles: {sorted(cycles)[:5]}"
