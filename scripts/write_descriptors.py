"""Write (or check) descriptors/<app>.json from the apps' parsers (workflows/<app>/run.py).

The parser of each app declares its inputs (mtdp_core.cytomine.params.add_input); this script
turns it into the Cytomine descriptor, so descriptor and command line never drift apart, and
writes the input tables of docs/apps.md from the descriptors.

    python scripts/write_descriptors.py           # write descriptors/*.json
    python scripts/write_descriptors.py --check   # exit 1 when a file differs (CI, tests)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
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
    from mtdp_core.cytomine.params import build_descriptor

    module = load_workflow(app)
    descriptor = build_descriptor(module.get_args_parser(), **module.DESCRIPTOR)
    return json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n"


DOCS = ROOT / "docs" / "apps.md"


def inputs_table(app: str, descriptor: dict) -> str:
    """The Markdown table of an app's inputs (set-by-server ones left out)."""
    lines = [
        f"**{app.replace('_', '-')}** (`descriptors/{app}.json`, {descriptor['name']})",
        "",
        "| input | type | default | description |",
        "|---|---|---|---|",
    ]
    for item in descriptor["inputs"]:
        if item.get("set-by-server"):
            continue
        default = item.get("default-value")
        shown = "—" if default in (None, "") else f"`{json.dumps(default).strip(chr(34))}`"
        required = " (required)" if not item.get("optional") else ""
        lines.append(f"| `{item['id']}`{required} | {item['type']} | {shown} | {item['description']} |")
    return "\n".join(lines)


def docs_text() -> str:
    text = DOCS.read_text(encoding="utf-8")
    for app in APPS:
        table = inputs_table(app, json.loads(descriptor_text(app)))
        text = re.sub(
            rf"<!-- inputs:{app} -->.*?<!-- /inputs -->",
            lambda _m, t=table, a=app: f"<!-- inputs:{a} -->\n{t}\n<!-- /inputs -->",
            text,
            flags=re.DOTALL,
        )
    return text


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
    docs = docs_text()
    if args.check:
        if DOCS.read_text(encoding="utf-8") != docs:
            stale.append(DOCS)
    else:
        DOCS.write_text(docs, encoding="utf-8")
        print(f"wrote the input tables of {DOCS.relative_to(ROOT)}")
    for path in stale:
        print(f"{path.relative_to(ROOT)} is out of date: run python scripts/write_descriptors.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
