"""The App Engine's file conventions, both ways: reading ``/inputs``, writing ``/outputs``, and
checking outputs as the App Engine does before it accepts a run.

Inputs (as the App Engine provisions them; see ``../shared/reference/cytomine_app_engine.md``):

- a scalar ``x`` is the text file ``/inputs/x`` (``true``/``false``, one number, UTF-8 text);
- an ``image`` is ``/inputs/x``: an annotation's full-resolution PNG crop with its geometry in
  ``/inputs/x.geojson`` (relative to the crop, y up), or a whole image as its original file (an
  ``.svs``, say), without extension;
- a ``file`` is ``/inputs/x`` as uploaded; a ``geometry`` is GeoJSON text;
- an array is the folder ``/inputs/x/`` with ``array.yml`` (``size: N``) and items ``0`` ..
  ``N-1`` (image items from annotations with their ``<i>.geojson``);
- an optional input the person left empty is absent (the web UI only pre-fills defaults).

Outputs: ``/outputs/<name>`` with no extension, one per declared output, arrays as folders with
``array.yml``; a missing output, an extra file (``model.npz`` for ``model``) or a malformed value
makes the App Engine mark the run FAILED (:func:`output_problems` lists what it would refuse).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shapely.geometry.base import BaseGeometry

from mtdp_core.appengine.errors import TaskInputError, TaskOutputError
from mtdp_core.appengine.geometry import SUPPORTED_TYPES, geometry_json, parse_geojson, read_geojson, valid
from mtdp_core.appengine.spec import FileInput, Output, TaskDefinition, type_id

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

ARRAY_FILE = "array.yml"
#: Largest text a scalar input may hold (a string input is a line of text, not a document).
MAX_SCALAR_BYTES = 1 << 20
#: Largest array the task reads (an App Engine array is a list someone picked in the web UI).
MAX_ARRAY_SIZE = 100_000


# --------------------------------------------------------------------------- arrays


def read_array_size(folder: Path, *, what: str) -> int:
    """``size`` of an array folder's ``array.yml``, checked against the items present."""
    import yaml

    meta = folder / ARRAY_FILE
    if not meta.is_file():
        raise TaskInputError(f"Give {what} as an array folder with {ARRAY_FILE}: {meta} is missing.")
    try:
        data = yaml.safe_load(meta.read_text(encoding="utf-8"))
        size = int(data["size"])
    except (yaml.YAMLError, OSError, UnicodeDecodeError, TypeError, KeyError, ValueError):
        raise TaskInputError(f"Fix {meta}: it should read 'size: N' (the number of items of {what}).") from None
    if not 0 <= size <= MAX_ARRAY_SIZE:
        raise TaskInputError(f"Give {what} with 0 to {MAX_ARRAY_SIZE} items: {ARRAY_FILE} says {size}.")
    missing = [str(i) for i in range(size) if not (folder / str(i)).exists()]
    if missing:
        raise TaskInputError(
            f"Give every item of {what}: {ARRAY_FILE} says {size} but {', '.join(missing[:5])} "
            f"{'is' if len(missing) == 1 else 'are'} missing from {folder}."
        )
    return size


def write_array_size(folder: Path, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARRAY_FILE).write_text(f"size: {int(size)}\n", encoding="utf-8")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """An image input: its file and, for an annotation, its geometry (Cytomine coordinates relative
    to the crop's bottom-left corner). ``label`` names it in messages (``image``, ``images[3]``)."""

    path: Path
    geometry: BaseGeometry | None
    label: str

    @property
    def is_annotation(self) -> bool:
        return self.geometry is not None


