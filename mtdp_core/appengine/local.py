"""A local App Engine: provision ``/inputs`` as Cytomine does, run a task, check ``/outputs`` as the
App Engine does, and show the results in image coordinates.

``mtdp appengine run TASK --input NAME=VALUE ...`` (see ``cli``) is built on :func:`run_local`:

1. **provision** (:class:`Provisioner`): each ``--input NAME=VALUE`` (``VALUE`` as text, or
   ``@FILE``) becomes ``inputs/NAME`` as the App Engine writes it: scalars as text files (checked
   against the descriptor as the App Engine checks provisions), files copied, repeated names as an
   array folder with ``array.yml``. An image followed by ``--annotation NAME=GEOMETRY`` is cut like
   Cytomine cuts an annotation: the full-resolution PNG crop of the geometry's bounding box plus
   ``NAME.geojson`` (the geometry relative to the crop, y up); several geometries (a GeoJSON
   FeatureCollection) on an array input give one item each. Geometries are in image coordinates
   (pixels, origin top-left, as QuPath exports them);
2. **run** the entrypoint: in a Python subprocess (default), in this process (``inline``, for
   tests), or in the task's container (``podman``/``docker``: ``/inputs`` and ``/outputs``
   mounted, no network, the descriptor's CPUs and memory);
3. **check** ``outputs/`` with :func:`~mtdp_core.appengine.files.output_problems`: a non-zero
   exit, a missing output, a name with an extension or a malformed value is FAILED, as there;
4. **show**: scalar outputs and arrays as a table; geometry outputs shifted back by their crop
   offset and flipped to image coordinates (what Cytomine does before drawing them), written to
   ``results.geojson`` with the matching arrays as properties (QuPath reads ``classification``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from mtdp_core.appengine.errors import ContainerEngineError, TaskInputError
from mtdp_core.appengine.files import (
    output_problems,
    read_output,
    value_problems,
    write_array_size,
)
from mtdp_core.appengine.geometry import crop_offset, geometry_json, parse_geojson, shift
from mtdp_core.appengine.spec import SCALAR_TYPES, TaskDefinition, task_descriptor, type_id
from mtdp_core.cytomine.geometry import to_cytomine, to_image
from mtdp_core.errors import MtdpError

logger = logging.getLogger(__name__)

FINISHED, FAILED = "FINISHED", "FAILED"
ENGINES = ("python", "inline", "podman", "docker")
#: Largest annotation crop the local App Engine cuts (PIMS refuses outputs over 10,000 px).
MAX_CROP_SIDE = 10_000


@dataclass
class ImageSource:
    """Where an image input came from: the original file, its size, and the crop offset
    (Cytomine coordinates) when it is an annotation's crop (None: the whole image)."""

    path: Path
    width: int
    height: int
    offset: tuple[int, int] | None = None


@dataclass
class _Pending:
    kind: str
    values: list[Any] = field(default_factory=list)


