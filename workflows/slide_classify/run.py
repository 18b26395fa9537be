"""slide-classify: map whole slides with the model of a training job (svm-train or finetune-predict):
the tissue is tiled at the model's resolution (inside the selected regions of interest, if any),
each tile classified, and each class's tiles merged into polygons (or the tiles themselves) pushed
back as annotations with the predicted term; each image's GeoJSON (QuPath) and overlay picture are
attached to the job.

    python workflows/slide_classify/run.py --cytomine_host URL ... --cytomine_id_job TRAINING_JOB
    python workflows/slide_classify/run.py --local --model mtdp-model.npz --infolder SLIDES --resolution 0.5
"""

from __future__ import annotations

import sys

from mtdp_core.cytomine.apps import slide_classify
from mtdp_core.cytomine.inputs import (
    add_connection_inputs,
    add_local_model_option,
    add_model_job_input,
    add_processing_inputs,
    add_project_list_input,
    add_slide_inputs,
)
from mtdp_core.cytomine.job import run_app
from mtdp_core.cytomine.params import AppArgumentParser, add_input, id_list, new_parser

DESCRIPTOR = {
    "name": "MTDP-Slide-Classify",
    "description": (
        "Maps whole slides with a model trained by MTDP-SVM-Train or MTDP-Finetune-Predict: the tissue "
        "(inside the selected regions of interest, if any) is cut into tiles at the resolution the model was "
        "trained at, each tile is classified, and each class's tiles are merged into annotations with the "
        "predicted term (or pushed tile by tile). Attaches each image's map as GeoJSON (for QuPath) and as a "
        "picture. Re-running never creates duplicates."
    ),
    "image": "mtdp/s_mtdp-slide-classify",
}


def get_args_parser() -> AppArgumentParser:
    parser = new_parser("slide_classify", DESCRIPTOR["description"])
    add_connection_inputs(parser)
    add_model_job_input(parser)
    add_project_list_input(
        parser,
        "cytomine_id_images",
        of="images",
        name="Images",
        description="Images to map (empty: every image of the project, or those of the regions of interest).",
    )
    add_project_list_input(
        parser,
        "cytomine_id_roi_terms",
        of="terms",
        name="Region terms",
        description="Annotations with these terms are the regions to map (empty: the whole tissue of each image).",
    )
    add_input(
        parser,
        "cytomine_id_roi_annotations",
        type="List",
        name="Region annotations",
        default="",
        converter=id_list,
        description="Ids of annotations that are regions to map, comma-separated (with or instead of region terms).",
    )
    add_slide_inputs(parser)
    add_input(
        parser,
        "pixels",
        type="String",
        name="How pixels are read",
        default="auto",
        choices=slide_classify.PIXEL_SOURCES,
        description="windows: only the tissue at the model's zoom, in 1024-pixel blocks; download: the whole "
        "file (needs the right to download); auto: windows when the model reads at a quarter of the scan's "
        "resolution or less, else the file when it can be downloaded.",
    )
    add_local_model_option(add_processing_inputs(parser, from_model=True, image_size=False, crops=False))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_app(get_args_parser(), argv, slide_classify.run, app="slide_classify")


if __name__ == "__main__":
    sys.exit(main())
