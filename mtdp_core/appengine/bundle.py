"""The uploadable task bundle: a zip of ``descriptor.yml`` and the task image saved as a tar.

What the App Engine does with an upload (``TaskService.uploadTask``): it reads ``descriptor.yml``
(or ``.yaml``) and validates it; for any entry ending in ``.tar`` it derives the image name from
the entry's name, split at the first ``-``: ``org.mtdp.classify-0.1.0.tar`` ->
``org/mtdp/classify:0.1.0`` (the tag inside the tar is ignored), and pushes the tar to its
registry, which reads it as a ``docker save`` archive (``manifest.json``). So here:

1. **build** the image of the task: the Dockerfile's ``appengine_<task>`` target (the shared base
   image, ``ENTRYPOINT ["python", "-m", "mtdp_core.appengine", "<task>"]``), tagged
   ``org/mtdp/<task>:<version>``; Docker (BuildKit) adds provenance and SBOM attestations that
   turn the image into an index the App Engine cannot push: ``--provenance=false --sbom=false``;
2. **save** it as ``<namespace>-<version>.tar`` (a docker archive: ``podman save --format
   docker-archive``);
3. **zip** the generated descriptor and the tar (stored, not compressed: the layers already are);
4. **check** the zip as the App Engine will read it (:func:`bundle_problems`).

Without podman or docker, ``--image-tar`` bundles an archive saved on another machine.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtdp_core.appengine.errors import BundleError, ContainerEngineError
from mtdp_core.appengine.local import find_engine
from mtdp_core.appengine.spec import TaskDefinition, descriptor_problems, descriptor_yaml, load_descriptor_text

logger = logging.getLogger(__name__)

DESCRIPTOR_NAMES = ("descriptor.yml", "descriptor.yaml")


def dockerfile_target(task: TaskDefinition) -> str:
    """The Dockerfile target of a task's image."""
    return f"appengine_{task.name}"


def _has_buildx(engine: str) -> bool:
    if os.path.basename(engine) != "docker":
        return False
    probe = subprocess.run([engine, "buildx", "version"], capture_output=True, text=True, check=False, timeout=60)
    return probe.returncode == 0


def build_command(
    task: TaskDefinition, engine: str, context: Path, *, build_args: Sequence[str] = (), buildx: bool = False
) -> list[str]:
    command = [engine, "build", "--target", dockerfile_target(task), "-t", task.image_name]
    if buildx:
        # Attestations make an image index the App Engine's registry push cannot take.
        command += ["--provenance=false", "--sbom=false"]
    for item in build_args:
        command += ["--build-arg", item]
    return [*command, "-f", str(context / "Dockerfile"), str(context)]


def save_command(task: TaskDefinition, engine: str, tar_path: Path) -> list[str]:
    command = [engine, "save", "-o", str(tar_path)]
    if os.path.basename(engine) == "podman":
        command += ["--format", "docker-archive"]
    return [*command, task.image_name]


def _run(command: list[str]) -> None:
    logger.info("running: %s", " ".join(command))
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as exc:
        raise ContainerEngineError(
            f"{' '.join(command[:3])} ... failed (exit status {exc.returncode}): see above."
        ) from None


def build_image(
    task: TaskDefinition, engine: str, context: Path, tar_path: Path, *, build_args: Sequence[str] = ()
) -> Path:
    """Build the task's image and save it to ``tar_path`` (a docker archive)."""
    dockerfile = context / "Dockerfile"
    if not dockerfile.is_file():
        raise BundleError(f"Run the bundle from a checkout of mtdp: {dockerfile} does not exist.")
    if f" AS {dockerfile_target(task)}" not in dockerfile.read_text(encoding="utf-8"):
        raise BundleError(
            f"Add the target {dockerfile_target(task)} to {dockerfile} (FROM base AS {dockerfile_target(task)}, "
            f"ENTRYPOINT {json.dumps(task.entrypoint)}): the task image is built from it."
        )
    _run(build_command(task, engine, context, build_args=build_args, buildx=_has_buildx(engine)))
    _run(save_command(task, engine, tar_path))
    return tar_path


def default_context() -> Path:
    """The build context: the checkout this package is in, else the working directory."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "Dockerfile").is_file() else Path.cwd()


def write_bundle(task: TaskDefinition, image_tar: Path, zip_path: Path) -> Path:
    """The zip: ``descriptor.yml`` and the image tar under the name the App Engine parses."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr("descriptor.yml", descriptor_yaml(task), compress_type=zipfile.ZIP_DEFLATED)
        archive.write(image_tar, arcname=task.tar_name)
    os.replace(tmp, zip_path)
    return zip_path


@dataclass
class BundleReport:
    """What :func:`bundle_problems` found: the descriptor, the image the App Engine will
    register, the image's entrypoint, and every problem."""

    descriptor: dict[str, Any] | None
    image_name: str | None
    entrypoint: list[str] | None
    problems: list[str]


