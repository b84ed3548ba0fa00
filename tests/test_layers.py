"""The layer rule of docs/architecture.md ("## Layers"), checked against the package's import graph.

The table in the docs is the rule: this test parses it, so a package moved in the code without the
docs (or the other way round) fails here, naming the module, the line and the import.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "glnet_lightning"
DOCS = ROOT / "docs" / "architecture.md"


def layer_table() -> tuple[dict[str, str], dict[str, set[str]]]:
    """(top-level package or module -> layer, layer -> layers it may import) from the docs table."""
    text = DOCS.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    owner: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    for row in rows:
        layer, members, imports = (cell.strip() for cell in row.strip("|").split("|"))
        for member in re.findall(r"`([^`]+)`", members):
            owner[member] = layer
        allowed[layer] = {layer} | ({"*"} if imports == "every layer" else
                                    {name.strip() for name in imports.split(",")})
    return owner, allowed


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the project in ``path``, inside functions too."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found if name.split(".")[0] == "glnet_lightning"]


def top_level(module: str) -> str:
    """``glnet_lightning.models.glnet`` -> ``models``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_docs_table_names_every_top_level_package_and_module():
    owner, allowed = layer_table()
    present = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert present - set(owner) == set(), "add these to the table in docs/architecture.md, ## Layers"
    assert set(owner) - present == set(), "the table in docs/architecture.md names what the package no longer has"
    for layer, may in allowed.items():
        assert may - {"*"} <= set(allowed), f"layer {layer} may import an unknown layer: {may - set(allowed)}"


def test_every_import_follows_the_layer_rule():
    owner, allowed = layer_table()
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # imports models only; checked below
        layer = owner[top_level(".".join(path.relative_to(ROOT).with_suffix("").parts))]
        for line, name in imports_of(path):
            target = owner.get(top_level(name))
            if target is None:
                continue  # ``glnet_lightning`` itself (``__version__``)
            if "*" not in allowed[layer] and target not in allowed[layer]:
                broken.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {name} ({target})")
    assert broken == [], "imports against docs/architecture.md ## Layers:\n" + "\n".join(broken)


def test_the_package_init_imports_models_only():
    """``import glnet_lightning`` registers the timm models and must not pull in Lightning."""
    names = {top_level(name) for _, name in imports_of(PACKAGE / "__init__.py")}
    assert names <= {"models"}, names


@pytest.mark.parametrize("forbidden", ["unittest", "pytest"])
def test_no_test_tools_in_the_package(forbidden):
    """``unittest.mock`` and pytest belong to the tests: production code does not patch itself."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for m in modules if m.split(".")[0] == forbidden]
    assert offenders == []
