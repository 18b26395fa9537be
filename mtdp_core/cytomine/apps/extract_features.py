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

import numpy as np

from mtdp_core.cytomine.apps.common import (
    cache_root,
    check_device,
    crop_spec_from_args,
    extract_features,
    fetch_crops,
    filters_from_args,
    list_project_annotations,
    local_images,
)
from mtdp_core.cytomine.job import CytomineJobRun, Job
from mtdp_core.cytomine.report import write_json

logger = logging.getLogger(__name__)


def make_extractor(args: argparse.Namespace, job: Job, device: str):
    from mtdp_core.transfer.features import FeatureExtractor

    return FeatureExtractor(
        args.backbone,
        args.weights,
        seed=args.seed,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.n_workers,
        device=device,
        cache_dir=cache_root(job) / "features",
        engine=args.engine,
    )


def run(job: Job, args: argparse.Namespace) -> str:
    device = check_device(args)
    extractor = make_extractor(args, job, device)
    extractor.get_backbone()  # fail now on a bad backbone or missing weights, before any download
    meta: dict = {"backbone": extractor.identity(), "app": "extract_features"}
    if isinstance(job, CytomineJobRun):
        job.stage("Listing annotations", 0, 5)
        filters = filters_from_args(args, job.project_id)
        records, term_names = list_project_annotations(job, filters)
        spec = crop_spec_from_args(args)
        records, paths, report = fetch_crops(job, records, spec, args, job.stage("Downloading crops", 5, 40))
        features = extract_features(extractor, paths, job.stage("Extracting features", 40, 90))
        arrays = {
            "features": features,
            "annotation_ids": np.array([r.id for r in records], dtype=np.int64),
            "image_ids": np.array([r.image for r in records], dtype=np.int64),
            "user_ids": np.array([r.user for r in records], dtype=np.int64),
            "term_ids": np.array([min(r.terms) if r.terms else -1 for r in records], dtype=np.int64),
            "n_terms": np.array([len(r.terms) for r in records], dtype=np.int64),
        }
        meta.update(
            {
                "project": job.project_id,
                "job": job.id,
                "filters": filters.describe(term_names),
                "crop": spec.to_dict(),
                "terms": {str(k): v for k, v in term_names.items()},
                "crops_failed": report.n_failed,
            }
        )
    else:
        job.stage("Reading images", 0, 5)
        images = local_images(job)
        paths = [i.path for i in images]
        features = extract_features(extractor, paths, job.stage("Extracting features", 5, 90))
        arrays = {
            "features": features,
            "filenames": np.array([i.key for i in images], dtype=str),
            "labels": np.array([i.label or "" for i in images], dtype=str),
        }
    job.progress(90, "Saving features")
    meta["columns"] = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}
    npz = job.output_path("features.npz")
    np.savez_compressed(npz, **arrays)
    job.attach(npz)
    job.attach(write_json(job.output_path("features.json"), meta))
    n, d = features.shape
    job.set_property("n_annotations" if not job.local else "n_images", n)
    job.set_property("n_features", d)
    job.set_property("backbone", f"{args.backbone} ({args.weights})")
    failed = meta.get("crops_failed", 0)
    note = f" ({failed} crops failed: see crop_failures.csv)" if failed else ""
    return f"{n} x {d} features of {args.backbone} saved to features.npz{note}"
