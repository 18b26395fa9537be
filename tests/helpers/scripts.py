"""The repository's scripts (scripts/, workflows/, benchmarks/) loaded as modules, by path
(they are scripts, not a package: nothing is added to sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_script(relative: str, name: str | None = None) -> ModuleType:
    """Import the script at ``REPO_ROOT / relative`` (e.g. ``scripts/write_descriptors.py``)."""
    path = REPO_ROOT / relative
    name = name or f"mtdp_script_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: scripts/write_descriptors.py: APPS, load_workflow, descriptor_text, docs_text, DOCS.
descriptors = load_script("scripts/write_descriptors.py")
