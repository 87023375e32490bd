"""The package's layers (docs/architecture.md): a module imports only from its own layer and those below."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "poi_cli"
# what each layer may import from poi_cli, besides itself
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "model": {"core", "data"},
    "train": {"core", "data", "model"},
    "inference": {"core", "data", "model"},
}


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