def bundle_problems(zip_path: str | os.PathLike, task: TaskDefinition | None = None) -> BundleReport:
    """Read a bundle as the App Engine will, and list what would fail (empty: uploadable)."""
    problems: list[str] = []
    descriptor = image_name = entrypoint = None
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        return BundleReport(None, None, None, [f"not a zip file ({exc})"])
    with archive:
        names = archive.namelist()
        found = [n for n in names if n.lower() in DESCRIPTOR_NAMES]
        if len(found) != 1:
            problems.append(f"{len(found)} descriptor.yml at the root of the zip (one is needed)")
        else:
            try:
                descriptor = load_descriptor_text(archive.read(found[0]).decode("utf-8"))
                problems += descriptor_problems(descriptor)
            except Exception as exc:  # noqa: BLE001 - any failure to read it is the finding
                problems.append(f"descriptor.yml cannot be read ({exc})")
        tars = [n for n in names if n.endswith(".tar")]
        if len(tars) != 1:
            problems.append(f"{len(tars)} image tar files in the zip (one is needed)")
        else:
            tar_name = tars[0]
            if "/" in tar_name:
                problems.append(f"{tar_name}: put the tar at the root (the folder would become part of the image name)")
            stem = tar_name.removesuffix(".tar")
            if "-" not in stem:
                problems.append(f"{tar_name}: name it <namespace>-<version>.tar (the App Engine splits it at '-')")
            else:
                namespace, version = stem.split("-", 1)
                image_name = f"{namespace.replace('.', '/')}:{version}"
                if descriptor and (namespace, version) != (descriptor.get("namespace"), descriptor.get("version")):
                    problems.append(
                        f"{tar_name} does not match the descriptor's namespace-version "
                        f"{descriptor.get('namespace')}-{descriptor.get('version')}"
                    )
            with archive.open(tar_name) as handle:
                entrypoint, tar_problems = _image_config(handle)
            problems += [f"{tar_name}: {p}" for p in tar_problems]
            if task is not None and entrypoint is not None and entrypoint != task.entrypoint:
                problems.append(f"the image's entrypoint is {entrypoint}, not {task.entrypoint}")
    return BundleReport(descriptor, image_name, entrypoint, problems)


def _image_config(handle: Any) -> tuple[list[str] | None, list[str]]:
    """The entrypoint of a ``docker save`` archive, and what is wrong with it."""
    try:
        with tarfile.open(fileobj=handle, mode="r|*") as tar:  # streamed: the archive can be gigabytes
            files: dict[str, bytes] = {}
            names: set[str] = set()
            kept = 0
            for member in tar:
                names.add(member.name)
                # manifest.json and the image config (<id>.json, or blobs/sha256/<id> in newer
                # archives) are small: keep small files, in bounded memory.
                if member.isfile() and member.size < (1 << 20) and kept < (64 << 20):
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        files[member.name] = extracted.read()
                        kept += member.size
    except tarfile.TarError as exc:
        return None, [f"not a tar archive ({exc})"]
    if "manifest.json" not in files:
        return None, ["no manifest.json: save the image with `docker save` (podman: --format docker-archive)"]
    try:
        manifest = json.loads(files["manifest.json"])
        entry = manifest[0]
        config = json.loads(files[entry["Config"]])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return None, [f"manifest.json or the image config is unreadable ({exc})"]
    problems = []
    if len(manifest) != 1:
        problems.append(f"{len(manifest)} images in the archive (one is needed)")
    missing = [layer for layer in entry.get("Layers", []) if layer not in names]
    if missing:
        problems.append(f"layers missing from the archive: {missing[:3]}")
    entrypoint = (config.get("config") or {}).get("Entrypoint")
    if not entrypoint:
        problems.append("the image has no ENTRYPOINT (the App Engine runs the image with no command)")
    return entrypoint, problems


def bundle(
    task: TaskDefinition,
    *,
    output_dir: str | os.PathLike = "dist",
    engine: str | None = None,
    image_tar: str | os.PathLike | None = None,
    context: str | os.PathLike | None = None,
    build_args: Sequence[str] = (),
) -> tuple[Path, BundleReport]:
    """Build (or take ``image_tar``), zip and check the bundle of ``task``; return its path and report.

    Raises :class:`BundleError` when the check finds problems (the zip is kept for inspection).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = output_dir / f"{task.namespace}-{task.version}.zip"
    if image_tar is None:
        engine = find_engine(engine)
        root = Path(context) if context else default_context()
        tar_path = build_image(task, engine, root, output_dir / task.tar_name, build_args=build_args)
    else:
        tar_path = Path(image_tar)
        if not tar_path.is_file():
            raise BundleError(f"Give an existing image archive as --image-tar: {tar_path} does not exist.")
    write_bundle(task, tar_path, zip_path)
    if image_tar is None:
        tar_path.unlink(missing_ok=True)  # it is inside the zip now
    report = bundle_problems(zip_path, task)
    if report.problems:
        raise BundleError(f"Fix the bundle {zip_path}: " + "; ".join(report.problems))
    return zip_path, report


def describe_bundle(zip_path: Path, report: BundleReport) -> str:
    size = zip_path.stat().st_size
    name = (report.descriptor or {}).get("name")
    return (
        f"{zip_path} ({size / 2**20:.1f} MiB): task '{name}', image {report.image_name}, entrypoint "
        f"{' '.join(report.entrypoint or [])}. Upload it on Cytomine's Applications page (see docs/appengine.md)."
    )


__all__ = ["BundleReport", "build_image", "bundle", "bundle_problems", "write_bundle"]