class Provisioner:
    """Builds an input folder as the App Engine provisions it (see the module docstring)."""

    def __init__(self, task: TaskDefinition, folder: str | os.PathLike) -> None:
        self.task = task
        self.descriptor = task_descriptor(task)
        self.inputs: Mapping[str, Any] = self.descriptor["inputs"]
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.items: dict[str, list[Any]] = {}
        #: name -> sources of its image items (index order), for showing results.
        self.sources: dict[str, list[ImageSource]] = {}

    def _spec(self, name: str) -> Any:
        if name not in self.inputs:
            raise TaskInputError(
                f"Task {self.task.name} has no input {name!r}: its inputs are {', '.join(self.inputs)}."
            )
        return self.inputs[name]["type"]

    def add(self, name: str, value: str) -> None:
        """``--input name=value``: a value (text or ``@file``); repeated for an array."""
        spec = self._spec(name)
        is_array = type_id(spec) == "array"
        if name in self.items and not is_array:
            raise TaskInputError(f"Give {name} once: it is not an array input.")
        self.items.setdefault(name, []).append(("value", value))

    def annotate(self, name: str, geometry: str) -> None:
        """``--annotation name=GEOMETRY``: the last image given to ``name`` is cut as annotations."""
        spec = self._spec(name)
        leaf = type_id(spec["subtype"]) if type_id(spec) == "array" else type_id(spec)
        if leaf != "image":
            raise TaskInputError(f"Give --annotation for an image input: {name} is a {leaf} input.")
        if not self.items.get(name) or self.items[name][-1][0] != "value":
            raise TaskInputError(f"Give --input {name}=@IMAGE before --annotation {name}=...: which image is it on?")
        kind, source = self.items[name].pop()
        self.items[name].append(("annotation", (source, geometry)))

    def finish(self) -> dict[str, list[ImageSource]]:
        """Write every input (values checked as the App Engine checks provisions); then check that
        the required ones are there."""
        for name, entries in self.items.items():
            spec = self._spec(name)
            if type_id(spec) == "array":
                folder = self.folder / name
                folder.mkdir(parents=True, exist_ok=True)
                index = 0
                for entry in entries:
                    for written in self._write(folder, name, spec["subtype"], entry, first_index=index):
                        index = written + 1
                write_array_size(folder, index)
                problems = _array_size_problems(spec, index, name)
                if problems:
                    raise TaskInputError("; ".join(problems))
            else:
                list(self._write(self.folder, name, spec, entries[0], first_index=None))
        missing = [n for n, item in self.inputs.items() if not item.get("optional", False) and n not in self.items]
        if missing:
            raise TaskInputError(
                f"Give the required inputs of {self.task.name}: {', '.join(missing)} (--input NAME=VALUE)."
            )
        return self.sources

    def _write(self, folder: Path, name: str, spec: Any, entry: tuple[str, Any], first_index: int | None):
        """Write one entry; yields the array indices it used (one, or one per annotation)."""
        kind, value = entry
        leaf = type_id(spec)
        item_name = (lambda i: str(i)) if first_index is not None else (lambda _i: name)
        label = name if first_index is None else f"{name}[{first_index}]"
        if kind == "annotation":
            source, geometry_text = value
            path = _file_argument(source, label)
            geometries = _parse_geometries(geometry_text, label)
            if first_index is None and len(geometries) != 1:
                raise TaskInputError(f"Give one geometry for {name}: got {len(geometries)} (it is not an array input).")
            for k, geometry in enumerate(geometries):
                index = None if first_index is None else first_index + k
                target = folder / item_name(index)
                self.sources.setdefault(name, []).append(cut_annotation(path, geometry, target))
                yield index if index is not None else 0
            return
        index = first_index
        target = folder / item_name(index)
        if leaf in ("file", "image"):
            path = _file_argument(value, label)
            shutil.copyfile(path, target)
            if leaf == "image":
                width, height = image_size(path)
                self.sources.setdefault(name, []).append(ImageSource(path, width, height))
        elif leaf == "geometry":
            text = _text_argument(value, label)
            target.write_text(geometry_json(_parse_geometries(text, label)[0]), encoding="utf-8")
        elif leaf in SCALAR_TYPES:
            target.write_text(_text_argument(value, label), encoding="utf-8")
            problems = value_problems(target, spec, label)
            if problems:
                raise TaskInputError(f"Fix the input {label}: " + "; ".join(problems))
        else:
            raise TaskInputError(f"The local App Engine cannot provision {label} of type {leaf}.")
        yield index if index is not None else 0


def _array_size_problems(spec: Mapping[str, Any], size: int, name: str) -> list[str]:
    low, high = spec.get("min_size"), spec.get("max_size")
    if isinstance(low, int) and size < low or isinstance(high, int) and size > high:
        return [f"Give {name} {low} to {high} items: got {size}."]
    return []


def _file_argument(value: str, label: str) -> Path:
    if not value.startswith("@"):
        raise TaskInputError(f"Give {label} as @FILE (a path after @): got {value[:60]!r}.")
    path = Path(value[1:]).expanduser()
    if not path.is_file():
        raise TaskInputError(f"Give an existing file for {label}: {path} does not exist.")
    return path


def _text_argument(value: str, label: str) -> str:
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        if not path.is_file():
            raise TaskInputError(f"Give an existing file for {label}: {path} does not exist.")
        return path.read_text(encoding="utf-8")
    return value


