"""The direction of dependencies between the rooms of mtdp_core (docs/architecture.md), checked
on the source: the library core never imports the Cytomine layer or the server, transfer never
imports evaluation, lower layers never import upper ones, and no app imports another app."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mtdp_core

PACKAGE = Path(mtdp_core.__file__).resolve().parent
CORE = ("backbones", "data", "training", "transfer", "evaluation", "multitask")
#: room -> rooms it must not import (beyond the Cytomine layer and the server, which no core room imports).
FORBIDDEN = {
    "backbones": ("data", "multitask", "training", "transfer", "evaluation"),
    "data": ("backbones", "multitask", "training", "transfer", "evaluation"),
    "multitask": ("training", "transfer", "evaluation"),
    "training": ("transfer", "evaluation"),
    "transfer": ("evaluation",),
}


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports (at the top or inside functions), with ``from a import b`` as ``a.b`` too."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def room_files(room: str) -> list[Path]:
    folder = PACKAGE / room
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{room}.py"]


def violations(room: str, forbidden: tuple[str, ...]) -> list[str]:
    prefixes = tuple(f"mtdp_core.{name}" for name in forbidden)
    return [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in room_files(room)
        for name in imported_modules(path)
        if name in prefixes or name.startswith(tuple(f"{p}." for p in prefixes))
    ]


@pytest.mark.parametrize("room", CORE)
def test_the_core_never_imports_the_cytomine_layer_or_the_server(room):
    assert violations(room, ("cytomine", "server")) == []


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(room):
    assert violations(room, FORBIDDEN[room]) == []


def test_nothing_below_the_app_engine_front_end_imports_it():
    rooms = (*CORE, "cytomine", "slides", "server")
    found = [
        v
        for room in rooms
        if (PACKAGE / room).exists() or (PACKAGE / f"{room}.py").exists()
        for v in violations(room, ("appengine",))
    ]
    assert found == []


#: The modules of cytomine/apps/ that hold steps the apps share (every other module is one app).
SHARED_STEPS = ("__init__", "common", "slide_maps")


def test_no_app_imports_another_app():
    apps = [p for p in (PACKAGE / "cytomine" / "apps").glob("*.py") if p.stem not in SHARED_STEPS]
    found = [
        f"{app.stem} imports {name}"
        for app in apps
        for name in imported_modules(app)
        if any(name.startswith(f"mtdp_core.cytomine.apps.{other.stem}") for other in apps if other != app)
    ]
    assert found == []


def test_the_scan_sees_imports_inside_functions(tmp_path):
    # The rule must catch the lazy imports the code base uses (an import inside a function).
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from mtdp_core.evaluation.protocol import run_loto\n    import mtdp_core.server\n")
    assert imported_modules(source) == [
        "mtdp_core.evaluation.protocol",
        "mtdp_core.evaluation.protocol.run_loto",
        "mtdp_core.server",
    ]
