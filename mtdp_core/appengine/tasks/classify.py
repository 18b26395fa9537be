"""classify: an annotation (its crop) or a whole image + a model -> classes on the image.

The model is any mtdp model file: from ``train`` or ``finetune`` (App Engine), from the legacy
svm-train / finetune-predict apps (their job attachment ``mtdp-model.npz``), or from
``mtdp probe`` / ``mtdp finetune``. The image input is what the person picked in the viewer:

- **an annotation**: its full-resolution crop and ``image.geojson``. The crop is brought to what
  the model saw in training (the crop size or zoom the model records: legacy models were trained
  on crops scaled to 256 pixels; ``crop_max_size``/``crop_zoom`` override it) and classified as
  one region, the svm-predict app's step (features, the model's probabilities calibrated on its
  out-of-fold decisions). The output geometry is the annotation's own, with its class and score.
- **a whole image** (the original file, e.g. an ``.svs``): tiled over tissue at the resolution the
  model was trained at and classified tile by tile, the tiles merged per class into regions (or
  kept as tiles): the slide app's steps (``cytomine.apps.slide_maps``, ``mtdp_core.slides``).

Outputs: ``geometries`` (Cytomine draws them as an annotation layer of the run; there are no
terms in that world: each geometry's class is the same row of ``classes``, with its probability
in ``scores``, in the run's table), a one-line ``summary`` and an ``overlay`` picture.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.appengine.errors import TaskInputError
from mtdp_core.appengine.files import InputImage
from mtdp_core.appengine.geometry import valid
from mtdp_core.appengine.runner import TaskContext
from mtdp_core.appengine.spec import FileInput, Output, TaskDefinition
from mtdp_core.cytomine.geometry import to_cytomine, to_image
from mtdp_core.cytomine.inputs import (
    add_backbone_inputs,
    add_crop_inputs,
    add_engine_input,
    add_runtime_inputs,
    add_slide_inputs,
)
from mtdp_core.cytomine.params import new_parser

logger = logging.getLogger(__name__)

#: Longest side of the overlay picture.
OVERLAY_SIDE = 1024
#: The most geometries a run gives back (the descriptor's max_size of the geometries array).
MAX_GEOMETRIES = 1_000_000

IMAGE = FileInput(
    "image",
    "Image or annotation",
    "The annotation to classify (its crop is used), or a whole image to map: its tissue is tiled at the "
    "resolution the model was trained at and each tile classified. Any format Cytomine holds (whole slides too).",
    # No formats and no size limits: the App Engine would decode a whole slide to check them.
    "image",
)
MODEL = FileInput(
    "model",
    "Model",
    "An mtdp model file: the model output of MTDP Train SVM or MTDP Fine-tune, the mtdp-model.npz of an "
    "svm-train or finetune-predict job, or a file from mtdp probe / mtdp finetune.",
    "file",
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("classify", "Parameters of the classify task (the svm-predict app's).")
    add_crop_inputs(parser, from_model=True, only=("crop_zoom", "crop_max_size"))
    add_slide_inputs(parser, only=("resolution", "slide_mpp", "min_tissue", "map_as"))
    add_backbone_inputs(parser, from_model=True, only=("weights",))
    add_runtime_inputs(parser, only=("batch_size", "n_workers", "device"))
    add_engine_input(parser)
    return parser


@dataclass
class Regions:
    """What classify gives back: geometries (Cytomine coordinates relative to the input, as the
    outputs want them), their class names and probabilities, a summary and an overlay picture."""

    geometries: list
    classes: list[str]
    scores: list[float]
    summary: str
    overlay: Any
    notes: list[str] = field(default_factory=list)


def run(context: TaskContext) -> str:
    from mtdp_core.cytomine.apps.common import check_device

    image = context.inputs.image("image")
    model_path = context.inputs.file("model")
    assert image is not None and model_path is not None  # required inputs: checked when read
    device = check_device(context.args)
    model = load_classifier(model_path, context.args)
    if image.is_annotation:
        regions = classify_crop(context, model, image, device)
    else:
        regions = classify_whole_image(context, model, image, device)
    out = context.outputs
    out.array("geometries", regions.geometries)
    out.array("classes", regions.classes)
    out.array("scores", [float(np.clip(s, 0.0, 1.0)) for s in regions.scores])
    out.scalar("summary", regions.summary)
    out.image("overlay", regions.overlay)
    return regions.summary


def legacy_args(args: argparse.Namespace) -> argparse.Namespace:
    """The task's parameters with the svm-predict app's other inputs at their empty values (its
    model checks and prediction step read them)."""
    values = {"backbone": "", "cytomine_id_job": None, "model": "", **vars(args)}
    return argparse.Namespace(**values)


def load_classifier(path: Path, args: argparse.Namespace) -> Any:
    """The model file, validated (format, checksum, classes) and checked against ``weights``."""
    from mtdp_core.cytomine.apps.common import check_backbone
    from mtdp_core.errors import ModelFileError
    from mtdp_core.transfer.persistence import load_model

    try:
        model = load_model(path)
    except ModelFileError as exc:
        raise TaskInputError(f"Give an mtdp model file as the model input: {exc}") from None
    check_backbone(model, legacy_args(args))
    return model


# --------------------------------------------------------------------------- an annotation


def crop_spec(model: Any, args: argparse.Namespace):
    """How the model's training crops were cut (its record), with the task's overrides; None when
    the model records none (a model from folders of images: the crop is used as it is)."""
    from mtdp_core.cytomine.apps.svm_predict import model_crop_spec
    from mtdp_core.cytomine.crops import CropSpec

    trained = model_crop_spec(model)
    if trained is None and args.crop_zoom is None and args.crop_max_size is None:
        return None
    base = trained or CropSpec()
    zoom = base.zoom if args.crop_zoom is None else args.crop_zoom
    max_size = base.max_size if args.crop_max_size is None else (args.crop_max_size or None)
    return CropSpec(zoom=zoom, max_size=max_size, increase_area=base.increase_area)


def emulate_crop(image: Any, spec: Any) -> Any:
    """``image`` (a full-resolution crop, as the App Engine gives it) as Cytomine's crop with
    ``spec`` would be: scaled so that its longest side is ``max_size``, or else reduced by
    2**zoom (what the legacy apps downloaded)."""
    from PIL import Image

    if spec is None:
        return image
    width, height = image.size
    if spec.max_size:
        scale = spec.max_size / max(width, height)
    elif spec.zoom:
        scale = 1.0 / (2**spec.zoom)
    else:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS) if size != image.size else image


def open_image(image: InputImage) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image.path) as handle:
            return handle.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise TaskInputError(
            f"Give the {image.label} input as an image (an annotation or an image of the project): the file "
            f"cannot be read as a picture ({exc})."
        ) from None


def classify_crop(context: TaskContext, model: Any, image: InputImage, device: str) -> Regions:
    from mtdp_core.cytomine.apps.svm_predict import predict_scores
    from mtdp_core.slides.outputs import class_colors

    job = context.local_job()
    picture = open_image(image)
    spec = crop_spec(model, context.args)
    notes = []
    if spec is not None and float(spec.increase_area) != 1.0:
        notes.append(
            f"the model was trained on crops with {spec.increase_area:g}x context around annotations; the App "
            "Engine gives the annotation's box only"
        )
        logger.warning("%s: predictions may be less accurate", notes[-1])
    prepared = emulate_crop(picture, spec)
    path = context.workdir / "crop.png"
    prepared.save(path)
    logger.info(
        "annotation crop %dx%d px, classified at %dx%d (%s)",
        *picture.size,
        *prepared.size,
        f"the model's crops: {spec.to_dict()}" if spec else "as given",
    )
    probabilities = predict_scores(
        model, [path], legacy_args(context.args), job, device, job.stage("Classifying the annotation", 10, 90)
    )[0]
    order = np.argsort(-probabilities)
    names = [c.name for c in model.classes]
    best = int(order[0])
    others = ", ".join(f"{names[k]} {probabilities[k]:.2f}" for k in order[1:4])
    summary = f"{names[best]} (probability {probabilities[best]:.2f}); then {others}"
    if notes:
        summary += f". Note: {notes[0]}"
    geometry = valid(image.geometry)
    overlay = crop_overlay(picture, geometry, names[best], float(probabilities[best]), class_colors(names)[best])
    return Regions([geometry], [names[best]], [float(probabilities[best])], summary, overlay, notes)


def crop_overlay(picture: Any, geometry: Any, name: str, probability: float, color: tuple[int, int, int]) -> Any:
    """The crop with the annotation's outline in its class colour and a caption."""
    from PIL import ImageDraw, ImageFont

    scale = min(1.0, OVERLAY_SIDE / max(picture.size))
    canvas = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    outline = to_image(geometry, picture.height)  # crop-local Cytomine coordinates -> pixels
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 150))
    for polygon in getattr(outline, "geoms", [outline]):
        rings = [polygon.exterior, *polygon.interiors] if polygon.geom_type == "Polygon" else [polygon]
        for ring in rings:
            points = [(x * scale, y * scale) for x, y in np.asarray(ring.coords)[:, :2]]
            if len(points) > 1:
                draw.line(points, fill=color, width=width, joint="curve")
            elif points:
                x, y = points[0]
                draw.ellipse((x - 3 * width, y - 3 * width, x + 3 * width, y + 3 * width), outline=color, width=width)
    caption = f"{name} {probability:.0%}"
    font = ImageFont.load_default(size=max(12, round(max(canvas.size) / 18)))
    box = draw.textbbox((4, 2), caption, font=font)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=color)
    draw.text((4, 2), caption, fill=(0, 0, 0), font=font)
    return canvas