def _parse_geometries(text: str, label: str) -> list[BaseGeometry]:
    """Geometries from ``@file`` or inline text: GeoJSON (geometry, Feature, FeatureCollection)
    or WKT."""
    text = _text_argument(text, label).strip()
    if not text.startswith("{"):
        import shapely

        try:
            return [shapely.from_wkt(text)]
        except shapely.errors.ShapelyError as exc:
            raise TaskInputError(f"Give the geometry of {label} as GeoJSON or WKT: {exc}") from None
    data = json.loads(text)
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
        if not features:
            raise TaskInputError(f"Give at least one geometry for {label}: the FeatureCollection is empty.")
        return [parse_geojson(f, what=f"{label}, feature {i}") for i, f in enumerate(features)]
    return [parse_geojson(data, what=label)]


def _open_slide(path: Path) -> Any:
    """The file as a slide (``mtdp_core.slides``: whole slides and plain images)."""
    from mtdp_core.errors import SlideReadError
    from mtdp_core.slides import open_slide

    try:
        return open_slide(path)
    except SlideReadError as exc:
        raise TaskInputError(f"Give an image or a whole slide: {exc}") from None


def image_size(path: Path) -> tuple[int, int]:
    """Level-0 width and height of an image or a whole slide."""
    with _open_slide(path) as slide:
        return tuple(slide.dimensions)  # type: ignore[return-value]


def _read_box(path: Path, box: tuple[int, int, int, int]) -> Any:
    """Level-0 pixels of ``box`` (left, top, right, bottom) of an image or a whole slide."""
    left, top, right, bottom = box
    with _open_slide(path) as slide:
        return slide.read_region((left, top, right - left, bottom - top), (right - left, bottom - top))


def cut_annotation(path: Path, geometry: BaseGeometry, target: Path) -> ImageSource:
    """Write ``target`` (the PNG crop of ``geometry``'s bounding box at full resolution) and
    ``target.geojson`` (the geometry relative to the crop, Cytomine coordinates), as Cytomine
    provisions an annotation; ``geometry`` is in image coordinates."""
    width, height = image_size(path)
    cytomine = to_cytomine(geometry, height)
    minx, miny, maxx, maxy = cytomine.bounds
    ox, oy = crop_offset(cytomine)
    right, top_edge = max(math.ceil(maxx), ox + 1), max(math.ceil(maxy), oy + 1)
    box = (ox, height - top_edge, right, height - oy)  # left, top, right, bottom in image pixels
    if min(box) < 0 or box[2] > width or box[3] > height:
        raise TaskInputError(
            f"Give an annotation inside the image ({width} x {height} px): its box {box} is outside "
            "(geometries are in image coordinates: pixels, origin at the top-left corner)."
        )
    if max(box[2] - box[0], box[3] - box[1]) > MAX_CROP_SIDE:
        raise TaskInputError(f"Give an annotation of at most {MAX_CROP_SIDE} px a side: its box is {box}.")
    _read_box(path, box).save(target, format="PNG")
    Path(f"{target}.geojson").write_text(geometry_json(shift(cytomine, -ox, -oy)), encoding="utf-8")
    return ImageSource(path, width, height, (ox, oy))


# --------------------------------------------------------------------------- running


def find_engine(preferred: str | None = None) -> str:
    """A container engine that answers (``podman``, then ``docker``), or a clear error."""
    candidates = [preferred] if preferred else ["podman", "docker"]
    reasons = []
    for engine in candidates:
        if shutil.which(engine) is None:
            reasons.append(f"{engine} is not installed")
            continue
        try:
            probe = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{engine} does not answer ({exc})")
            continue
        if probe.returncode == 0:
            return engine
        last = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or ["no output"]
        reasons.append(f"{engine} is installed but does not work here ({last[0][:200]})")
    raise ContainerEngineError(
        "Install podman or start Docker to run tasks in containers (" + "; ".join(reasons) + "). Without an "
        "engine, run the task with the default --engine python."
    )


