"""Tasks and their ``descriptor.yml``, generated from the same parameter definitions as the
legacy apps' descriptors.

A task's inputs come from two places, in this order in its descriptor:

- **file inputs** (:class:`FileInput`): what only the App Engine can give, as files: an image (an
  annotation's crop or a whole slide), a model file, a zip of examples, arrays of images and
  labels;
- **parameters**: the task's argparse parser, built with the apps' shared declarations
  (``mtdp_core.cytomine.inputs``: ``add_backbone_inputs``, ``add_runtime_inputs``, ...). Each
  option carries its :class:`~mtdp_core.cytomine.params.InputSpec` (name, description, default,
  bounds, choices) and its converter (whole number, number, true/false, text): the App Engine type
  is derived from them, and the entrypoint parses the files of ``/inputs`` with that same parser,
  so a value is checked, and a bad one explained, exactly as on the legacy command line.

:func:`task_descriptor` writes the descriptor; :func:`check_descriptor` validates one against the
official schema (``schema/task.v0.json``, draft 2019-09) and against what the App Engine needs
outside the schema (its uploader dereferences ``name_short``, ``configuration.input_folder`` and
``output_folder``, every ``display_name``, and ``derived_from`` in any output ``dependencies``;
a ``-`` in the namespace breaks the image name it derives from the tar's file name).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any

from mtdp_core import __version__
from mtdp_core.appengine.errors import DescriptorError
from mtdp_core.cytomine.params import InputSpec, descriptor_inputs

if TYPE_CHECKING:
    from mtdp_core.appengine.runner import TaskContext

#: ``$schema`` of the descriptors (the App Engine's own schema, as task-stardist names it).
SCHEMA_URL = (
    "https://raw.githubusercontent.com/cytomine/cytomine/refs/heads/main/app-engine/src/main/resources/"
    "schemas/tasks/task.v0.json"
)
#: Reverse-DNS prefix of every task's namespace (no ``-``: the App Engine splits the tar's name at
#: its first ``-`` into namespace and version).
NAMESPACE_PREFIX = "org.mtdp"
INPUT_FOLDER = "/inputs"
OUTPUT_FOLDER = "/outputs"
#: Who the App Engine lists as the tasks' authors (the schema requires names, organisation, email).
AUTHORS = (
    {
        "first_name": "mtdp",
        "last_name": "developers",
        "organization": "mtdp project",
        "email": "dev@mtdp.local",
        "is_contact": True,
    },
)
ID_PATTERN = re.compile(r"^[a-zA-Z0-9_]+$")
SCALAR_TYPES = ("integer", "number", "boolean", "string", "enumeration", "datetime")


@dataclass(frozen=True)
class _Declared:
    """What a descriptor says of every input and output: its id (the file name under /inputs or
    /outputs), the name and description the web UI shows, and its App Engine type."""

    id: str
    display_name: str
    description: str
    type: str | dict

    def to_descriptor(self) -> dict[str, Any]:
        return {"display_name": self.display_name, "description": self.description, "type": _plain(self.type)}

    @property
    def type_id(self) -> str:
        return type_id(self.type)


@dataclass(frozen=True)
class FileInput(_Declared):
    """An input the App Engine provides as a file or a folder (``type``: an App Engine type:
    ``image``, ``file``, ``geometry`` or an ``array`` of them or of text)."""

    optional: bool = False
    matching: tuple[str, ...] = ()

    def to_descriptor(self) -> dict[str, Any]:
        data = {**super().to_descriptor(), "optional": self.optional}
        if self.matching:
            data["dependencies"] = {"matching": [f"inputs/{m}" for m in self.matching]}
        return data


@dataclass(frozen=True)
class Output(_Declared):
    """A declared output: ``/outputs/<id>`` (a file, or a folder for an array).

    ``derived_from`` names the image input whose crop offset Cytomine adds back to geometries;
    ``matching`` names outputs of the same size (geometries, their classes and their scores).
    """

    derived_from: str | None = None
    matching: tuple[str, ...] = ()

    def to_descriptor(self) -> dict[str, Any]:
        data = super().to_descriptor()
        if self.derived_from or self.matching:
            if not self.derived_from:
                # The App Engine's uploader reads derived_from whenever an output has dependencies.
                raise DescriptorError(f"Output {self.id}: give derived_from with matching (the App Engine needs it).")
            data["dependencies"] = {"derived_from": f"inputs/{self.derived_from}"}
            if self.matching:
                data["dependencies"]["matching"] = [f"outputs/{m}" for m in self.matching]
        return data


@dataclass(frozen=True)
class TaskDefinition:
    """One App Engine task.

    Attributes:
        name: registry key and the last part of the namespace (``classify``).
        title: the name Cytomine shows (3 to 30 characters).
        description: what the task does, for the Applications page (at most 2048 characters).
        file_inputs: inputs given as files (first in the form).
        build_parser: the parser of the task's parameters (shared declarations).
        outputs: every file the task writes (all always written).
        run: ``run(context) -> summary``: reads inputs, runs the pipeline, writes the outputs.
        resources: ``ram``/``cpus``/``gpus`` the App Engine reserves for a run.
        legacy_app: the legacy app (``workflows/<app>``) whose pipeline and parameters it shares.
    """

    name: str
    title: str
    description: str
    file_inputs: tuple[FileInput, ...]
    build_parser: Callable[[], argparse.ArgumentParser]
    outputs: tuple[Output, ...]
    run: Callable[[TaskContext], str]
    resources: Mapping[str, Any] = field(default_factory=lambda: {"ram": "4Gi", "cpus": 2, "gpus": 0})
    legacy_app: str | None = None

    @property
    def namespace(self) -> str:
        return f"{NAMESPACE_PREFIX}.{self.name}"

    @property
    def version(self) -> str:
        return __version__

    @property
    def name_short(self) -> str:
        return f"mtdp-{self.name.replace('_', '-')}"

    @property
    def image_name(self) -> str:
        """The image the App Engine registers: namespace with ``/`` for ``.``, tag = version."""
        return f"{self.namespace.replace('.', '/')}:{self.version}"

    @property
    def tar_name(self) -> str:
        """The image tar's file name in the bundle, from which the App Engine derives the image."""
        return f"{self.namespace}-{self.version}.tar"

    @property
    def entrypoint(self) -> list[str]:
        """The container's ENTRYPOINT (the App Engine runs it with no arguments)."""
        return ["python", "-m", "mtdp_core.appengine", self.name]

    @cached_property
    def parser(self) -> argparse.ArgumentParser:
        return self.build_parser()

    def parameter_ids(self) -> list[str]:
        return [spec.id for spec in descriptor_inputs(self.parser)]

    def input_ids(self) -> list[str]:
        return [i.id for i in self.file_inputs] + self.parameter_ids()

    def file_input(self, input_id: str) -> FileInput:
        for item in self.file_inputs:
            if item.id == input_id:
                return item
        raise KeyError(input_id)

    def output(self, output_id: str) -> Output:
        for item in self.outputs:
            if item.id == output_id:
                return item
        raise KeyError(output_id)


