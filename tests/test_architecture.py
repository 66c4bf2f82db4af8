"""The module structure docs/architecture.rst describes: imports run one way, names stay private.

Read from the source (no module is imported), so these tests cost nothing and fail on the
commit that adds a circle or reaches into another module's private names.
"""

from __future__ import annotations

import ast

import pytest

from .conftest import REPO

PACKAGE = REPO / "transferkit"

# docs/architecture.rst, "The layers": bottom first. A module may import modules of its own
# row or of the rows before it.
LAYERS = [
    {"keras_setup", "parameters", "pickling", "plain_data", "model_file", "weights_files",
     "console", "advice", "backbone_table"},
    {"backbones", "hub_backbones", "cut_points", "augmentation", "head_layers",
     "batchnorm_folding", "batchnorm_statistics", "openvino_runtime", "image_input",
     "cache"},
    {"network"},
    {"finetune_network", "training"},
    {"persistence"},
    {"extractor", "finetune"},
    {"transferability"},
    {"viz", "workers", "dask", "spark", "cli"},
]
LEVEL = {module: level for level, row in enumerate(LAYERS) for module in row}


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """For each module, the transferkit modules it imports (anywhere) and the names taken."""
    found = {}
    for path in sorted(PACKAGE.glob("*.py")):
        imports = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                imports.append((node.module, [alias.name for alias in node.names]))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 \
                    and (node.module or "").startswith("transferkit."):
                imports.append((node.module.split(".")[1], [alias.name for alias in node.names]))
        found[path.stem] = imports
    return found


def test_every_module_has_its_place_in_the_documented_layers():
    modules = set(_imports()) - {"__init__"}
    assert modules == set(LEVEL), (
        f"add {sorted(modules - set(LEVEL))} to LAYERS here and to docs/architecture.rst; "
        f"remove {sorted(set(LEVEL) - modules)}")


@pytest.mark.parametrize("module", sorted(LEVEL))
def test_a_module_imports_only_its_own_layer_and_those_below(module):
    upward = [target for target, _ in _imports()[module]
              if target in LEVEL and LEVEL[target] > LEVEL[module]]
    assert not upward, f"{module} imports {upward}, which sit above it"


def test_no_import_circle():
    graph = {module: {target for target, _ in imports if target in LEVEL and target != module}
             for module, imports in _imports().items() if module in LEVEL}
    visiting, done = set(), set()

    def visit(module, path):
        assert module not in visiting, "import circle: " + " -> ".join([*path, module])
        if module in done:
            return
        visiting.add(module)
        for target in graph[module]:
            visit(target, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_module_imports_another_modules_private_names():
    private = [(module, target, name) for module, imports in _imports().items()
               for target, names in imports for name in names
               if name.startswith("_") and name != "__version__"]
    assert not private
