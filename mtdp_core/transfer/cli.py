"""``mtdp features | probe | predict | finetune``: transfer a backbone to your own images.

mtdp features IMAGES -o feats.npz --cache-dir CACHE     features of a folder, resumable
mtdp probe TRAIN -o model.npz [--test TEST]             the paper's linear SVM protocol
mtdp predict model.npz IMAGES -o predictions.csv        apply a saved model
mtdp finetune TRAIN -o model.npz [--val VAL]            fine-tune backbone + linear layer
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.backbones import list_backbones
from mtdp_core.data.folders import IMAGE_EXTENSIONS, groups_from_names, labelled_images, list_images, read_image_folder
from mtdp_core.data.images import RESIZE_MODES
from mtdp_core.errors import ConfigurationError, MissingDependencyError
from mtdp_core.reporting import plot_learning_curve, write_csv
from mtdp_core.runtime import resolve_device
from mtdp_core.transfer.cache import FINGERPRINT_MODES

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared options


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _grid_entry(text: str) -> tuple[str, list]:
    name, sep, values = text.partition("=")
    if not sep or not name or not values:
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    parsed: list = []
    for v in values.split(","):
        try:
            parsed.append(int(v) if v.lstrip("-").isdigit() else float(v))
        except ValueError:
            parsed.append(v)
    return name, parsed


def _backbone_names() -> str:
    try:
        return ", ".join(list_backbones())
    except MissingDependencyError:  # torch-free install: the registry needs torch
        return "a registered backbone (`mtdp backbones` where torch is installed)"


def _add_mpp_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="resolution of the training images in µm per pixel (e.g. 0.5 for 20x), recorded in the model: "
        "`mtdp slides classify` reads slide tiles at it",
    )


def add_backbone_options(p: argparse.ArgumentParser, *, default: str = "densenet121") -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=default, help=f"one of: {_backbone_names()} (default: {default})")
    g.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet, imagenet_v2, mtdp, random, or a checkpoint file (default: imagenet)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of random weights, folds and training (default: 0)")
    g.add_argument("--sha256", default=None, help="expected sha256 of the weights file (checked)")
    g.add_argument("--size", type=int, default=224, help="input size in pixels (default: 224)")
    g.add_argument(
        "--resize",
        default="center_crop",
        choices=RESIZE_MODES,
        help="center_crop keeps the aspect ratio, stretch does not (default: center_crop)",
    )


def backbone_kwargs(args: argparse.Namespace) -> dict:
    """The options of :func:`add_backbone_options` as the keyword arguments of ``FeatureExtractor``
    and ``FineTuner`` (after their backbone and weights)."""
    return {"seed": args.seed, "sha256": args.sha256, "image_size": args.size, "resize": args.resize}


def add_runtime_options(
    p: argparse.ArgumentParser,
    *,
    cache: bool = True,
    batch_size: int | None = None,
    engine: bool = True,
    gpu_decode: bool = True,
) -> None:
    g = p.add_argument_group("runtime")
    if engine:
        from mtdp_core.inference.engines import ENGINES

        g.add_argument(
            "--engine",
            default="auto",
            choices=ENGINES,
            help="what runs the frozen backbone: onnxruntime (its ONNX graph, exported once and cached, see "
            "`mtdp engine`; CPU only, faster there), torch, or auto: onnxruntime on a CPU, torch on CUDA "
            "(default: auto)",
        )
    if engine and gpu_decode:
        g.add_argument(
            "--gpu-decode",
            action="store_true",
            help="torch on CUDA: decode JPEG files on the GPU (nvJPEG) instead of in the worker processes "
            "(features differ at the level of resampling rounding; ignored without a GPU)",
        )
    if batch_size is None:
        g.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="images per forward pass (default: automatic: 8 at 224 px on CPU, 128 on GPU)",
        )
    else:
        g.add_argument(
            "--batch-size", type=int, default=batch_size, help=f"images per training step (default: {batch_size})"
        )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that decode images while the model runs (default: automatic, see docs/transfer.md)",
    )
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default: auto)")
    g.add_argument(
        "--no-amp",
        dest="amp",
        action="store_false",
        help="no mixed precision on CUDA (never used on CPU, where it is slower)",
    )
    if cache:
        g.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="on-disk feature cache: reused when nothing changed, resumed after an interruption",
        )
        g.add_argument(
            "--fingerprint",
            default="stat",
            choices=FINGERPRINT_MODES,
            help="identify input files by path+size+mtime (stat) or by content (default: stat)",
        )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def runtime_kwargs(args: argparse.Namespace) -> dict:
    """The options of :func:`add_runtime_options` that every network run takes, as the library's
    keyword arguments (``--workers`` is ``num_workers``)."""
    return {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "device": args.device,
        "amp": args.amp,
        "progress": args.progress,
    }


def _extractor(args: argparse.Namespace):
    from mtdp_core.transfer.features import FeatureExtractor

    return FeatureExtractor(
        args.backbone,
        args.weights,
        **backbone_kwargs(args),
        **runtime_kwargs(args),
        cache_dir=getattr(args, "cache_dir", None),
        fingerprint=getattr(args, "fingerprint", "stat"),
        engine=args.engine,
        gpu_decode=args.gpu_decode,
    )


def _inputs_from(items: list[Path]) -> list[Path]:
    """Image files given directly, and the images under folders given."""
    out: list[Path] = []
    for item in items:
        if item.is_dir():
            out.extend(list_images(item))
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ConfigurationError(
                    f"{item} is not an image ({', '.join(IMAGE_EXTENSIONS)}): give images or folders."
                )
            out.append(item)
        else:
            raise ConfigurationError(f"{item} does not exist: give image files or folders of images.")
    if not out:
        raise ConfigurationError(f"No images found in {', '.join(map(str, items))}.")
    return out


# --------------------------------------------------------------------------- features


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_features(subparsers)
    _register_probe(subparsers)
    _register_predict(subparsers)
    _register_finetune(subparsers)


def _register_features(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "features",
        help="extract features of a folder of images (cached, resumable)",
        description=(
            "Extract the pooled features of every image under FOLDER and save them as a .npz file: "
            "`features` (n_images, n_features) float32, `paths` (relative to FOLDER), `labels` (the class "
            "folder of each image under FOLDER, '' for images directly in it), `groups` (with --groups) and "
            "`identity` (JSON: backbone, weights with sha256, preprocessing). With --cache-dir, features "
            "are streamed to an on-disk cache: a second run reads them back, an interrupted run resumes."
        ),
    )
    p.add_argument("folder", type=Path, help="folder of images (searched recursively; class sub-folders become labels)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .npz file")
    p.add_argument(
        "--groups",
        default=None,
        help="group id of each image from its file name: 'prefix' (text before the first _, "
        "e.g. the image id of Cytomine crops) or a regular expression whose first group is the id",
    )
    add_backbone_options(p)
    add_runtime_options(p)
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace) -> int:
    images = read_image_folder(args.folder, labels_file=None)
    if not images:
        raise ConfigurationError(f"No images found under {args.folder}: give a folder with .jpg/.png/.tif files.")
    paths = [i.path for i in images]
    groups = groups_from_names(paths, args.groups)
    fx = _extractor(args)
    feats, stats = fx.extract(paths)
    identity = fx.identity()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(
        features=np.asarray(feats),
        paths=np.array([str(p.relative_to(args.folder)) for p in paths]),
        labels=np.array([i.label or "" for i in images]),
        identity=np.array(json.dumps(identity)),
    )
    if groups is not None:
        arrays["groups"] = groups
    np.savez(args.output, **arrays)
    rate = f", {stats['n_computed'] / stats['seconds']:.1f} images/s" if stats["n_computed"] else ""
    logger.info(
        "%d x %d features -> %s (%d computed, %d from cache%s)",
        *feats.shape,
        args.output,
        stats["n_computed"],
        stats["n_cached"],
        rate,
    )
    return 0


# --------------------------------------------------------------------------- probe


def _register_probe(subparsers: argparse._SubParsersAction) -> None:
    from mtdp_core.transfer.probes import SCORINGS, list_probes

    p = subparsers.add_parser(
        "probe",
        help="train a linear SVM (or another probe) on features, with grouped cross-validation",
        description=(
            "Train a classifier on frozen features with the paper's protocol: a linear SVM, C in "
            "{1e-10, ..., 1e-1, 1} chosen by 5-fold cross-validation grouped by --groups (patient, slide "
            "or image ids; stratified folds with a warning when there are too few groups), ROC AUC for "
            "binary tasks and accuracy otherwise, then refitted on all training data. TRAIN is a features "
            ".npz (from `mtdp features`) or a folder with one sub-folder per class (features are then "
            "extracted with the backbone options). Prints the CV score of each parameter and saves the model "
            "as a pickle-free .npz that `mtdp predict` and the Cytomine apps load."
        ),
    )
    p.add_argument("train", type=Path, help="features .npz, or a folder TRAIN/<class>/<images>")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write (.npz)")
    p.add_argument("--test", type=Path, default=None, help="test set (same kind as TRAIN): report its score")
    p.add_argument(
        "--kind",
        default="svm",
        choices=list_probes(),
        help="svm: LinearSVC (the paper); logreg: logistic regression; rf: random forest (default: svm)",
    )
    p.add_argument(
        "--grid",
        type=_grid_entry,
        action="append",
        default=None,
        metavar="NAME=V1,V2",
        help="replace the kind's grid for one parameter, e.g. C=1e-3,1e-2 (repeatable)",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument(
        "--groups",
        default=None,
        help="group ids from file names: 'prefix' (before the first _) or a regex with one group; "
        "for a .npz, its stored groups are used by default",
    )
    p.add_argument(
        "--scoring",
        default="auto",
        choices=SCORINGS,
        help="auto: ROC AUC for two classes, accuracy otherwise (default: auto)",
    )
    p.add_argument("--class-weight", default=None, choices=["balanced"], help="weight classes by inverse frequency")
    p.add_argument("--n-jobs", type=int, default=None, help="parallel fits (GridSearchCV engine, random forests)")
    p.add_argument(
        "--learning-curve",
        type=_floats,
        default=None,
        metavar="F1,F2,...",
        help="also train on these fractions of TRAIN (e.g. 0.01,0.05,0.1,0.25,0.5,1) and score each on "
        "--test: writes OUTPUT-curve.csv and .png",
    )
    p.add_argument("--curve-seeds", type=_ints, default=[0, 1, 2], help="seeds of the learning curve (default: 0,1,2)")
    _add_mpp_option(p)
    add_backbone_options(p)
    add_runtime_options(p)
    p.set_defaults(func=_cmd_probe)


def _load_set(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Features, labels, groups and feature identity of a .npz or a class-folder tree."""
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                content = {k: data[k] for k in data.files}
        except (ValueError, OSError) as exc:
            raise ConfigurationError(f"{path} is not a features file from `mtdp features` ({exc}).") from None
        missing = [k for k in ("features", "labels", "identity") if k not in content]
        if missing:
            raise ConfigurationError(f"{path} lacks {missing}: give a features file written by `mtdp features`.")
        paths = [Path(p) for p in content.get("paths", [])]
        groups = groups_from_names(paths, args.groups) if args.groups else content.get("groups")
        return {
            "X": content["features"],
            "y": content["labels"],
            "groups": groups,
            "identity": json.loads(str(content["identity"])),
            "paths": paths,
        }
    if path.is_dir():
        paths, labels = labelled_images(path)
        fx = _extractor(args)
        return {
            "X": fx.transform(paths),
            "y": np.array(labels),
            "groups": groups_from_names(paths, args.groups),
            "identity": fx.identity(),
            "paths": paths,
        }
    raise ConfigurationError(f"{path} is neither a features .npz nor a folder of class folders.")


