"""Dependencies point one way: shells -> core -> backends, and inside the core down its layers. Backends never
reach back up."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"minigpt_tui", "textual", "click"}
BACKEND_FILES = sorted((ROOT / "backends").glob("*.py"))


def imported_roots(path: Path) -> set[str]:
    """Top-level package of every import statement in the file, wherever it sits (functions included)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and dynamic_import_target(node):
            roots.add(dynamic_import_target(node).split(".")[0])
    return roots


def dynamic_import_target(call: ast.Call) -> str | None:
    """The module named by a literal ``import_module("x")`` or ``__import__("x")`` call."""
    name = getattr(call.func, "id", getattr(call.func, "attr", None))
    if name in ("import_module", "__import__") and call.args and isinstance(call.args[0], ast.Constant):
        return str(call.args[0].value)
    return None


def test_the_scan_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n"
                      "def f():\n"
                      "    from minigpt_tui.errors import MiniGPTError\n"
                      "    import click.testing\n"
                      "    importlib.import_module('textual.app')\n")
    assert imported_roots(sample) == {"os", "minigpt_tui", "click", "textual"}


@pytest.mark.parametrize("path", BACKEND_FILES, ids=lambda p: p.name)
def test_backend_sources_do_not_import_the_app(path):
    assert not imported_roots(path) & FORBIDDEN


def test_importing_the_torch_backend_loads_no_app_modules():
    code = (
        "import sys, backends.torch_backend, backends.torch_model\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'minigpt_tui', 'textual', 'click'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# The core's layers, lowest first. A module may import its own layer and the layers below it, never above:
# foundation <- training <- (interop | plots) <- inspection <- experiments <- shells (cli, progress, tui).
LAYERS = {
    "errors": 0, "storage": 0, "typed": 0,
    "training": 1,
    "interop": 2, "plots": 2,
    "inspection": 3,
    "experiments": 4,
    "cli": 5, "progress": 5, "tui": 5, "__main__": 5,
}
SIBLINGS_APART = {frozenset({"interop", "plots"})}  # same layer, and still independent of each other


def unit_of(path: Path) -> str:
    """The layer unit a file of minigpt_tui/ belongs to: its subpackage, or its own name at the top level."""
    parts = path.relative_to(ROOT / "minigpt_tui").parts
    return parts[0] if len(parts) > 1 else path.stem


def imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "minigpt_tui" else [f"minigpt_tui.{a.name}" for a in node.names]
        units.update(name.split(".")[1] for name in names if name.startswith("minigpt_tui."))
    return units


CORE_FILES = sorted(p for p in (ROOT / "minigpt_tui").rglob("*.py") if p.name != "__init__.py")


def test_every_core_file_has_a_layer():
    assert {unit_of(p) for p in CORE_FILES} <= set(LAYERS)


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    unit = unit_of(path)
    for target in imported_units(path) - {unit}:
        assert LAYERS[target] <= LAYERS[unit], f"{unit} (layer {LAYERS[unit]}) imports {target} ({LAYERS[target]})"
        assert frozenset({unit, target}) not in SIBLINGS_APART, f"{unit} and {target} must stay independent"


@pytest.mark.parametrize("path", [p for p in CORE_FILES if LAYERS[unit_of(p)] < LAYERS["cli"]],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_core_modules_do_not_import_the_shells(path):
    assert not imported_roots(path) & {"textual", "click"}


def test_no_import_cycle_between_modules():
    """Module-level imports (function-level ones are lazy and may not close a cycle at import time either)."""
    graph = {}
    for path in CORE_FILES:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("minigpt_tui."):
                graph[module].add(node.module)
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join(trail + [module])
        state[module] = "open"
        for target in graph.get(module, ()):
            visit(target, trail + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_the_top_level_stays_small():
    modules = [p for p in (ROOT / "minigpt_tui").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(modules) <= 12, sorted(p.name for p in modules)


def test_every_subpackage_says_what_it_owns():
    for package in (ROOT / "minigpt_tui").glob("*/__init__.py"):
        assert ast.get_docstring(ast.parse(package.read_text(encoding="utf-8"))), package


APP_FILES = sorted((ROOT / "minigpt_tui").rglob("*.py"))


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_backends_touch_the_tensor_library(path):
    """Everything torch-specific (devices, threads, peak FLOP/s) lives behind the Backend interface."""
    assert "torch" not in imported_roots(path)


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_leaves_process_groups_to_the_backend(path):
    """torch.distributed set-up is the backend's; the core sees a rank, a size and the backend's collectives."""
    assert "torch_distributed" not in path.read_text(encoding="utf-8")