def container_command(
    task: TaskDefinition, engine: str, image: str, inputs: Path, outputs: Path, *, gpus: bool = False
) -> list[str]:
    """The ``run`` command: the App Engine's mounts, no network (``internet: false``), its resources."""
    resources = dict(task.resources)
    command = [engine, "run", "--rm", "--network", "none"]
    command += ["-v", f"{inputs.resolve()}:/inputs:Z", "-v", f"{outputs.resolve()}:/outputs:Z"]
    if resources.get("cpus"):
        command += ["--cpus", str(resources["cpus"])]
    if resources.get("ram"):
        command += ["--memory", str(resources["ram"]).replace("Gi", "g").replace("Mi", "m")]
    if gpus:
        command += ["--device", "nvidia.com/gpu=all"] if engine == "podman" else ["--gpus", "all"]
    return [*command, image]


@dataclass
class RunResult:
    """A local run: its state (FINISHED/FAILED), why it failed, its folder and outputs."""

    task: str
    state: str
    reason: str
    folder: Path
    outputs: dict[str, Any] = field(default_factory=dict)
    geojson: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == FINISHED


def default_run_folder(task: str) -> Path:
    return Path.cwd() / "mtdp-out" / "appengine" / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_local(
    task: TaskDefinition,
    entries: Sequence[tuple[str, str, str]],
    *,
    folder: str | os.PathLike | None = None,
    engine: str = "python",
    image: str | None = None,
    gpus: bool = False,
) -> RunResult:
    """Provision ``entries`` (``("input"|"annotation", name, value)``, in order), run ``task`` with
    ``engine``, check and read its outputs. Input mistakes raise :class:`TaskInputError` (the App
    Engine refuses them before the run); everything after is in the result."""
    if engine not in ENGINES:
        raise TaskInputError(f"Use an engine among {', '.join(ENGINES)}: got {engine!r}.")
    run_folder = Path(folder) if folder else default_run_folder(task.name)
    inputs, outputs = run_folder / "inputs", run_folder / "outputs"
    for path in (inputs, outputs):
        if path.exists():
            shutil.rmtree(path)
    provisioner = Provisioner(task, inputs)
    for kind, name, value in entries:
        (provisioner.annotate if kind == "annotation" else provisioner.add)(name, value)
    sources = provisioner.finish()
    outputs.mkdir(parents=True)
    started = time.monotonic()
    reason = _execute(task, engine, image, inputs, outputs, run_folder, gpus)
    seconds = time.monotonic() - started
    descriptor = provisioner.descriptor
    if not reason:
        problems = output_problems(descriptor, outputs)
        reason = "; ".join(problems)
    result = RunResult(task.name, FAILED if reason else FINISHED, reason, run_folder, seconds=seconds)
    if result.ok:
        result.outputs = {name: read_output(descriptor, outputs, name) for name in descriptor["outputs"]}
        result.geojson = write_results_geojson(descriptor, result.outputs, sources, run_folder / "results.geojson")
    (run_folder / "run.json").write_text(json.dumps(_run_record(result), indent=2) + "\n", encoding="utf-8")
    return result


def _execute(
    task: TaskDefinition, engine: str, image: str | None, inputs: Path, outputs: Path, folder: Path, gpus: bool
) -> str:
    """Run the entrypoint; '' on exit status 0, else why it failed (status and last error)."""
    if engine == "inline":
        from mtdp_core.appengine.runner import run_task

        try:
            run_task(task, inputs, outputs)
            return ""
        except MtdpError as exc:
            return f"exit status 1: {exc}"
    if engine == "python":
        command = [sys.executable, "-m", "mtdp_core.appengine", task.name, "--inputs", str(inputs)]
        command += ["--outputs", str(outputs)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")])),
        }
    else:
        find_engine(engine)
        for path in (inputs, outputs):  # the App Engine's init container makes them writable by the task
            for sub in [path, *path.rglob("*")]:
                sub.chmod(0o777 if sub.is_dir() else 0o666)
        command = container_command(task, engine, image or task.image_name, inputs, outputs, gpus=gpus)
        env = dict(os.environ)
    logger.info("running: %s", " ".join(command))
    log_path = folder / "task.log"
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert process.stdout is not None
        for line in process.stdout:
            sys.stderr.write(line)
            log.write(line)
        status = process.wait()
    if status == 0:
        return ""
    lines = log_path.read_text(encoding="utf-8").strip().splitlines()
    failed = [line.split("FAILED:", 1)[1].strip() for line in lines if "FAILED:" in line]
    detail = failed[-1] if failed else (lines[-1] if lines else "no output")
    return f"exit status {status}: {detail}"