def _cmd_probe(args: argparse.Namespace) -> int:
    from mtdp_core.transfer.persistence import save_model
    from mtdp_core.transfer.probes import LearningCurve, Probe

    train = _load_set(args.train, args)
    if "" in set(train["y"].tolist()):
        raise ConfigurationError(f"Some images of {args.train} are not in a class folder: put each in TRAIN/<class>/.")
    probe = Probe(
        args.kind,
        param_grid=dict(args.grid) if args.grid else None,
        n_splits=args.folds,
        scoring=args.scoring,
        class_weight=args.class_weight,
        seed=args.seed,
        n_jobs=args.n_jobs,
        device=str(resolve_device(args.device)),
    )
    probe.fit(train["X"], train["y"], train["groups"])
    print(f"{args.kind} on {len(train['y'])} samples, {len(probe.classes_)} classes, {probe.cv_}")
    print(probe.cv_table())
    extra: dict = {"train": str(args.train)}
    test = None
    if args.test is not None:
        test = _load_set(args.test, args)
        if test["identity"] != train["identity"]:
            raise ConfigurationError(
                f"{args.test} holds features of another backbone or preprocessing than {args.train}."
            )
        score = probe.score(test["X"], test["y"])
        extra["test"] = {"path": str(args.test), "metric": probe.scoring_, "score": score, "n": len(test["y"])}
        print(f"test {probe.scoring_}: {score:.4f} ({len(test['y'])} samples)")
    save_model(args.output, probe, features=train["identity"], extra=extra, mpp=args.mpp)
    print(f"model saved to {args.output}")
    if args.learning_curve:
        if test is None:
            raise ConfigurationError("--learning-curve scores each subset on a test set: give --test.")
        rows = LearningCurve(probe, args.learning_curve, args.curve_seeds).run(
            train["X"], train["y"], test["X"], test["y"], groups=train["groups"]
        )
        for r in rows:
            r["method"] = f"{train['identity'].get('arch')} {args.kind}"
            r["best_params"] = json.dumps(r["best_params"])
        stem = args.output.with_suffix("")
        write_csv(rows, f"{stem}-curve.csv")
        plot_learning_curve(rows, f"{stem}-curve.png")
        for f in sorted({r["fraction"] for r in rows}):
            mine = [r for r in rows if r["fraction"] == f]
            scores = [r["test_score"] for r in mine]
            print(
                f"learning curve {100 * f:g}% ({mine[0]['n_train']} samples): test {probe.scoring_} "
                f"{np.mean(scores):.4f} ± {np.std(scores):.4f}"
            )
        print(f"learning curve saved to {stem}-curve.csv and {stem}-curve.png")
    return 0


