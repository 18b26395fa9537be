"""The demo: train and apply a classifier of blood cells from "the Cytomine web UI", end to end.

What a pathologist does in Cytomine, on this machine, with the local Cytomine-compatible server:

1. start a server (data in ``demo-output/server``) and import a small real project: 48 BCCD
   blood-smear images with 337 labelled cells (white blood cells, platelets, red blood cells;
   ``demo/data/bccd_sample``, MIT licence);
2. register the ``svm_train`` and ``svm_predict`` apps from their descriptors;
3. launch **svm-train** on the annotations of 36 images, as Cytomine does (the command line is
   built from the descriptor, the app runs as the job's user): EfficientNet-Lite0 ImageNet
   features + linear SVM, C chosen by cross-validation grouped by image;
4. launch **svm-predict** with that job's model on the 12 other images: the predicted terms are
   pushed back to Cytomine as suggested terms on the annotations;
5. read the pushed predictions back from the server and compare them with the cells' true terms.

It prints the cross-validated score, the accuracy of the pushed predictions on the held-out
images, and where to look: ``demo-output/report.html`` (confusion matrix, per-class metrics, the
jobs' outputs and logs). CPU only, a few minutes.

    python demo/run_demo.py [--output demo-output] [--image-size 224] [--keep-server]
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = ROOT / "demo" / "data" / "bccd_sample"
logger = logging.getLogger("mtdp.demo")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "demo-output", help="output folder (default: demo-output)"
    )
    parser.add_argument("--image-size", type=int, default=224, help="network input size (default: 224)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone (default: efficientnet_lite0)")
    parser.add_argument("--weights", default="imagenet", help="weights (default: imagenet)")
    parser.add_argument("--held-out", type=int, default=12, help="images kept for prediction (default: 12)")
    parser.add_argument(
        "--push-mode", default="term", choices=("term", "annotation"), help="how predictions are saved (default: term)"
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--keep-server", action="store_true", help="keep serving after the demo (Ctrl-C stops)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from mtdp_core.logs import configure_logging
    from mtdp_core.server import LocalCytomine
    from mtdp_core.server.config import ServerConfig
    from mtdp_core.server.importers import import_folder

    configure_logging()
    output = args.output.resolve()
    if (output / "server").exists():
        shutil.rmtree(output / "server")  # a fresh project each time
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with LocalCytomine(output / "server", port=args.port, config=ServerConfig(log_requests=False)) as server:
        report = import_folder(server.store, "BCCD demo", SAMPLE / "images", SAMPLE / "boxes.csv")
        project = report.project["id"]
        terms = {t["id"]: t["name"] for t in server.store.projects.terms(project)}
        images = sorted(server.store.images.list(project), key=lambda i: i["original_filename"])
        train, held_out = images[: -args.held_out], images[-args.held_out :]
        logger.info(
            "project %d: %d images (%d for training, %d held out), terms %s",
            project,
            len(images),
            len(train),
            len(held_out),
            ", ".join(sorted(terms.values())),
        )
        for app in ("svm_train", "svm_predict"):
            server.register_app(ROOT / "descriptors" / f"{app}.json")
        common = {
            "backbone": args.backbone,
            "weights": args.weights,
            "image_size": args.image_size,
            "crop_max_size": args.image_size,
        }
        print(f"Training (svm-train job) on the cells of {len(train)} images ...", flush=True)
        train_job = server.launch(
            "svm_train",
            project,
            {**common, "cytomine_id_images": [i["id"] for i in train], "balanced_classes": True},
            timeout=1800,
        )
        _check(train_job, output)
        print(f"Predicting (svm-predict job) the cells of {len(held_out)} held-out images ...", flush=True)
        predict_job = server.launch(
            "svm_predict",
            project,
            {
                "cytomine_id_job": train_job["id"],
                "cytomine_id_images": [i["id"] for i in held_out],
                "push_mode": args.push_mode,
            },
            timeout=1800,
        )
        _check(predict_job, output)
        evaluation = evaluate(server, project, predict_job, [i["id"] for i in held_out], terms, args.push_mode)
        outputs = collect_outputs(server, output, [train_job, predict_job])
        props = {
            p["key"]: p["value"]
            for p in server.store.meta.list_properties("be.cytomine.processing.Job", train_job["id"])
        }
        page = write_report(output, train_job, predict_job, props, evaluation, outputs)
        seconds = time.perf_counter() - start
        print()
        print(f"Cross-validated {props.get('scoring')} of svm-train (C={props.get('best_C')}): {props.get('cv_score')}")
        print(
            f"Accuracy of the predictions pushed to Cytomine on the {len(held_out)} held-out images: "
            f"{evaluation['accuracy']:.3f} ({evaluation['n_correct']}/{evaluation['n']} cells; balanced accuracy "
            f"{evaluation['balanced_accuracy']:.3f})"
        )
        print(f"Done in {seconds:.0f} s. Look at: {page}")
        print(f"  jobs' outputs and logs: {output / 'jobs'}; server data: {output / 'server'}")
        write_summary(output, props, evaluation, seconds, train_job, predict_job)
        if args.keep_server:
            print(
                f"Server still running at {server.url} (admin keys in {output / 'server' / 'admin-keys.json'}); "
                "Ctrl-C stops it."
            )
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


def _check(job: dict, output: Path) -> None:
    if job["status"] != 3:
        raise SystemExit(
            f"Job {job['id']} ended with status {job['status']}: {job['status_comment']} "
            f"(log: {output / 'server' / 'jobs' / str(job['id']) / 'log.out'})"
        )
    print(f"  job {job['id']}: {job['status_comment']}", flush=True)


def evaluate(server, project: int, predict_job: dict, image_ids: list[int], terms: dict[int, str], mode: str) -> dict:
    """Compare what svm-predict pushed to Cytomine with the cells' true terms, through the API."""
    from cytomine.models import AnnotationCollection

    from mtdp_core.cytomine.report import classification_metrics, confusion_matrix_png

    server.connect()
    job_user = server.store.users.job_user(predict_job["id"])["id"]
    truth = {
        a.id: a.term[0]
        for a in AnnotationCollection(project=project, images=image_ids, showTerm=True).fetch()
        if len(a.term) == 1
    }
    predicted: dict[int, int] = {}
    if mode == "term":
        # Terms suggested by the job on each annotation (one row per suggestion: showAlgo).
        rows = AnnotationCollection(project=project, images=image_ids, showAlgo=True, userForTermAlgo=job_user).fetch()
        for row in rows:
            if getattr(row, "userJob", None) == job_user:
                predicted[row.id] = row.idTerm
    else:
        from mtdp_core.cytomine.push import geometry_key

        sources = {
            geometry_key(a.image, a.location): a.id
            for a in AnnotationCollection(project=project, images=image_ids, showWKT=True).fetch()
        }
        for a in AnnotationCollection(
            project=project, images=image_ids, users=[job_user], includeAlgo=True, showWKT=True, showTerm=True
        ).fetch():
            source = sources.get(geometry_key(a.image, a.location))
            if source is not None and a.term:
                predicted[source] = a.term[0]
    ids = sorted(truth)
    y_true = [terms[truth[i]] for i in ids]
    y_pred = [terms.get(predicted.get(i), "(not pushed)") for i in ids]
    labels = sorted(set(terms.values())) + (["(not pushed)"] if "(not pushed)" in y_pred else [])
    metrics = classification_metrics(y_true, y_pred, labels)
    metrics["n_correct"] = sum(t == p for t, p in zip(y_true, y_pred))
    metrics["n_pushed"] = sum(i in predicted for i in ids)
    confusion_matrix_png(
        metrics["confusion_matrix"],
        metrics["class_names"],
        server.data_dir.parent / "heldout_confusion_matrix.png",
        title="Held-out images: pushed predictions vs true terms",
    )
    return metrics