def read_scalar_text(path: Path, *, what: str) -> str:
    """A scalar input's text (one trailing newline dropped)."""
    if path.is_dir():
        raise TaskInputError(f"Give {what} as a value: {path} is a folder.")
    if path.stat().st_size > MAX_SCALAR_BYTES:
        raise TaskInputError(f"Give {what} as a short value: {path} holds {path.stat().st_size} bytes.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TaskInputError(f"Give {what} as UTF-8 text: {path} is not.") from None
    return text.removesuffix("\n")


class TaskInputs:
    """The inputs of one run, read from ``folder`` and checked against the task's declarations."""

    def __init__(self, task: TaskDefinition, folder: str | os.PathLike) -> None:
        self.task = task
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise TaskInputError(
                f"Give the input folder: {self.folder} does not exist (the App Engine mounts the inputs there)."
            )
        known = set(task.input_ids())
        for entry in sorted(self.folder.iterdir()):
            base = entry.name.removesuffix(".geojson")
            if base not in known:
                logger.warning("ignoring %s: %s declares no input %r", entry, task.name, base)
        for item in task.file_inputs:
            if not item.optional and not (self.folder / item.id).exists():
                raise TaskInputError(
                    f"Give the input '{item.display_name}' ({item.id}): {self.folder / item.id} is missing."
                )

    def _describe(self, item: FileInput) -> str:
        return f"the input '{item.display_name}' ({item.id})"

    def present(self, input_id: str) -> bool:
        return (self.folder / input_id).exists()

    def file(self, input_id: str) -> Path | None:
        item = self.task.file_input(input_id)
        path = self.folder / input_id
        if not path.exists():
            return None
        if not path.is_file():
            raise TaskInputError(f"Give {self._describe(item)} as a file: {path} is a folder.")
        return path

    def image(self, input_id: str) -> InputImage | None:
        path = self.file(input_id)
        if path is None:
            return None
        return _input_image(path, input_id)

    def array(self, input_id: str) -> list[Path] | None:
        item = self.task.file_input(input_id)
        folder = self.folder / input_id
        if not folder.exists():
            return None
        if not folder.is_dir():
            raise TaskInputError(f"Give {self._describe(item)} as an array: {folder} is a file, not a folder.")
        size = read_array_size(folder, what=self._describe(item))
        spec = item.type if isinstance(item.type, Mapping) else {}
        low, high = spec.get("min_size"), spec.get("max_size")
        if (isinstance(low, int) and size < low) or (isinstance(high, int) and size > high):
            raise TaskInputError(f"Give {self._describe(item)} with {low} to {high} items: it has {size}.")
        return [folder / str(i) for i in range(size)]

    def images(self, input_id: str) -> list[InputImage] | None:
        paths = self.array(input_id)
        if paths is None:
            return None
        return [_input_image(p, f"{input_id}[{i}]") for i, p in enumerate(paths)]

    def texts(self, input_id: str) -> list[str] | None:
        item = self.task.file_input(input_id)
        paths = self.array(input_id)
        if paths is None:
            return None
        return [read_scalar_text(p, what=f"{self._describe(item)}, item {i}") for i, p in enumerate(paths)]

    def parameter_argv(self) -> list[str]:
        """The parameters present, as the command line of the task's parser (``--id value``)."""
        argv = []
        for input_id in self.task.parameter_ids():
            path = self.folder / input_id
            if path.exists():
                # --id=value: a value that starts with '-' stays a value
                argv.append(f"--{input_id}={read_scalar_text(path, what=f'the input {input_id}')}")
        return argv


def _input_image(path: Path, label: str) -> InputImage:
    if not path.is_file():
        raise TaskInputError(f"Give {label} as an image file: {path} is not a file.")
    sidecar = path.with_name(path.name + ".geojson")
    geometry = read_geojson(sidecar, what=f"the geometry of {label} ({sidecar.name})") if sidecar.is_file() else None
    return InputImage(path, geometry, label)


# --------------------------------------------------------------------------- outputs


def format_scalar(kind: str, value: Any, *, what: str) -> str:
    """The text of a scalar output (what the App Engine parses back)."""
    if kind == "boolean":
        if not isinstance(value, bool):
            raise TaskOutputError(f"{what}: a boolean output needs True/False, not {value!r}.")
        return "true" if value else "false"
    if kind == "integer":
        if isinstance(value, bool) or int(value) != value:
            raise TaskOutputError(f"{what}: an integer output needs a whole number, not {value!r}.")
        return str(int(value))
    if kind == "number":
        number = float(value)
        if not math.isfinite(number):
            raise TaskOutputError(f"{what}: a number output needs a finite number, not {value!r}.")
        return repr(number)
    if kind == "geometry":
        if not isinstance(value, BaseGeometry):
            raise TaskOutputError(f"{what}: a geometry output needs a shapely geometry, not {type(value).__name__}.")
        geometry = valid(value)
        if geometry.geom_type not in SUPPORTED_TYPES or geometry.is_empty:
            raise TaskOutputError(
                f"{what}: the App Engine takes {', '.join(SUPPORTED_TYPES)}, not {geometry.geom_type}."
            )
        return geometry_json(geometry)
    if kind == "datetime":
        return value.isoformat() if isinstance(value, datetime) else str(value)
    return str(value)


class TaskOutputs:
    """Writes the declared outputs of one run into ``folder`` (no extensions, arrays as folders)."""

    def __init__(self, task: TaskDefinition, folder: str | os.PathLike) -> None:
        self.task = task
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list[str] = []

    def _declared(self, output_id: str) -> Output:
        try:
            return self.task.output(output_id)
        except KeyError:
            raise TaskOutputError(f"Task {self.task.name} declares no output {output_id!r}.") from None

    def _done(self, output_id: str) -> None:
        if output_id not in self.written:
            self.written.append(output_id)

    def scalar(self, output_id: str, value: Any) -> None:
        output = self._declared(output_id)
        kind = output.type_id
        if kind in ("array", "file", "image"):
            raise TaskOutputError(f"Output {output_id} is a {kind}, not a scalar.")
        (self.folder / output_id).write_text(format_scalar(kind, value, what=output_id), encoding="utf-8")
        self._done(output_id)

    def array(self, output_id: str, values: Sequence[Any]) -> None:
        output = self._declared(output_id)
        if output.type_id != "array":
            raise TaskOutputError(f"Output {output_id} is a {output.type_id}, not an array.")
        kind = type_id(output.type["subtype"])  # type: ignore[index]
        folder = self.folder / output_id
        if folder.exists():
            shutil.rmtree(folder)
        write_array_size(folder, len(values))
        for i, value in enumerate(values):
            (folder / str(i)).write_text(format_scalar(kind, value, what=f"{output_id}[{i}]"), encoding="utf-8")
        self._done(output_id)

    def file(self, output_id: str, source: str | os.PathLike) -> None:
        output = self._declared(output_id)
        if output.type_id not in ("file", "image"):
            raise TaskOutputError(f"Output {output_id} is a {output.type_id}, not a file.")
        shutil.copyfile(source, self.folder / output_id)
        self._done(output_id)

    def image(self, output_id: str, image: Image.Image) -> None:
        """An image output, written as PNG (its name has no extension)."""
        output = self._declared(output_id)
        if output.type_id != "image":
            raise TaskOutputError(f"Output {output_id} is a {output.type_id}, not an image.")
        image.save(self.folder / output_id, format="PNG")
        self._done(output_id)

    def missing(self) -> list[str]:
        return [o.id for o in self.task.outputs if o.id not in self.written]


# --------------------------------------------------------------------------- checking outputs


def output_problems(descriptor: Mapping[str, Any], folder: str | os.PathLike) -> list[str]:
    """What the App Engine would refuse in ``folder`` for a task with ``descriptor``: an entry that
    names no output (an extension, a report file), a missing output, a malformed value or array,
    arrays of different sizes where the descriptor says they match. Empty: the run is accepted."""
    folder = Path(folder)
    outputs: Mapping[str, Any] = descriptor.get("outputs") or {}
    if not folder.is_dir():
        return [f"the output folder {folder} does not exist"]
    problems = []
    for entry in sorted(folder.iterdir()):
        if entry.name not in outputs:
            stem = entry.name.split(".")[0]
            hint = f" (outputs have no extension: name it {stem!r})" if stem in outputs and stem != entry.name else ""
            problems.append(f"{entry.name}: no output has this name{hint}")
    sizes: dict[str, int] = {}
    for name, item in outputs.items():
        path = folder / name
        if not path.exists():
            problems.append(f"{name}: missing (every declared output must be written)")
            continue
        spec = item.get("type")
        if type_id(spec) == "array":
            found, size = _array_problems(path, spec, name)
            problems += found
            if size is not None:
                sizes[name] = size
        else:
            problems += value_problems(path, spec, name)
    for name, item in outputs.items():
        for ref in (item.get("dependencies") or {}).get("matching") or []:
            other = str(ref).removeprefix("outputs/")
            if name in sizes and other in sizes and sizes[name] != sizes[other]:
                problems.append(f"{name}: {sizes[name]} items but {other} has {sizes[other]} (they must match)")
    return problems


def _array_problems(folder: Path, spec: Mapping[str, Any], name: str) -> tuple[list[str], int | None]:
    if not folder.is_dir():
        return [f"{name}: an array output must be a folder with {ARRAY_FILE}"], None
    try:
        size = read_array_size(folder, what=name)
    except TaskInputError as exc:
        return [f"{name}: {exc}"], None
    problems = []
    expected = {ARRAY_FILE, *(str(i) for i in range(size))}
    extra = sorted(e.name for e in folder.iterdir() if e.name not in expected)
    if extra:
        problems.append(f"{name}: unexpected entries {extra[:5]} (items are named 0 to {size - 1})")
    low, high = spec.get("min_size"), spec.get("max_size")
    if isinstance(low, int) and size < low:
        problems.append(f"{name}: {size} items, fewer than min_size {low}")
    if isinstance(high, int) and size > high:
        problems.append(f"{name}: {size} items, more than max_size {high}")
    subtype = spec.get("subtype")
    for i in range(size):
        item = folder / str(i)
        if type_id(subtype) == "array":
            problems += _array_problems(item, subtype, f"{name}[{i}]")[0]
        else:
            problems += value_problems(item, subtype, f"{name}[{i}]")
        if len(problems) > 20:
            problems.append(f"{name}: more problems not listed")
            break
    return problems, size


def value_problems(path: Path, spec: Any, name: str) -> list[str]:
    kind = type_id(spec)
    options = spec if isinstance(spec, Mapping) else {}
    if not path.is_file():
        return [f"{name}: must be a file"]
    if kind in ("file", "image"):
        if kind == "image":
            return _image_problems(path, options, name)
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [f"{name}: not UTF-8 text"]
    value = text.strip()
    try:
        if kind == "integer":
            number: float = int(value)
            return _bound_problems(number, options, name)
        if kind == "number":
            number = float(value)
            if math.isnan(number) and not options.get("nan_allowed"):
                return [f"{name}: NaN is not allowed"]
            if math.isinf(number) and not options.get("infinity_allowed"):
                return [f"{name}: infinity is not allowed"]
            return _bound_problems(number, options, name)
    except ValueError:
        return [f"{name}: {value[:40]!r} is not a valid {kind}"]
    if kind == "boolean" and value not in ("true", "false"):
        return [f"{name}: {value[:40]!r} is not true or false"]
    if kind == "enumeration" and value not in (options.get("values") or []):
        return [f"{name}: {value[:40]!r} is not one of {options.get('values')}"]
    if kind == "string":
        length = len(text)
        if isinstance(options.get("max_length"), int) and length > options["max_length"]:
            return [f"{name}: {length} characters, more than max_length {options['max_length']}"]
        if isinstance(options.get("min_length"), int) and length < options["min_length"]:
            return [f"{name}: {length} characters, fewer than min_length {options['min_length']}"]
    if kind == "geometry":
        return _geometry_problems(text, name)
    if kind == "datetime":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return [f"{name}: {value[:40]!r} is not an ISO 8601 date and time"]
    return []


def _bound_problems(number: float, options: Mapping[str, Any], name: str) -> list[str]:
    checks = (
        ("geq", lambda b: number >= b),
        ("leq", lambda b: number <= b),
        ("gt", lambda b: number > b),
        ("lt", lambda b: number < b),
    )
    return [
        f"{name}: {number:g} breaks {bound} {options[bound]}"
        for bound, ok in checks
        if isinstance(options.get(bound), (int, float)) and not ok(options[bound])
    ]


def _geometry_problems(text: str, name: str) -> list[str]:
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return [f"{name}: not GeoJSON"]
    if not isinstance(data, dict) or data.get("type") not in SUPPORTED_TYPES:
        return [f"{name}: a geometry output is a bare GeoJSON geometry ({', '.join(SUPPORTED_TYPES)})"]
    if data.get("properties"):
        # The App Engine accepts properties only for its circles and rectangles (with subType).
        return [f"{name}: a geometry output has no properties"]
    try:
        geometry = parse_geojson(data, what=name)
    except TaskInputError as exc:
        return [f"{name}: {exc}"]
    if not geometry.is_valid:
        from shapely.validation import explain_validity

        return [f"{name}: invalid geometry ({explain_validity(geometry)})"]
    return []


#: Leading bytes of the formats an ``image`` output may declare (the App Engine's checkers).
_SIGNATURES = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "dicom": (),
    "wsidicom": (),
}