def type_id(spec: str | Mapping[str, Any]) -> str:
    return spec if isinstance(spec, str) else str(spec["id"])


def _plain(value: Any) -> Any:
    """Tuples as lists (YAML and JSON schema want lists)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- parameters -> types


def parameter_type(spec: InputSpec) -> dict[str, Any]:
    """The App Engine type of an input declared with ``add_input`` (from its converter's kind and bounds)."""
    if spec.values_choice:
        return {"id": "enumeration", "values": list(spec.values_choice)}
    kind = spec.kind
    if kind in ("integer", "number"):
        out: dict[str, Any] = {"id": kind}
        cast = int if kind == "integer" else float
        if spec.minimum is not None:
            out["geq"] = cast(spec.minimum)
        if spec.maximum is not None:
            out["leq"] = cast(spec.maximum)
        return out
    if kind == "boolean":
        return {"id": "boolean"}
    if kind in ("string", "numbers"):  # a list of numbers is typed as its text, "0.001,0.0001"
        return {"id": "string"}
    raise DescriptorError(
        f"Input {spec.id} holds Cytomine ids ({kind}): the App Engine has no such type; do not declare it in a task."
    )


def parameter_default(spec: InputSpec, ae_type: Mapping[str, Any]) -> Any:
    """The descriptor default (what the web UI pre-fills), typed as the schema wants; None for none."""
    default = spec.default
    if default in (None, ""):
        return None
    kind = ae_type["id"]
    if kind == "integer":
        return int(default)
    if kind == "number":
        value = float(default)
        return int(value) if value.is_integer() and not isinstance(default, float) else value
    if kind == "boolean":
        return bool(default)
    return str(default)


def parameter_inputs(parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """Descriptor inputs of the options of ``parser`` declared with ``add_input``."""
    out: dict[str, dict[str, Any]] = {}
    for spec in descriptor_inputs(parser):
        if spec.set_by_server:
            raise DescriptorError(f"Input {spec.id} is set by a legacy Cytomine server: it has no place in a task.")
        ae_type = parameter_type(spec)
        item: dict[str, Any] = {
            "display_name": spec.name,
            "description": spec.description,
            "type": ae_type,
            # The web UI pre-fills defaults; the task applies them itself when a value is absent.
            "optional": True,
        }
        default = parameter_default(spec, ae_type)
        if default is not None:
            item["default"] = default
        out[spec.id] = item
    return out


# --------------------------------------------------------------------------- the descriptor


def task_descriptor(task: TaskDefinition) -> dict[str, Any]:
    """The ``descriptor.yml`` content of ``task`` (as a mapping, in the order it is written)."""
    inputs = {item.id: item.to_descriptor() for item in task.file_inputs}
    for key, value in parameter_inputs(task.parser).items():
        if key in inputs:
            raise DescriptorError(f"Task {task.name}: input {key} is declared twice.")
        inputs[key] = value
    return {
        "$schema": SCHEMA_URL,
        "name": task.title,
        "name_short": task.name_short,
        "namespace": task.namespace,
        "version": task.version,
        "description": task.description,
        "authors": [dict(a) for a in AUTHORS],
        "configuration": {
            "input_folder": INPUT_FOLDER,
            "output_folder": OUTPUT_FOLDER,
            "resources": dict(task.resources),
        },
        "inputs": inputs,
        "outputs": {item.id: item.to_descriptor() for item in task.outputs},
    }


def descriptor_yaml(task: TaskDefinition) -> str:
    import yaml

    header = (
        f"# App Engine descriptor of the mtdp task '{task.name}'. Generated from the task's definition\n"
        f"# (mtdp_core/appengine/tasks/) by scripts/write_descriptors.py: do not edit by hand.\n"
    )
    body = yaml.safe_dump(task_descriptor(task), sort_keys=False, allow_unicode=True, width=100)
    return header + body


def load_descriptor_text(text: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DescriptorError(f"Fix the descriptor: it is not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise DescriptorError("Fix the descriptor: its top level is not a mapping.")
    return data


# --------------------------------------------------------------------------- checks


def schema() -> dict[str, Any]:
    """The App Engine's task descriptor schema (``task.v0.json``, Apache-2.0, see schema/NOTICE.md)."""
    text = resources.files("mtdp_core.appengine").joinpath("schema", "task.v0.json").read_text(encoding="utf-8")
    return json.loads(text)


def schema_problems(data: Mapping[str, Any]) -> list[str]:
    """Violations of ``task.v0.json`` (draft 2019-09, formats checked)."""
    try:
        import jsonschema
    except ImportError:  # a test dependency; the App Engine checks the schema on upload anyway
        return ["the schema was not checked: install jsonschema (pip install jsonschema)"]
    validator = jsonschema.Draft201909Validator(schema(), format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER)
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"schema: {where}: {error.message}")
    return problems


def rule_problems(data: Mapping[str, Any]) -> list[str]:
    """What the App Engine needs beyond the schema (its uploader would crash or misbehave)."""
    problems: list[str] = []
    if not isinstance(data.get("name_short"), str) or not data.get("name_short"):
        problems.append("name_short is missing (the App Engine's uploader reads it)")
    namespace = str(data.get("namespace", ""))
    if "-" in namespace:
        problems.append(
            f"namespace {namespace!r} has a '-': the App Engine splits the image tar's name at the first '-'"
        )
    configuration = data.get("configuration") or {}
    for key in ("input_folder", "output_folder"):
        if not isinstance(configuration.get(key), str):
            problems.append(f"configuration.{key} is missing (the App Engine's uploader reads it)")
    inputs = data.get("inputs") or {}
    outputs = data.get("outputs") or {}
    for kind, params in (("inputs", inputs), ("outputs", outputs)):
        for name, item in params.items():
            if not isinstance(item, Mapping):
                continue
            if not isinstance(item.get("display_name"), str):
                problems.append(f"{kind}/{name}: display_name is missing (the App Engine's uploader reads it)")
            problems += [f"{kind}/{name}: {p}" for p in _type_problems(item.get("type"), top=True)]
            if kind == "inputs":
                problems += [f"inputs/{name}: {p}" for p in _default_problems(item)]
            dependencies = item.get("dependencies")
            if isinstance(dependencies, Mapping):
                problems += [f"{kind}/{name}: {p}" for p in _dependency_problems(kind, dependencies, inputs, outputs)]
    return problems


def _type_problems(spec: Any, *, top: bool) -> list[str]:
    if not isinstance(spec, (str, Mapping)):
        return []
    kind = type_id(spec)
    if kind != "array" or not isinstance(spec, Mapping):
        return []
    problems = []
    if not top and ("min_size" not in spec or "max_size" not in spec):
        # Nested arrays are validated with both bounds unboxed: a missing one is a crash.
        problems.append("a nested array needs min_size and max_size")
    low, high = spec.get("min_size"), spec.get("max_size")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        problems.append(f"min_size {low} > max_size {high}")
    return problems + _type_problems(spec.get("subtype"), top=False)


def _default_problems(item: Mapping[str, Any]) -> list[str]:
    if "default" not in item:
        return []
    spec = item.get("type")
    kind = type_id(spec) if isinstance(spec, (str, Mapping)) else None
    default = item["default"]
    if kind not in SCALAR_TYPES:
        return [f"a default on a {kind} input (defaults are for scalars)"]
    problems = []
    if kind == "enumeration" and isinstance(spec, Mapping) and default not in (spec.get("values") or []):
        problems.append(f"default {default!r} is not among the values {spec.get('values')}")
    if kind in ("integer", "number") and isinstance(spec, Mapping) and isinstance(default, (int, float)):
        if not math.isfinite(default):
            problems.append(f"default {default!r} is not finite")
        for bound, ok in (("geq", lambda b: default >= b), ("leq", lambda b: default <= b)):
            if isinstance(spec.get(bound), (int, float)) and not ok(spec[bound]):
                problems.append(f"default {default!r} breaks {bound} {spec[bound]}")
        for bound, ok in (("gt", lambda b: default > b), ("lt", lambda b: default < b)):
            if isinstance(spec.get(bound), (int, float)) and not ok(spec[bound]):
                problems.append(f"default {default!r} breaks {bound} {spec[bound]}")
    return problems


def _dependency_problems(
    kind: str, dependencies: Mapping[str, Any], inputs: Mapping[str, Any], outputs: Mapping[str, Any]
) -> list[str]:
    problems = []
    derived = dependencies.get("derived_from")
    if kind == "outputs":
        if not isinstance(derived, str):
            problems.append("dependencies without derived_from (the App Engine's uploader reads it)")
        elif derived.removeprefix("inputs/") not in inputs or not derived.startswith("inputs/"):
            problems.append(f"derived_from {derived!r} names no input")
    for ref in dependencies.get("matching") or []:
        side, _, name = str(ref).partition("/")
        table = {"inputs": inputs, "outputs": outputs}.get(side)
        if table is None or name not in table:
            problems.append(f"matching {ref!r} names no input or output")
    return problems


def descriptor_problems(data: Mapping[str, Any]) -> list[str]:
    return schema_problems(data) + rule_problems(data)


def check_descriptor(data: Mapping[str, Any], *, what: str = "descriptor") -> None:
    """Raise :class:`DescriptorError` listing every problem of ``data``."""
    problems = descriptor_problems(data)
    if problems:
        raise DescriptorError(f"Fix {what}: " + "; ".join(problems))


__all__: Sequence[str] = (
    "AUTHORS",
    "NAMESPACE_PREFIX",
    "FileInput",
    "Output",
    "TaskDefinition",
    "check_descriptor",
    "descriptor_problems",
    "descriptor_yaml",
    "load_descriptor_text",
    "task_descriptor",
)