# --------------------------------------------------------------------------- a whole image


def classify_whole_image(context: TaskContext, model: Any, image: InputImage, device: str) -> Regions:
    """A whole image (the original file: a slide, or a plain image) mapped as the slide app maps
    one (``slide_maps``): its tissue tiled at the model's resolution and classified tile by tile,
    the tiles merged per class into regions (or kept as tiles), in Cytomine coordinates."""
    from mtdp_core.cytomine.apps.slide_maps import classify_slide_tiles, tile_resolution
    from mtdp_core.slides import open_slide
    from mtdp_core.slides.classify import class_shares
    from mtdp_core.slides.outputs import map_pieces, overlay

    args = context.args
    resolution = tile_resolution(model, args, "the model input")
    with open_slide(image.path, mpp=args.slide_mpp) as slide:
        width, height = slide.dimensions
        logger.info("whole image: %s", slide.info())
        result = classify_slide_tiles(model, slide, args, device, resolution, name=f"the {image.label} input")
        picture = overlay(result, slide, max_side=OVERLAY_SIDE)
    pieces = map_pieces(result, tiles=args.map_as == "tiles")
    if len(pieces) > MAX_GEOMETRIES:
        raise TaskInputError(
            f"Set map_as to regions: {len(pieces)} tiles are more than the {MAX_GEOMETRIES} geometries a run "
            "may give back."
        )
    summary = (
        f"{len(result.grid)} tissue tiles of {model.preprocessing.size} px at {resolution}: "
        f"{class_shares(result.counts())}; {len(pieces)} {args.map_as}"
    )
    logger.info("%s x %s image: %s", width, height, summary)
    return Regions(
        [valid(to_cytomine(p.geometry, height)) for p in pieces],
        [result.classes[p.label].name for p in pieces],
        [p.score for p in pieces],
        summary,
        picture,
    )


