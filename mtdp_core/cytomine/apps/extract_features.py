"""The extract-features app: features of annotation crops, saved for other tools.

Output ``features.npz`` (numbers only, loadable with ``np.load(path)`` without pickle):
``features`` float32 (n, n_features); ``annotation_ids``, ``image_ids``, ``user_ids``
int64 (n,); ``term_ids`` int64 (n,) (the annotation's term, -1 when it has none, its
smallest term when several: see ``n_terms``); ``n_terms`` int64 (n,). In local mode,
``features`` and ``labels``/``filenames`` (text arrays). Next to it, ``features.json``:
backbone identity (architecture, weights file and sha256), preprocessing, crop parameters,
project, term names and the columns above.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np

from mtdp_core.cytomine.apps import common
from mtdp_core.cytomine.job import CytomineJobRun, Job
from mtdp_core.cytomine.report import write_json

logger = logging.getLogger(__name__)


def run(job: Job, args: argparse.Namespace) -> str:
    device = common.check_device(args)
    extractor = common.make_extractor(args, job, device)
    extractor.get_backbone()  # fail now on a bad backbone or missing weights, before any download
    meta: dict = {"backbone": extractor.identity(), "app": "extract_features"}
    if isinstance(job, CytomineJobRun):
        arrays = annotation_features(job, args, extractor, meta)
    else:
        arrays = image_features(job, extractor)
    job.progress(90, "Saving features")
    meta["columns"] = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}
    npz = job.output_path("features.npz")
    np.savez_compressed(npz, **arrays)
    job.attach(npz)
    job.attach(write_json(job.output_path("features.json"), meta))
    n, d = arrays["features"].shape
    job.set_properties(
        {
            "n_images" if job.local else "n_annotations": n,
            "n_features": d,
            "backbone": f"{args.backbone} ({args.weights})",
        }
    )
    note = common.crops_note(meta.get("crops_failed", 0))
    return f"{n} x {d} features of {args.backbone} saved to features.npz{note}"


def annotation_features(job: CytomineJobRun, args: argparse.Namespace, extractor: Any, meta: dict) -> dict:
    """Features and id columns of the selected annotations' crops (``meta`` gets the filters and crops)."""
    job.stage("Listing annotations", 0, 5)
    filters = common.filters_from_args(args, job.project_id)
    records, term_names = common.list_project_annotations(job, filters)
    spec = common.crop_spec_from_args(args)
    records, paths, report = common.fetch_crops(job, records, spec, args, job.stage("Downloading crops", 5, 40))
    features = common.extract_features(extractor, paths, job.stage("Extracting features", 40, 90))
    meta.update(
        project=job.project_id,
        job=job.id,
        filters=filters.describe(term_names),
        crop=spec.to_dict(),
        terms={str(k): v for k, v in term_names.items()},
        crops_failed=report.n_failed,
    )
    return {"features": features, **annotation_columns(records)}


def image_features(job: Job, extractor: Any) -> dict:
    """Features of the images of ``--infolder``, with their file names and labels ('' when unlabelled)."""
    job.stage("Reading images", 0, 5)
    images = common.local_images(job)
    stage = job.stage("Extracting features", 5, 90)
    return {
        "features": common.extract_features(extractor, [i.path for i in images], stage),
        "filenames": np.array([i.key for i in images], dtype=str),
        "labels": np.array([i.label or "" for i in images], dtype=str),
    }


def annotation_columns(records) -> dict[str, np.ndarray]:
    """The id columns of ``features.npz``: annotation, image, user, term (-1: none; the smallest of several)."""
    return {
        "annotation_ids": np.array([r.id for r in records], dtype=np.int64),
        "image_ids": np.array([r.image for r in records], dtype=np.int64),
        "user_ids": np.array([r.user for r in records], dtype=np.int64),
        "term_ids": np.array([min(r.terms) if r.terms else -1 for r in records], dtype=np.int64),
        "n_terms": np.array([len(r.terms) for r in records], dtype=np.int64),
    }
