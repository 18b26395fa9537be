"""Write (or check) descriptors/<app>.json from the apps' parsers (workflows/<app>/run.py).

The parser of each app declares its inputs (mtdp_core.cytomine.params.add_input); this script
turns it into the Cytomine descriptor, so descriptor and command line never drift apart.

    python scripts/write_descriptors.py           # write descriptors/*.json
    python scripts/write_descriptors.py --check   # exit 1 when a file differs (CI, tests)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
APPS = ("extract_features", "svm_train", "svm_predict", "finetune_predict")


def load_workflow(app: str) -> ModuleType:
    """Import workflows/<app>/run.py as a module (it is a script, not a package)."""
    path = ROOT / "workflows" / app / "run.py"
    spec = importlib.util.spec_from_file_location(f"mtdp_workflow_{app}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def descriptor_text(app: str) -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from mtdp_core.cytomine.params import build_descriptor

    module = load_workflow(app)
    descriptor = build_descriptor(module.get_args_parser(), **module.DESCRIPTOR)
    return json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for app in APPS:
        path = ROOT / "descriptors" / f"{app}.json"
        text = descriptor_text(app)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"{path.relative_to(ROOT)} is out of date: run python scripts/write_descriptors.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
