"""The slide-classify app: the model of a training job maps whole slides, and the map goes back to
Cytomine as annotations.

Stages: download the model of the training job (``cytomine_id_job``, as svm-predict does) and
check it against the asked backbone -> the resolution of the tiles (``resolution``, else the
model's) -> the images (selected, or those of the ROI annotations) and their regions -> for each
image: open it (blocks at the zoom the model reads, or the downloaded file: ``pixels``), find the
tissue on a thumbnail, lay the grid of tiles of the model's input size (inside the ROIs), fetch
the pixels under the tiles, classify them (``slide_maps``, the steps the App Engine's classify
shares) -> each class's tiles merged into polygons (regions under ``min_area`` dropped), or the
tiles themselves (``map_as``) -> pushed as annotations with the predicted term and the mean
probability of their tiles as rate (Cytomine's bottom-left coordinates; idempotent: a re-run
creates nothing new) -> attached: each image's GeoJSON (tiles and merged classes, for QuPath),
its overlay picture, and ``maps.csv``.

Every image is mapped before anything is pushed: an image that cannot be (unreadable, no
tissue, no resolution, an ROI outside it) fails the job and nothing is pushed.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

from mtdp_core.cytomine.annotations import AnnotationFilters, AnnotationRecord, list_annotations
from mtdp_core.cytomine.apps import common, slide_maps
from mtdp_core.cytomine.errors import CytomineRequestError, NoAnnotationsError, ParameterError
from mtdp_core.cytomine.geometry import to_cytomine, to_image
from mtdp_core.cytomine.job import CytomineJobRun, Job
from mtdp_core.cytomine.push import Prediction
from mtdp_core.cytomine.slides import CytomineSlide, RemoteImage, open_remote_slide
from mtdp_core.errors import MissingResolutionError, SlideReadError

logger = logging.getLogger(__name__)

PIXEL_SOURCES = ("auto", "windows", "download")
#: ``auto`` reads blocks when the model reads at this zoom or coarser (4 x 4 times fewer pixels
#: than the scan: the blocks under the tissue weigh less than the file; measured in docs/slides.md).
WINDOWS_FROM_ZOOM = 2


@dataclass
class Target:
    """One image to map: its description (Cytomine) or file (local), and its regions of interest
    in image coordinates (top-left origin), none meaning the whole tissue."""

    key: str
    image: RemoteImage | None = None
    path: Path | None = None
    regions: list[BaseGeometry] | None = None


@dataclass
class ImageMap:
    """The map of one image: the classification, its pieces (``slides.outputs.MapPiece``: merged
    regions or tiles, image coordinates), and the files written."""

    target: Target
    result: Any  # mtdp_core.slides.classify.SlideClassification
    pieces: list[Any]
    files: list[Path]


# --------------------------------------------------------------------------- targets


def cytomine_targets(job: CytomineJobRun, args: argparse.Namespace) -> list[Target]:
    """The selected images (all of the project when none), or those of the ROI annotations,
    with their ROIs in image coordinates."""
    assert job.session is not None
    listed = {int(i["id"]): i for i in job.session.get_collection(f"project/{job.project_id}/imageinstance.json")}
    selected = list(args.cytomine_id_images or ()) or sorted(listed)
    unknown = [i for i in selected if i not in listed]
    if unknown:
        raise ParameterError(f"Select images of project {job.project_id} in cytomine_id_images: {unknown} are not.")
    rois = roi_annotations(job, args, selected)
    if rois is not None:
        selected = [i for i in selected if i in {r.image for r in rois}]
    targets = []
    for image_id in selected:
        image = RemoteImage.from_json(listed[image_id])
        regions = None
        if rois is not None:
            regions = [to_image(shapely.from_wkt(r.location), image.height) for r in rois if r.image == image_id]
        targets.append(Target(f"{image.id}-{_safe(Path(image.name).stem)}", image=image, regions=regions))
    if not targets:
        raise NoAnnotationsError(f"Add images to project {job.project_id}: it has none to map.")
    return targets


def roi_annotations(job: CytomineJobRun, args: argparse.Namespace, images: list[int]) -> list[AnnotationRecord] | None:
    """The regions of interest (None: map the whole tissue of each image)."""
    assert job.session is not None
    if not args.cytomine_id_roi_terms and not args.cytomine_id_roi_annotations:
        return None
    found: dict[int, AnnotationRecord] = {}
    if args.cytomine_id_roi_terms:
        filters = AnnotationFilters(job.project_id, tuple(images), terms=tuple(args.cytomine_id_roi_terms))
        found.update((r.id, r) for r in list_annotations(job.session, filters))
    for annotation_id in args.cytomine_id_roi_annotations or ():
        try:
            record = AnnotationRecord.from_json(job.session.get_json(f"annotation/{annotation_id}.json"))
        except CytomineRequestError as exc:
            raise ParameterError(
                f"Select existing annotations in cytomine_id_roi_annotations: {annotation_id} cannot be read ({exc})."
            ) from None
        if record.project != job.project_id:
            raise ParameterError(
                f"Select annotations of project {job.project_id} in cytomine_id_roi_annotations: "
                f"{annotation_id} is in project {record.project}."
            )
        found[record.id] = record
    rois = [r for r in found.values() if r.image in images]
    if not rois:
        raise NoAnnotationsError(
            "Draw the regions to map, or leave the ROI inputs empty to map the whole tissue: no annotation matches "
            f"cytomine_id_roi_terms {list(args.cytomine_id_roi_terms or ())} / cytomine_id_roi_annotations "
            f"{list(args.cytomine_id_roi_annotations or ())} on the selected images."
        )
    return rois


def local_targets(job: Job) -> list[Target]:
    from mtdp_core.slides.reader import SLIDE_EXTENSIONS

    folder = Path(job.flags.infolder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SLIDE_EXTENSIONS and p.is_file())
    if not files:
        raise ParameterError(f"Put slides in --infolder: {folder} has none (.svs, .ndpi, .mrxs, .tif...).")
    return [Target(p.stem, path=p) for p in files]


# --------------------------------------------------------------------------- one image


@dataclass
class SlideMapper:
    """What every image of a run is mapped with: the job, its parameters, the model, where its
    tiles are read (a ``mtdp_core.slides.Resolution``), the device."""

    job: Job
    args: argparse.Namespace
    model: Any
    resolution: Any
    device: str

    def open(self, target: Target) -> Any:
        """The slide of ``target``: a local file, the downloaded file, or blocks (``pixels``)."""
        from mtdp_core.slides.reader import open_slide

        job, args = self.job, self.args
        if target.path is not None:
            return open_slide(target.path, mpp=args.slide_mpp)
        assert isinstance(job, CytomineJobRun) and job.session is not None and target.image is not None
        image = target.image
        folder = common.cache_root(job) / "slides"
        remote = open_remote_slide(job.session, image, folder, mpp=args.slide_mpp)
        mode = args.pixels
        if mode == "auto":
            mode = "windows" if self.zoom(remote) >= WINDOWS_FROM_ZOOM else "download"
        if mode == "download":
            try:
                slide = download_slide(job, image, folder, args.slide_mpp or image.mpp)
                remote.close()
                return slide
            except (CytomineRequestError, SlideReadError) as exc:
                if args.pixels == "download":
                    raise ParameterError(
                        f"Set pixels to windows (or auto): image {image.id} cannot be downloaded: {exc}"
                    ) from None
                logger.info("image %d: reading blocks, the file cannot be used (%s)", image.id, exc)
        return remote

    def zoom(self, slide: Any) -> int:
        """The image server's zoom the tiles are read from (0: the scan's resolution, or unknown)."""
        try:
            downsample = slide.downsample_for(self.resolution)
        except MissingResolutionError:
            return 0
        return max(0, int(math.floor(math.log2(downsample * 1.01))))

    def map(self, target: Target, span: tuple[int, int], note: str = "") -> ImageMap:
        """Tissue, tiles, pixels, classes and pieces of one image (see the module docstring);
        ``note`` (how far the job got) goes into error messages, after its name."""
        from mtdp_core.slides.outputs import map_pieces

        start, end = span
        self.job.progress(start, f"{target.key}: finding the tissue")
        slide = self.open(target)

        def prepare(grid: Any) -> None:  # a remote slide's pixels under the tiles, fetched once
            if isinstance(slide, CytomineSlide):
                stage = self.job.stage(f"{target.key}: downloading the tiles' pixels", start, (start + end) // 2)
                level = slide.best_level(grid.downsample)
                slide.prefetch(level, grid.boxes, threads=self.args.n_download_threads, progress=stage.update)
            self.job.progress((start + end) // 2, f"{target.key}: classifying {len(grid)} tiles")

        try:
            result = slide_maps.classify_slide_tiles(
                self.model,
                slide,
                self.args,
                self.device,
                self.resolution,
                name=f"image {target.key}",
                regions=target.regions,
                note=note,
                prepare=prepare,
            )
            min_area = result.pixel_area(self.args.min_area)  # µm² -> level-0 pixels²
            pieces = map_pieces(result, tiles=self.args.map_as == "tiles", min_area=min_area)
            return ImageMap(target, result, pieces, write_outputs(self.job, target, result, slide, min_area))
        finally:
            slide.close()


def download_slide(job: CytomineJobRun, image: RemoteImage, folder: Path, mpp: float | None) -> Any:
    """The image's file, downloaded once into the cache (``GET /api/imageinstance/{id}/download``)."""
    from mtdp_core.slides.reader import open_slide

    assert job.session is not None
    path = folder / "files" / re.sub(r"[^\w]", "", job.session.server_url)[-40:] / str(image.id) / _safe(image.name)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        job.session.download(f"imageinstance/{image.id}/download", tmp)
        tmp.replace(path)
    return open_slide(path, mpp=mpp)