TASK = TaskDefinition(
    name="classify",
    title="MTDP Classify",
    description=(
        "Classifies an annotation, or maps the classes over a whole image, with a model trained by MTDP Train SVM "
        "or MTDP Fine-tune (or the svm-train / finetune-predict apps, mtdp probe, mtdp finetune). Pick an "
        "annotation or an image and give the model file. The result is an annotation layer whose geometries have "
        "their class and probability in the run's table (rows in the same order), a summary and an overlay picture."
    ),
    file_inputs=(IMAGE, MODEL),
    build_parser=get_args_parser,
    outputs=(
        Output(
            "geometries",
            "Regions",
            "The classified regions (the annotation itself, or the tissue regions of each class), drawn as an "
            "annotation layer; row i has its class in classes[i] and its probability in scores[i].",
            {"id": "array", "subtype": {"id": "geometry"}, "min_size": 1, "max_size": 1_000_000},
            derived_from="image",
            matching=("classes", "scores"),
        ),
        Output(
            "classes",
            "Classes",
            "The predicted class of each region, in the order of the regions.",
            {"id": "array", "subtype": {"id": "string"}, "min_size": 1, "max_size": 1_000_000},
        ),
        Output(
            "scores",
            "Probabilities",
            "The probability of each region's class (for a map: the mean over its tiles), in the order of the regions.",
            {"id": "array", "subtype": {"id": "number", "geq": 0, "leq": 1}, "min_size": 1, "max_size": 1_000_000},
        ),
        Output("summary", "Summary", "The result in one line: the class, its probability, the next classes.", "string"),
        Output(
            "overlay",
            "Overlay",
            "A picture of the result: the annotation outlined in its class colour, or the image with its classes.",
            {"id": "image", "formats": ["png"]},
        ),
    ),
    run=run,
    legacy_app="svm_predict",
)
