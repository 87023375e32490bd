"""The package's layers (docs/architecture.md): a module imports only from its own layer and those below."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "poi_cli"
# what each layer may import from poi_cli, besides itself
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "model": {"core", "data"},
    "train": {"core", "data", "model"},
    "study": {"core", "data", "model"},
    "deploy": {"core", "data"},
}
# The deploy runtime (`pip install poi-fer`) has no torch: neither deploy/ nor what it
# imports of core/ and data/ may import these at module level (tests/test_deploy.py runs
# it with torch blocked); deploy/ may not import them at all.
TORCH_MODULES = {"torch", "torchvision", "facenet_pytorch"}
DEPLOY_IMPORTS = ("core/errors.py", "core/atomic.py", "core/locks.py", "core/manifests.py", "core/schema.py",
                  "core/threads.py", "core/outputs.py", "data/faces.py", "data/mtcnn.py", "data/preprocess.py",
                  "data/video.py")


def _imported_layers(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "poi_cli" and len(parts) > 1:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_from_below(layer):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        outside = _imported_layers(path) - ALLOWED[layer] - {layer, "data_manifests"}
        assert not outside, f"{path.relative_to(PACKAGE)} imports {sorted(outside)}"


def _imported_modules(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_deploy_imports_no_torch():
    for path in sorted((PACKAGE / "deploy").rglob("*.py")):
        assert not _imported_modules(path, top_level_only=False) & TORCH_MODULES, f"{path.relative_to(PACKAGE)} imports torch"
    for name in DEPLOY_IMPORTS:
        path = PACKAGE / name
        assert not _imported_modules(path, top_level_only=True) & TORCH_MODULES, f"{name} imports torch at module level"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_package_docstring_names_every_module(layer):
    """docs/architecture.md says each package's __init__ lists its modules: keep it true."""
    docstring = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text())) or ""
    modules = {p.stem for p in (PACKAGE / layer).glob("*.py") if p.stem != "__init__"}
    missing = {m for m in modules if not re.search(rf"(?<![\w.]){m}(?![\w/])", docstring)}
    assert not missing, f"poi_cli/{layer}/__init__.py does not name {sorted(missing)}"