def write_outputs(job: Job, target: Target, result: Any, slide: Any, min_area: float) -> list[Path]:
    from mtdp_core.slides.outputs import overlay, write_geojson

    geojson = write_geojson(result, job.output_path(f"{target.key}.geojson"), min_area=min_area)
    picture = job.output_path(f"{target.key}-overlay.png")
    overlay(result, slide).save(picture)
    return [geojson, picture]


# --------------------------------------------------------------------------- the app


def run(job: Job, args: argparse.Namespace) -> str:
    from mtdp_core.slides.classify import class_shares

    device = common.check_device(args)
    job.stage("Loading the model", 0, 3)
    model = common.load_trained_model(job, args)
    origin = f"the model of job {args.cytomine_id_job}" if args.cytomine_id_job else f"the model {args.model}"
    resolution = slide_maps.tile_resolution(model, args, origin)
    job.stage("Listing the images and regions", 3, 5)
    targets = cytomine_targets(job, args) if isinstance(job, CytomineJobRun) else local_targets(job)
    mapper = SlideMapper(job, args, model, resolution, device)
    maps = []
    for i, target in enumerate(targets):
        span = (5 + 80 * i // len(targets), 5 + 80 * (i + 1) // len(targets))
        note = f" ({i} of {len(targets)} images mapped, nothing pushed)"
        maps.append(mapper.map(target, span, note))
    names = [c.name for c in model.classes]
    pushed, comment_push = {}, "not pushed"
    if isinstance(job, CytomineJobRun) and job.flags.do_upload_annotations:
        pushed, comment_push = push_maps(job, args, model, maps)
    elif isinstance(job, CytomineJobRun):
        comment_push = "not pushed (--no_annotations_upload)"
    job.progress(97, "Saving the maps")
    rows = []
    for m in maps:
        counts = m.result.counts()
        mpp = m.result.slide_mpp
        for k, name in enumerate(names):
            pieces = [p for p in m.pieces if p.label == k]
            area = f"{sum(p.geometry.area for p in pieces) * mpp * mpp / 1e6:.4f}" if mpp else ""
            rows.append([m.target.key, name, counts[name], len(pieces), area, pushed.get((m.target.key, k), 0)])
        for path in m.files:
            job.attach(path)
    job.attach(
        common.write_rows(
            job.output_path("maps.csv"), ["image", "class", "tiles", "pieces", "area_mm2", "pushed"], rows
        )
    )
    n_tiles = sum(len(m.result.grid) for m in maps)
    totals = {n: sum(m.result.counts()[n] for m in maps) for n in names}
    classes = ",".join(f"{n}:{c}" for n, c in totals.items())
    job.set_properties(
        {
            "n_images": len(maps),
            "n_tiles": n_tiles,
            "resolution": str(resolution),
            "class_tiles": classes,
            "model_job": args.cytomine_id_job,
        }
    )
    return f"{len(maps)} images mapped, {n_tiles} tiles at {resolution} ({class_shares(totals)}): {comment_push}"


def push_maps(job: CytomineJobRun, args: argparse.Namespace, model: Any, maps: list[ImageMap]) -> tuple[dict, str]:
    """Push every piece as an algo annotation with its class's term (idempotent, see push.py)."""
    assert job.session is not None
    predictions, owner = [], {}
    for m in maps:
        assert m.target.image is not None
        for piece in m.pieces:
            location = to_cytomine(piece.geometry, m.target.image.height).wkt
            record = AnnotationRecord(-(len(predictions) + 1), m.target.image.id, job.project_id, 0, (), location, "")
            owner[record.id] = (m.target.key, piece.label)
            predictions.append(Prediction(record, model.classes[piece.label].id, piece.score))
    report = common.push_predictions(job, args, predictions, 85, 97, mode="annotation")
    pushed: dict[tuple[str, int], int] = {}
    for source in report.pushed:
        pushed[owner[source]] = pushed.get(owner[source], 0) + 1
    return pushed, report.summary()


def _safe(name: str) -> str:
    """A file name made of ``name`` (no folders, no spaces)."""
    stem = Path(name.replace("\\", "/")).name
    return re.sub(r"[^\w.-]+", "_", stem)[:80] or "image"
