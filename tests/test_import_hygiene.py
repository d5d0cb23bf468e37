"""Dependencies point one way: shells -> core -> backends. Backends never reach back up."""

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


@pytest.mark.parametrize("name", ["checkpoint", "config", "data", "datasets", "evaluation", "metrics", "runs",
                                  "sampling", "schedule", "tokenizer", "trainer"])
def test_core_modules_do_not_import_the_shells(name):
    assert not imported_roots(ROOT / "minigpt_tui" / f"{name}.py") & {"textual", "click"}


APP_FILES = sorted((ROOT / "minigpt_tui").rglob("*.py"))


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_backends_touch_the_tensor_library(path):
    """Everything torch-specific (devices, threads, peak FLOP/s) lives behind the Backend interface."""
    assert "torch" not in imported_roots(path)


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_leaves_process_groups_to_the_backend(path):
    """torch.distributed set-up is the backend's; the core sees a rank, a size and the backend's collectives."""
    assert "torch_distributed" not in path.read_text(encoding="utf-8")