# --------------------------------------------------------------------------- predict


def _register_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="apply a saved model (probe or fine-tuned) to images",
        description=(
            "Load a model saved by `mtdp probe` or `mtdp finetune` (validated: checksum, format version, "
            "backbone), run it on the images given (files or folders) and write one CSV row per image: path, "
            "predicted label, class name, Cytomine term id, confidence (probability, or SVM decision value) "
            "and the score of every class. The backbone and preprocessing come from the model file."
        ),
    )
    p.add_argument("model", type=Path, help="model file (.npz) written by mtdp")
    p.add_argument("inputs", type=Path, nargs="*", help="image files or folders of images")
    p.add_argument("-o", "--output", type=Path, default=None, help="CSV file to write (default: standard output)")
    p.add_argument(
        "--weights",
        default=None,
        help="the backbone's weights file, for a model trained on features from a local checkpoint",
    )
    p.add_argument("--info", action="store_true", help="print the model's metadata (JSON) and exit")
    add_runtime_options(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from mtdp_core.transfer.persistence import load_model, read_metadata

    if args.info:
        meta = read_metadata(args.model)
        meta.pop("arrays", None)
        print(json.dumps(meta, indent=1))
        return 0
    if not args.inputs:
        raise ConfigurationError("No images given: pass image files or folders after the model file.")
    model = load_model(args.model)
    paths = _inputs_from(args.inputs)
    runtime = runtime_kwargs(args)
    if model.kind != "finetune":  # a fine-tuned network is trained and run by torch
        runtime.update(
            cache_dir=args.cache_dir, fingerprint=args.fingerprint, engine=args.engine, gpu_decode=args.gpu_decode
        )
    predictions = model.predict_images(paths, weights=args.weights, **runtime)
    handle = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "name", "term_id", "confidence", *[f"score_{c.name}" for c in model.classes]])
        for path, label, name, term, conf, scores in zip(
            paths, predictions.labels, predictions.names, predictions.ids, predictions.confidence, predictions.scores
        ):
            writer.writerow(
                [str(path), label, name, "" if term is None else term, f"{conf:.6g}", *[f"{s:.6g}" for s in scores]]
            )
    finally:
        if args.output:
            handle.close()
    counts = {c.name: int((predictions.index == i).sum()) for i, c in enumerate(model.classes)}
    logger.info("%d images predicted: %s%s", len(paths), counts, f" -> {args.output}" if args.output else "")
    return 0