def collect_outputs(server, output: Path, jobs: list[dict]) -> dict[int, list[Path]]:
    """Download each job's attachments (as a Cytomine user would) into demo-output/jobs/<id>/."""
    from cytomine.models import AttachedFileCollection, Job

    files: dict[int, list[Path]] = {}
    for job in jobs:
        folder = output / "jobs" / str(job["id"])
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        cj = Job().fetch(job["id"])
        for attached in AttachedFileCollection(cj).fetch():
            path = folder / attached.filename
            attached.download(str(path), override=True)
            files.setdefault(job["id"], []).append(path)
    return files


def write_report(
    output: Path, train_job: dict, predict_job: dict, props: dict, evaluation: dict, outputs: dict[int, list[Path]]
) -> Path:
    from mtdp_core.cytomine.report import metrics_table_html, write_html_report

    def links(job: dict) -> str:
        items = "".join(
            f"<li><a href='{html.escape(str(p.relative_to(output)))}'>{html.escape(p.name)}</a></li>"
            for p in sorted(outputs.get(job["id"], []))
        )
        return f"<ul>{items}</ul>"

    train_dir = Path("jobs") / str(train_job["id"])
    sections = [
        (
            "Summary",
            f"<p>svm-train (job {train_job['id']}): {html.escape(train_job['status_comment'] or '')}</p>"
            f"<p>svm-predict (job {predict_job['id']}): {html.escape(predict_job['status_comment'] or '')}</p>"
            f"<p><b>Cross-validated {html.escape(props.get('scoring', ''))}: {props.get('cv_score')}</b> "
            f"(C = {props.get('best_C')}); <b>accuracy of the pushed predictions on held-out images: "
            f"{evaluation['accuracy']:.3f}</b> ({evaluation['n_correct']}/{evaluation['n']}).</p>",
        ),
        (
            "Held-out images: predictions read back from Cytomine vs true terms",
            metrics_table_html(evaluation) + "<img src='heldout_confusion_matrix.png' alt='confusion matrix'>",
        ),
        (
            "Training: cross-validated confusion matrix (out-of-fold)",
            f"<img src='{train_dir / 'confusion_matrix.png'}' alt='cv confusion matrix'>"
            f"<p>Full training report: <a href='{train_dir / 'report.html'}'>report.html</a></p>",
        ),
        (f"Outputs of svm-train (job {train_job['id']})", links(train_job)),
        (f"Outputs of svm-predict (job {predict_job['id']})", links(predict_job)),
    ]
    return write_html_report(output / "report.html", "mtdp demo: blood-cell classification in Cytomine", sections)


def write_summary(
    output: Path, props: dict, evaluation: dict, seconds: float, train_job: dict, predict_job: dict
) -> None:
    summary = {
        "cv_score": float(props.get("cv_score", "nan")),
        "scoring": props.get("scoring"),
        "best_C": props.get("best_C"),
        "heldout_accuracy": evaluation["accuracy"],
        "heldout_balanced_accuracy": evaluation["balanced_accuracy"],
        "n_heldout": evaluation["n"],
        "seconds": round(seconds, 1),
        "train_job": train_job["id"],
        "predict_job": predict_job["id"],
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
