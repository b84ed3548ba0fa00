"""The assembled GLNet: every ablation row is a config, gradients reach every parameter, compile works."""
from __future__ import annotations

import pytest
import timm
import torch

import glnet_lightning  # noqa: F401
from glnet_lightning.models import MODEL_NAMES, GLNet

TINY = dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), head_dim=16, num_slots=4, num_classes=7,
            stage_mixers=("glmix", "glmix", "glmix", "mha"))

# docs/design.md, section 3: each row of the paper's ablation table as strategy settings, with its params (M).
ABLATION_ROWS = {
    "stl": ({}, 30.3),
    "local_only": (dict(global_branch="none"), 26.4),
    "global_only": (dict(local="none"), 28.3),
    "seq_global_local": (dict(fusion="global_local"), 30.3),
    "seq_local_global": (dict(fusion="local_global"), 30.3),
    "local_wmhsa_w7": (dict(local={"name": "window_mhsa", "window_size": 7}), 32.2),
    "kmeans_hash": (dict(clustering="kmeans"), 30.3),
    "param_slot_init": (dict(slot_init="param"), 30.5),
    "dwconv_k7": (dict(kernel_size=7), 30.3),
    "dwconv_k3": (dict(kernel_size=3), 30.3),
    **{f"slots_{n}": (dict(num_slots=n), 30.3) for n in (9, 25, 36, 49, 81)},
}


@pytest.mark.parametrize("row", sorted(ABLATION_ROWS))
def test_every_ablation_row_is_a_config_with_the_papers_params(row):
    overrides, paper_params = ABLATION_ROWS[row]
    model = timm.create_model("glnet_stl", **overrides)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - paper_params) <= 0.1


@pytest.mark.parametrize("row", sorted(ABLATION_ROWS))
def test_every_ablation_row_trains_at_small_size(row):
    overrides, _ = ABLATION_ROWS[row]
    overrides = {k: v for k, v in overrides.items() if k != "num_slots"}  # 4 slots at this size
    if overrides.get("clustering") == "kmeans":
        overrides["clustering"] = {"name": "kmeans", "iters": 2}
    config = {**TINY, **overrides}
    if config.get("global_branch") == "none":
        del config["num_slots"]
    model = GLNet(**config).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    # kmeans assignments are discrete: its clustering has no parameters, everything else still learns
    stale = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert stale == []


def test_drop_path_grows_linearly_to_the_rate():
    model = GLNet(**TINY, drop_path_rate=0.3)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 5).tolist())


def test_layer_scale_starts_at_its_value():
    model = GLNet(**{**TINY, "layer_scale": 1e-4})
    gamma = model.stages[0].blocks[0].ls1.gamma
    assert gamma.shape == (16,) and torch.all(gamma == 1e-4)


def test_glmix_blocks_expose_assignments_in_order():
    model = GLNet(**{**TINY, "stage_mixers": ("glmix",) * 4}).eval()
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
    model = GLNet(**{**TINY, **overrides}).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_inductor_compile_matches_eager(fresh_dynamo):
    model = timm.create_model("glnet_4g", depths=(1, 1, 2, 1), dims=(32, 64, 96, 128), num_slots=4, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_named_model_compiles_with_fullgraph(name, fresh_dynamo):
    """Each named model's structure (stem, transitions, block types, layer scale, hidden dwconv) at toy width."""
    model = timm.create_model(name, depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), num_slots=4, num_classes=5).eval()
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