# --------------------------------------------------------------------------- finetune


def _register_finetune(subparsers: argparse._SubParsersAction) -> None:
    from mtdp_core.transfer.finetune import OPTIMIZERS, PAPER_LEARNING_RATES

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a backbone + new linear layer on a folder of class folders",
        description=(
            "Fine-tune the backbone with a new linear layer on TRAIN/<class>/<images>, as in the paper: the "
            "paper's augmentation (random square crop, flips), each learning rate of --lrs restarted from the "
            "same weights, the best (learning rate, epoch) on the validation set kept (validation: --val, or "
            "a held-out --val-fraction of TRAIN, grouped by --groups). --weights random trains from scratch "
            "(the paper's baseline). Saves a pickle-free model for `mtdp predict`, and the training history "
            "as OUTPUT-history.csv."
        ),
    )
    p.add_argument("train", type=Path, help="folder TRAIN/<class>/<images>")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write (.npz)")
    p.add_argument("--val", type=Path, default=None, help="validation folder VAL/<class>/<images>")
    p.add_argument("--test", type=Path, default=None, help="test folder: report the kept network's score on it")
    p.add_argument(
        "--groups",
        default=None,
        help="group ids from file names for the validation split: 'prefix' or a regex with one group",
    )
    p.add_argument(
        "--lrs",
        type=_floats,
        default=list(PAPER_LEARNING_RATES),
        help="learning rates to try (default: 1e-3,1e-4,1e-5,1e-6, the paper's)",
    )
    p.add_argument("--epochs", type=int, default=100, help="epochs per learning rate (default: 100, the paper's)")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="sgd (momentum 0.9) or adam (default: sgd)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty (default: 0)")
    p.add_argument("--patience", type=int, default=None, help="stop a learning rate after N epochs without improvement")
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="held out for validation without --val (default: 0.2)"
    )
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crops and flips")
    p.add_argument(
        "--export-backbone",
        type=Path,
        default=None,
        help="also save the fine-tuned backbone alone (.pth) for `mtdp features --weights`",
    )
    _add_mpp_option(p)
    add_backbone_options(p)
    add_runtime_options(p, cache=False, batch_size=32, engine=False)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from mtdp_core.transfer.finetune import FineTuner
    from mtdp_core.transfer.persistence import save_model

    paths, labels = labelled_images(args.train)
    val_paths, val_labels = labelled_images(args.val) if args.val else (None, None)
    tuner = FineTuner(
        args.backbone,
        args.weights,
        **backbone_kwargs(args),
        **runtime_kwargs(args),
        learning_rates=args.lrs,
        epochs=args.epochs,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        patience=args.patience,
        val_fraction=args.val_fraction,
        augment=args.augment,
    )
    tuner.fit(paths, labels, groups_from_names(paths, args.groups), X_val=val_paths, y_val=val_labels)
    print(
        f"best: lr {tuner.best_lr_:g}, epoch {tuner.best_epoch_}, validation {tuner.scoring_} {tuner.best_score_:.4f}"
    )
    extra: dict = {"train": str(args.train)}
    if args.test:
        test_paths, test_labels = labelled_images(args.test)
        score = tuner.score(test_paths, test_labels)
        extra["test"] = {"path": str(args.test), "metric": tuner.scoring_, "score": score, "n": len(test_paths)}
        print(f"test {tuner.scoring_}: {score:.4f} ({len(test_paths)} images)")
    save_model(args.output, tuner, extra=extra, mpp=args.mpp)
    write_csv(tuner.history_, f"{args.output.with_suffix('')}-history.csv")
    print(f"model saved to {args.output}, history to {args.output.with_suffix('')}-history.csv")
    if args.export_backbone:
        tuner.export_backbone(args.export_backbone)
        print(f"fine-tuned backbone saved to {args.export_backbone}")
    return 0
