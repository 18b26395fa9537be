"""Write (or check) every descriptor from the parameter definitions, and the docs' input tables.

- the legacy apps: descriptors/<app>.json (cytomine-0.1) from the apps' parsers
  (workflows/<app>/run.py, whose inputs are declared with mtdp_core.cytomine.params.add_input);
- the App Engine tasks: descriptors/appengine/<task>/descriptor.yml from the tasks' definitions
  (mtdp_core/appengine/tasks/, parameters from the same declarations), checked against the App
  Engine's schema and rules before they are written;
- the input tables of docs/apps.md and the input/output tables of docs/appengine.md.

So descriptors, command lines and docs never drift apart.

    python scripts/write_descriptors.py           # write them
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
APPS = ("extract_features", "svm_train", "svm_predict", "finetune_predict", "slide_classify")


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
TASK_DIR = ROOT / "descriptors" / "appengine"
TASK_DOCS = ROOT / "docs" / "appengine.md"


def task_descriptor_texts() -> dict[Path, str]:
    """descriptors/appengine/<task>/descriptor.yml of every App Engine task (checked first)."""
    from mtdp_core.appengine.spec import check_descriptor, descriptor_yaml, load_descriptor_text
    from mtdp_core.appengine.tasks import all_tasks

    texts = {}
    for task in all_tasks():
        text = descriptor_yaml(task)
        check_descriptor(load_descriptor_text(text), what=f"the descriptor of task {task.name}")
        texts[TASK_DIR / task.name / "descriptor.yml"] = text
    return texts


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type_text(spec) -> str:
    if isinstance(spec, str):
        return spec
    kind = spec["id"]
    if kind == "array":
        return f"array of {_type_text(spec['subtype'])}"
    if kind == "enumeration":
        return " / ".join(spec["values"])
    bounds = [
        f"{op} {spec[key]:g}" for key, op in (("geq", "≥"), ("gt", ">"), ("leq", "≤"), ("lt", "<")) if key in spec
    ]
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def task_tables(name: str, descriptor: dict) -> str:
    """The Markdown tables of a task's inputs and outputs."""
    lines = [
        f"**{name}** (`descriptors/appengine/{name}/descriptor.yml`, {descriptor['name']})",
        "",
        "| input | type | default | description |",
        "|---|---|---|---|",
    ]
    for key, item in descriptor["inputs"].items():
        default = item.get("default")
        shown = "—" if default is None else f"`{json.dumps(default).strip(chr(34))}`"
        required = " (required)" if not item.get("optional") else ""
        lines.append(f"| `{key}`{required} | {_type_text(item['type'])} | {shown} | {_cell(item['description'])} |")
    lines += ["", "| output | type | description |", "|---|---|---|"]
    for key, item in descriptor["outputs"].items():
        lines.append(f"| `{key}` | {_type_text(item['type'])} | {_cell(item['description'])} |")
    return "\n".join(lines)


def task_docs_text() -> str:
    from mtdp_core.appengine.spec import load_descriptor_text

    text = TASK_DOCS.read_text(encoding="utf-8")
    for path, descriptor_text in task_descriptor_texts().items():
        name = path.parent.name
        table = task_tables(name, load_descriptor_text(descriptor_text))
        text = re.sub(
            rf"<!-- task:{name} -->.*?<!-- /task -->",
            lambda _m, t=table, n=name: f"<!-- task:{n} -->\n{t}\n<!-- /task -->",
            text,
            flags=re.DOTALL,
        )
    return text


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
    for path, text in task_descriptor_texts().items():
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for docs_path, make in ((DOCS, docs_text), (TASK_DOCS, task_docs_text)):
        docs = make()
        if args.check:
            if docs_path.read_text(encoding="utf-8") != docs:
                stale.append(docs_path)
        else:
            docs_path.write_text(docs, encoding="utf-8")
            print(f"wrote the tables of {docs_path.relative_to(ROOT)}")
    for path in stale:
        print(f"{path.relative_to(ROOT)} is out of date: run python scripts/write_descriptors.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
