"""Model backends behind one interface (``backends.base.Backend``).

Built-in backends and third-party ones are found through the ``minigpt.backends`` entry-point
group; a backend module is imported only when it is asked for, so a missing optional dependency
(torch, say) only matters to the backend that needs it.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "minigpt.backends"
BUILTIN_BACKENDS = {
    "torch": "backends.torch_backend:TorchBackend",
    "numpy": "backends.numpy_backend:NumpyBackend",
}


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN_BACKENDS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        targets[entry.name] = entry.value
    return targets


def available_backends() -> list[str]:
    return sorted(_targets())


def load_backend(name: str) -> type:
    """The Backend subclass registered as ``name``; ValueError for an unknown name."""
    targets = _targets()
    if name not in targets:
        raise ValueError(f"unknown backend {name!r} (available: {', '.join(sorted(targets))})")
    module_name, _, attr = targets[name].partition(":")
    return getattr(import_module(module_name), attr)