def _image_problems(path: Path, options: Mapping[str, Any], name: str) -> list[str]:
    formats = options.get("formats") or []
    if formats:
        head = path.read_bytes()[:132]
        ok = any(head.startswith(sig) for f in formats for sig in _SIGNATURES.get(str(f).lower(), ()))
        ok = ok or ("dicom" in formats and head[128:132] == b"DICM")
        if not ok:
            return [f"{name}: not a {'/'.join(formats)} file"]
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        return [] if not formats else [f"{name}: not an image"]
    problems = []
    if isinstance(options.get("max_width"), int) and width > options["max_width"]:
        problems.append(f"{name}: {width} px wide, more than max_width {options['max_width']}")
    if isinstance(options.get("max_height"), int) and height > options["max_height"]:
        problems.append(f"{name}: {height} px high, more than max_height {options['max_height']}")
    return problems


def check_outputs(descriptor: Mapping[str, Any], folder: str | os.PathLike) -> None:
    problems = output_problems(descriptor, folder)
    if problems:
        raise TaskOutputError("The outputs would be refused by the App Engine: " + "; ".join(problems))


# --------------------------------------------------------------------------- reading outputs back


def read_output(descriptor: Mapping[str, Any], folder: str | os.PathLike, name: str) -> Any:
    """An output's value (after :func:`output_problems` found none): text, number, bool, a shapely
    geometry, a path for files and images, a list for arrays."""
    spec = descriptor["outputs"][name]["type"]
    return _read_value(Path(folder) / name, spec)


def _read_value(path: Path, spec: Any) -> Any:
    kind = type_id(spec)
    if kind == "array":
        size = read_array_size(path, what=path.name)
        return [_read_value(path / str(i), spec["subtype"]) for i in range(size)]
    if kind in ("file", "image"):
        return path
    text = path.read_text(encoding="utf-8")
    if kind == "integer":
        return int(text.strip())
    if kind == "number":
        return float(text.strip())
    if kind == "boolean":
        return text.strip() == "true"
    if kind == "geometry":
        return parse_geojson(text, what=path.name)
    return text
