"""Benchmark of the apps' stages on a project of ~2,000 annotations, against the incumbent's way.

A local Cytomine server runs in its own process (as ``mtdp server serve``) on a project of
real BCCD blood-smear images and their cell boxes (the first images until ~N annotations),
or of synthetic images when BCCD is absent. This process times, with the apps' own code:

1. **list**: the annotations with WKT and terms (one listing request);
2. **crops**: concurrent download into an empty cache (``mtdp_core.cytomine.crops``, 8
   threads), then the same with the cache full; baseline in the same run: the incumbent's way,
   the client's ``Annotation.dump()`` one annotation after the other (``dump_crops`` with its
   default single worker, as S_Classify-DL-SVMFeat-Train runs it);
3. **features**: the default backbone (EfficientNet-Lite0, ImageNet) on the crops, with the apps'
   automatic batch and workers, by each engine of ``--engines`` in turn (torch: before issue
   #14; onnxruntime: what ``engine=auto`` runs on a CPU now; its graph is exported before
   timing, as the container images ship it pre-exported); the SVM trained on the first
   engine's features also predicts the other's (agreement reported);
4. **SVM**: the paper's protocol (C grid of 11 values x 5 folds grouped by image, refit);
5. **push**: the predictions pushed as a new job, in ``term`` mode (concurrent suggested
   terms) and ``annotation`` mode (bulk creation in chunks of 100); baselines in the same run:
   one ``AlgoAnnotationTerm.save()`` / ``Annotation.save()`` after the other (the incumbent
   predict app saved each annotation with its own request).

Whole jobs, per engine: train = list + crops + features + SVM; predict = list + crops +
features + push (term mode).

Usage:
    python benchmarks/bench_apps.py [--bccd ../shared/data/bccd] [--annotations 2000] [--image-size 224]
        [--engines torch,onnxruntime] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from bench_server import server_process

from mtdp_core.cytomine.annotations import AnnotationFilters, list_annotations, project_terms
from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.cytomine.crops import CropSpec, CropStore, download_crops
from mtdp_core.cytomine.push import Prediction, PredictionPusher
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.importers import import_folder

logger = logging.getLogger("bench_apps")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bccd",
        type=Path,
        default=Path(os.environ.get("MTDP_SHARED_DATA", REPO.parent / "shared" / "data")) / "bccd",
        help="the BCCD folder (JPEGImages/, boxes.csv); synthetic images when absent",
    )
    parser.add_argument("--annotations", type=int, default=2000, help="annotations in the project (about)")
    parser.add_argument("--crop-size", type=int, default=224, help="crop maxSize (default 224)")
    parser.add_argument("--image-size", type=int, default=224, help="network input size (default 224)")
    parser.add_argument("--threads", type=int, default=8, help="download and push threads (default 8)")
    parser.add_argument(
        "--baseline-limit",
        type=int,
        default=0,
        help="time the one-by-one baselines on this many annotations only (0: all)",
    )
    parser.add_argument(
        "--engines",
        default="torch,onnxruntime",
        help="engines of the features stage, in order (default: torch,onnxruntime: before and after)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return parser


def make_project(data: Path, bccd: Path, target: int) -> tuple[int, str]:
    """Import images until about ``target`` annotations; returns (project id, source)."""
    store = CytomineStore(data / "cytomine.sqlite3", data / "files")
    store.users.ensure_admin()
    if (bccd / "boxes.csv").is_file():
        import csv

        rows = list(csv.DictReader(open(bccd / "boxes.csv")))
        per_image: dict[str, int] = {}
        for row in rows:
            per_image[row["filename"]] = per_image.get(row["filename"], 0) + 1
        count, limit = 0, 0
        for name in sorted(per_image):
            count += per_image[name]
            limit += 1
            if count >= target:
                break
        report = import_folder(store, "bench", bccd / "JPEGImages", bccd / "boxes.csv", limit=limit)
        source = f"BCCD ({limit} images)"
    else:
        from mtdp_core.server.testing import TINTS  # noqa: F401 - same generator as the tests

        folder = data / "synthetic"
        folder.mkdir()
        rng = np.random.default_rng(0)
        from PIL import Image

        lines = ["filename,label,xmin,xmax,ymin,ymax"]
        n_images = max(1, target // 20)
        for i in range(n_images):
            Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(folder / f"img{i:04d}.jpg")
            for k in range(20):
                x, y = int(rng.integers(0, 560)), int(rng.integers(0, 400))
                lines.append(f"img{i:04d}.jpg,{'ab'[k % 2]},{x},{x + 80},{y},{y + 80}")
        (data / "boxes.csv").write_text("\n".join(lines) + "\n")
        report = import_folder(store, "bench", folder, data / "boxes.csv")
        source = f"synthetic ({n_images} images)"
    project = report.project["id"]
    from mtdp_core.server.descriptors import load_descriptor, register_software

    spec = load_descriptor(REPO / "descriptors" / "svm_predict.json")
    register_software(
        store, spec, local_command=None, descriptor=json.loads((REPO / "descriptors" / "svm_predict.json").read_text())
    )
    store.close()
    return project, source


def new_job_session(admin: CytomineSession, project: int) -> tuple[CytomineSession, int]:
    """A job of the svm-predict software, and a session with its job user's keys (as a launch gives)."""
    software = next(s for s in admin.get_collection("software.json") if s["name"] == "MTDP-SVM-Predict")
    job = admin.post_json("job.json", {"project": project, "software": software["id"]})["job"]
    user = admin.get_json(f"user/{job['userJob']}.json")
    return CytomineSession.connect(admin.server_url, user["publicKey"], user["privateKey"]), int(job["userJob"])


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from mtdp_core.logs import configure_logging

    configure_logging("WARNING")
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/bench_apps.py " + " ".join(argv or sys.argv[1:]),
    }
    with tempfile.TemporaryDirectory(prefix="bench-apps-") as tmp:
        data = Path(tmp) / "server"
        data.mkdir()
        project, source = make_project(data, args.bccd, args.annotations)
        results["project"] = source
        with server_process(data) as (url, public_key, private_key):
            admin = CytomineSession.connect(url, public_key, private_key)
            stages: dict[str, float] = {}

            # 1. list
            stages["list"], records = timed(lambda: list_annotations(admin, AnnotationFilters(project)))
            term_names = project_terms(admin, project)
            n = len(records)
            results["n_annotations"] = n
            print(f"{n} annotations ({source}); listed in {stages['list']:.2f} s", flush=True)

            # 2. crops: ours (empty cache, then full), then the incumbent's one-by-one dump
            spec = CropSpec(max_size=args.crop_size)
            store = CropStore(Path(tmp) / "cache", admin.server_url, spec)
            stages["crops"], report = timed(lambda: download_crops(admin, records, store, threads=args.threads))
            cached_seconds, _ = timed(lambda: download_crops(admin, records, store, threads=args.threads))
            base_n = args.baseline_limit or n
            baseline_dir = Path(tmp) / "dump"
            baseline_dir.mkdir()
            from cytomine.models import Annotation

            def dump_one_by_one() -> int:
                ok = 0
                for record in records[:base_n]:
                    a = Annotation().populate({"id": record.id, "image": record.image, "cropURL": record.crop_url})
                    ok += bool(a.dump(str(baseline_dir / f"{record.id}.png"), max_size=args.crop_size))
                return ok

            baseline_seconds, baseline_ok = timed(dump_one_by_one)
            results["crops"] = {
                "ours_per_s": n / stages["crops"],
                "ours_seconds": stages["crops"],
                "failed": report.n_failed,
                "cached_per_s": n / cached_seconds,
                "cached_seconds": cached_seconds,
                "one_by_one_per_s": base_n / baseline_seconds,
                "one_by_one_n": base_n,
                "one_by_one_ok": baseline_ok,
                "speedup": (n / stages["crops"]) / (base_n / baseline_seconds),
            }
            print(
                f"crops: {results['crops']['ours_per_s']:.0f}/s ({args.threads} threads) vs "
                f"{results['crops']['one_by_one_per_s']:.0f}/s one by one: x{results['crops']['speedup']:.1f}; "
                f"cached {results['crops']['cached_per_s']:.0f}/s",
                flush=True,
            )

            # 3. features, by each engine (the same crops, the apps' automatic batch and workers)
            from mtdp_core.transfer.features import FeatureExtractor

            engines = args.engines.split(",")
            paths = [str(p) for p in report.paths if p is not None]
            kept = [r for r, p in zip(records, report.paths) if p is not None]
            os.environ.setdefault("MTDP_GRAPH_DIR", str(Path(tmp) / "graphs"))
            features: dict[str, np.ndarray] = {}
            results["features"] = {}
            for engine in engines:
                extractor = FeatureExtractor(
                    "efficientnet_lite0", "imagenet", image_size=args.image_size, device="cpu", engine=engine
                )
                extractor.get_backbone()  # built (and its graph exported) before timing, as in the images
                seconds, features[engine] = timed(lambda extractor=extractor: extractor.transform(paths))
                stages[f"features_{engine}"] = seconds
                results["features"][engine] = {
                    "per_s": len(paths) / seconds,
                    "seconds": seconds,
                    "n_features": int(features[engine].shape[1]),
                    "runs_as": type(extractor.get_backbone()).__name__,
                }
                print(f"features ({engine}): {len(paths)} crops in {seconds:.1f} s ({len(paths) / seconds:.1f}/s)")
            X = features[engines[0]]

            # 4. SVM (the paper's protocol), on the first engine's features
            from mtdp_core.transfer.probes import Probe

            y = np.array([r.terms[0] for r in kept])
            groups = np.array([r.image for r in kept])
            stages["svm"], probe = timed(lambda: Probe("svm", n_splits=5, seed=0).fit(X, y, groups))
            results["svm"] = {
                "cv_score": probe.best_score_,
                "scoring": probe.scoring_,
                "best_C": probe.best_params_["C"],
            }
            print(f"svm: {stages['svm']:.1f} s, CV {probe.scoring_} {probe.best_score_:.3f}", flush=True)
            predicted = probe.predict(X)
            for engine in engines[1:]:  # the same classifier on the other engine's features
                agreement = float((probe.predict(features[engine]) == predicted).mean())
                results["svm"][f"agreement_{engines[0]}_vs_{engine}"] = agreement
                print(f"svm trained on {engines[0]} features, predicting {engine} features: {agreement:.2%} agree")
            predictions = [Prediction(r, int(t), 0.9, r.terms[0]) for r, t in zip(kept, predicted)]

            # 5. push: ours (each mode as a new job) vs one by one (another new job)
            from cytomine.models import AlgoAnnotationTerm
            from cytomine.models import Annotation as ClientAnnotation

            push: dict[str, dict] = {}
            for mode in ("term", "annotation"):
                session, job_user = new_job_session(admin, project)
                pusher = PredictionPusher(session, project, [job_user], mode=mode, threads=args.threads)
                seconds, push_report = timed(lambda pusher=pusher: pusher.push(predictions))
                stages[f"push_{mode}"] = seconds
                _, job_user2 = new_job_session(admin, project)  # connects the client's singleton as job user 2

                def one_by_one(mode: str = mode) -> int:
                    ok = 0
                    for p in predictions[:base_n]:
                        if mode == "term":
                            ok += bool(AlgoAnnotationTerm(p.annotation.id, p.term, p.expected_term, rate=p.rate).save())
                        else:
                            ok += bool(
                                ClientAnnotation(
                                    location=p.annotation.location,
                                    id_image=p.annotation.image,
                                    id_project=project,
                                    id_terms=[p.term],
                                ).save()
                            )
                    return ok

                base_seconds, base_ok = timed(one_by_one)
                push[mode] = {
                    "ours_per_s": n / seconds,
                    "ours_seconds": seconds,
                    "requests": push_report.requests,
                    "summary": push_report.summary(),
                    "one_by_one_per_s": base_n / base_seconds,
                    "one_by_one_ok": base_ok,
                    "speedup": (n / seconds) / (base_n / base_seconds),
                }
                print(
                    f"push ({mode}): {push[mode]['ours_per_s']:.0f}/s ({push_report.requests} requests) vs "
                    f"{push[mode]['one_by_one_per_s']:.0f}/s one by one: x{push[mode]['speedup']:.1f}",
                    flush=True,
                )
            results["push"] = push
            results["stages_seconds"] = stages
            results["jobs_seconds"] = {
                engine: {
                    "train": stages["list"] + stages["crops"] + stages[f"features_{engine}"] + stages["svm"],
                    "predict": stages["list"] + stages["crops"] + stages[f"features_{engine}"] + stages["push_term"],
                }
                for engine in engines
            }
            for engine, jobs in results["jobs_seconds"].items():
                print(f"whole jobs with {engine}: train {jobs['train']:.1f} s, predict {jobs['predict']:.1f} s")
            _ = term_names
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