def _package_root() -> str:
    """The folder that holds ``mtdp_core`` (so a subprocess imports this very copy)."""
    return str(Path(__file__).resolve().parents[2])


# --------------------------------------------------------------------------- showing results


def write_results_geojson(
    descriptor: Mapping[str, Any], outputs: Mapping[str, Any], sources: Mapping[str, list[ImageSource]], path: Path
) -> Path | None:
    """Geometry outputs in image coordinates (as Cytomine would draw them on the image), as a
    FeatureCollection; the arrays that ``matching`` names become each feature's properties."""
    features = []
    for name, item in descriptor["outputs"].items():
        spec = item["type"]
        leaf = type_id(spec["subtype"]) if type_id(spec) == "array" else type_id(spec)
        if leaf != "geometry":
            continue
        dependencies = item.get("dependencies") or {}
        origin = str(dependencies.get("derived_from", "")).removeprefix("inputs/")
        source_list = sources.get(origin) or next(iter(sources.values()), [])
        if not source_list:
            logger.warning("cannot place %s on an image: no image input", name)
            continue
        source = source_list[0]
        values = outputs[name] if type_id(spec) == "array" else [outputs[name]]
        matched = [str(m).removeprefix("outputs/") for m in dependencies.get("matching") or []]
        for i, geometry in enumerate(values):
            if source.offset is not None:
                geometry = shift(geometry, *source.offset)
            properties: dict[str, Any] = {"output": name, "index": i}
            for other in matched:
                value = outputs[other][i]
                properties[other] = value
                if isinstance(value, str) and "classification" not in properties:
                    properties["classification"] = {"name": value}
            features.append(
                {"type": "Feature", "geometry": mapping(to_image(geometry, source.height)), "properties": properties}
            )
    if not features:
        return None
    collection = {"type": "FeatureCollection", "features": features}
    path.write_text(json.dumps(collection, indent=1) + "\n", encoding="utf-8")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, BaseGeometry):
        return mapping(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _run_record(result: RunResult) -> dict[str, Any]:
    return {
        "task": result.task,
        "state": result.state,
        "reason": result.reason,
        "seconds": round(result.seconds, 1),
        "outputs": {k: _plain(v) for k, v in result.outputs.items()},
        "results_geojson": str(result.geojson) if result.geojson else None,
    }


def format_result(result: RunResult, descriptor: Mapping[str, Any]) -> str:
    """A readable report of a run (what the web UI's run table shows, and more)."""
    lines = [f"{result.task}: {result.state} in {result.seconds:.0f} s ({_shown(result.folder)})"]
    if not result.ok:
        lines.append(f"  reason: {result.reason}")
        return "\n".join(lines)
    outputs = descriptor["outputs"]
    shown: set[str] = set()
    for name, item in outputs.items():
        if name in shown:
            continue
        value = result.outputs[name]
        kind = type_id(item["type"])
        if kind == "array":
            group = [name] + [
                str(m).removeprefix("outputs/") for m in (item.get("dependencies") or {}).get("matching") or []
            ]
            shown.update(group)
            lines.append(f"  {' / '.join(group)}: {len(value)} item(s)")
            for i in range(min(len(value), 10)):
                cells = [_short(result.outputs[g][i]) for g in group]
                lines.append(f"    {i:>3}  " + "  ".join(cells))
            if len(value) > 10:
                lines.append(f"    ... ({len(value) - 10} more in {_shown(result.folder / 'run.json')})")
        else:
            shown.add(name)
            lines.append(f"  {name}: {_short(value)}")
    if result.geojson:
        lines.append(f"  geometries in image coordinates (top-left origin): {_shown(result.geojson)}")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (shorter to read)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _short(value: Any) -> str:
    if isinstance(value, BaseGeometry):
        minx, miny, maxx, maxy = value.bounds
        return f"{value.geom_type} [{minx:.0f}, {miny:.0f}, {maxx:.0f}, {maxy:.0f}] (Cytomine coordinates)"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Path):
        return _shown(value)
    return str(value)
