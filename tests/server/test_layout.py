"""The server's layout: an independent room (it imports only ``mtdp_core.errors`` from the rest of
the library), files and functions small enough to read, and a URL table whose rows fit their handlers."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import mtdp_core.server
from mtdp_core.server.api.urls import PUBLIC_PATHS, ROUTES

SERVER = Path(mtdp_core.server.__file__).parent
MODULES = sorted(SERVER.rglob("*.py"))
#: What the server may import from the rest of mtdp_core: the typed errors every part shares.
ALLOWED = {"mtdp_core.errors"}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 60


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_server_imports_nothing_of_mtdp_core_but_its_errors():
    outside = {
        f"{path.relative_to(SERVER)}: {name}"
        for path in MODULES
        for name in _imports(path)
        if (name == "mtdp_core" or name.startswith("mtdp_core."))
        and not name.startswith("mtdp_core.server")
        and name not in ALLOWED
    }
    assert not outside, f"mtdp_core/server must stay independent of the library: {sorted(outside)}"


def test_the_checks_see_the_whole_server():
    assert len(MODULES) > 40 and any(path.parent.name == "handlers" for path in MODULES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SERVER)))
def test_files_and_functions_stay_small(path):
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.name}: split it by responsibility"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_route_fits_its_handler():
    """Each path parameter is a parameter of the handler, whose first parameter is the context;
    no two rows answer the same method on the same pattern."""
    seen = set()
    for route in ROUTES:
        parameters = list(inspect.signature(route.handler).parameters)
        assert parameters[0] == "ctx", route
        for name in re.findall(r"<(?:[^:>]+:)?(\w+)>", route.pattern):
            assert name in parameters, f"{route.pattern}: {route.handler.__name__} has no parameter {name!r}"
        for method in route.methods.split():
            assert (method, route.pattern) not in seen, f"{method} {route.pattern} is routed twice"
            seen.add((method, route.pattern))
    assert PUBLIC_PATHS <= {pattern for _, pattern in seen}
