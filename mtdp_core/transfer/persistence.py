"""Saved classifiers that are safe to load from untrusted storage: arrays + JSON, no pickle.

A model file (``.npz``, a zip of ``.npy`` arrays) holds:

- ``__meta__``: UTF-8 JSON (as a uint8 array): format name and version, mtdp version,
  probe kind, classes (label, name, Cytomine term id), backbone (architecture, feature size,
  weights source / file / sha256 / seed), preprocessing, the resolution of the training
  images (µm per pixel, when known: slide classification reads tiles at it), estimator
  parameters, training summary (CV scheme, metric, grid scores, chosen parameters), user
  metadata, the list of arrays with their dtypes and shapes, and a sha256 over all of it;
- numeric arrays only, written and read by the codec registered for the model's kind
  (``transfer.codecs``): ``coef``/``intercept`` for linear probes, the trees' node arrays
  for random forests, ``net.<name>`` tensors for a fine-tuned network.

Loading uses ``np.load(allow_pickle=False)`` (object arrays are refused, so loading cannot
run code), checks sizes before reading (no zip bombs), recomputes the checksum (a file
altered after saving is rejected), validates every field and shape, then rebuilds the
predictor. The checksum detects corruption and edits, not a forger who rewrites it too:
safety comes from the format, which can only ever yield numbers and JSON.

``load_model(path, expect_backbone=...)`` also refuses a model made for other features
(another architecture, other weights, another preprocessing), with a message that says
which backbone to use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core import __version__
from mtdp_core.data.images import Preprocessing
from mtdp_core.errors import ConfigurationError, IncompatibleModelError, ModelFileError, TamperedModelError
from mtdp_core.transfer.codecs import codec_for, get_codec

logger = logging.getLogger(__name__)

MODEL_FORMAT = "mtdp_core.classifier"
MODEL_FORMAT_VERSION = 1
MIN_MODEL_FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB uncompressed: far above a DenseNet201 fine-tuned model
_META = "__meta__"
# What a caller may choose when running a saved model: how, not what, it computes.
_RUNTIME_OPTIONS = {
    "batch_size",
    "num_workers",
    "device",
    "amp",
    "cache_dir",
    "progress",
    "fingerprint",
    "chunk_size",
    "engine",
    "gpu_decode",
}
_ALLOWED_KINDS = "fiub"  # float, signed/unsigned int, bool arrays only


@dataclass(frozen=True)
class ClassInfo:
    """One class: the label the classifier predicts, a display name, a Cytomine term id."""

    label: int | str
    name: str
    id: int | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "id": self.id}


def make_classes(labels: Sequence, names: Mapping | None = None, ids: Mapping | None = None) -> list[ClassInfo]:
    """ClassInfo for each label: name from ``names`` (default: the label as text), id from
    ``ids`` (default: the label itself when it is an integer, as Cytomine term ids are)."""
    out = []
    for label in labels:
        label = label.item() if isinstance(label, np.generic) else label
        if not isinstance(label, (int, str)):
            raise ModelFileError(f"Class label {label!r} is neither an integer nor a string: use ints or names.")
        name = str((names or {}).get(label, label))
        term_id = (ids or {}).get(label, label if isinstance(label, int) else None)
        out.append(ClassInfo(label, name, None if term_id is None else int(term_id)))
    return out


@dataclass
class SavedModel:
    """A classifier loaded from (or about to be written to) a model file.

    Attributes:
        kind: ``"svm"``, ``"logreg"``, ``"rf"`` (probes on features) or ``"finetune"``.
        estimator: what its codec (``transfer.codecs``) rebuilds: a fitted LinearSVC or
            LogisticRegression, a ``codecs.ForestPredictor`` for ``rf``, or for ``finetune``
            the network (``finetune.FineTunedNetwork``).
        classes: one ClassInfo per output, in the estimator's order.
        backbone: identity of the features: ``arch``, ``n_features``, ``weights`` (source,
            file, sha256, seed, mean, std). For ``finetune``: the initial weights.
        preprocessing: how images become inputs.
        training: CV scheme, metric, scores, chosen parameters (informative).
        extra: the caller's metadata (e.g. Cytomine project and job ids).
        mpp: resolution of the training images, µm per pixel (None: not recorded, as in
            files saved before it was).
    """

    kind: str
    estimator: Any
    classes: list[ClassInfo]
    backbone: dict
    preprocessing: Preprocessing
    training: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    mpp: float | None = None
    mtdp_version: str = __version__
    format_version: int = MODEL_FORMAT_VERSION
    path: Path | None = None

    @property
    def labels(self) -> np.ndarray:
        """The labels, in output order (ints or strings)."""
        return _labels_array([c.label for c in self.classes])

    @property
    def arch(self) -> str:
        return str(self.backbone.get("arch"))

    def describe_backbone(self) -> str:
        w = self.backbone.get("weights", {})
        detail = f"seed {w.get('seed')}" if w.get("source") == "random" else f"sha256 {str(w.get('sha256'))[:12]}"
        return f"{self.arch} ({w.get('source')} weights, {detail})"

    def check_backbone(self, backbone: Any) -> None:
        """Raise IncompatibleModelError unless ``backbone`` (a Backbone, its ``identity()`` or
        a FeatureExtractor) gives the features this model was trained on."""
        from mtdp_core.transfer.features import FeatureExtractor

        if isinstance(backbone, FeatureExtractor):
            identity = backbone.identity()
        elif isinstance(backbone, dict):
            identity = backbone
        else:
            identity = backbone.identity()
        mine, theirs = self.backbone.get("weights", {}), identity.get("weights", {})
        fix = f"use the backbone it was trained with: {self.describe_backbone()}"
        if identity.get("arch") != self.arch:
            raise IncompatibleModelError(
                f"Model was trained on {self.arch} features, not {identity.get('arch')}: {fix}."
            )
        keys = ("source", "sha256", "seed") if mine.get("source") == "random" else ("source", "sha256")
        for key in keys:
            if mine.get(key) != theirs.get(key):
                raise IncompatibleModelError(
                    f"Model was trained on {self.arch} features from other weights ({key} {mine.get(key)!r}, "
                    f"given {theirs.get(key)!r}): {fix}."
                )
        prep = identity.get("preprocessing")
        if prep is not None and _norm(prep) != _norm(self.preprocessing.to_dict()):
            raise IncompatibleModelError(
                f"Model was trained with preprocessing {self.preprocessing.to_dict()}, not {prep}: "
                f"use image size {self.preprocessing.size} and resize {self.preprocessing.resize!r}."
            )

    # ----------------------------------------------------------------- prediction

    def feature_extractor(self, *, weights: str | os.PathLike | None = None, **runtime: Any):
        """A FeatureExtractor that gives this model's features.

        ``weights`` is needed when the backbone was loaded from a file (source ``"file"``):
        the path of that file (its sha256 is checked). ``runtime``: batch_size,
        num_workers, device, amp, cache_dir, progress.
        """
        from mtdp_core.transfer.features import FeatureExtractor

        if self.kind == "finetune":
            raise ModelFileError(
                "A fine-tuned model runs its own network: use predict_images(), not a feature extractor."
            )
        fixed = set(runtime) - _RUNTIME_OPTIONS
        if fixed:
            raise ConfigurationError(
                f"{sorted(fixed)} are fixed by the model (they make its features): pass only "
                f"{sorted(_RUNTIME_OPTIONS)}."
            )
        w = self.backbone.get("weights", {})
        source = w.get("source")
        if weights is None:
            if source == "file":
                raise IncompatibleModelError(
                    f"Model was trained on {self.arch} features from the weights file {w.get('file')} "
                    f"(sha256 {str(w.get('sha256'))[:16]}...): pass that file as weights."
                )
            weights = source
        return FeatureExtractor(
            self.arch,
            weights,
            seed=w.get("seed") if w.get("seed") is not None else 0,
            sha256=w.get("sha256") if source != "random" else None,
            image_size=self.preprocessing.size,
            resize=self.preprocessing.resize,
            **runtime,
        )

    def decision_scores(self, features: np.ndarray) -> np.ndarray:
        """Per-class scores from features (n, n_features) -> (n, n_classes): probabilities when
        the estimator has them, else decision values (binary: (n, 2) as (-d, d))."""
        if self.kind == "finetune":
            raise ModelFileError("A fine-tuned model takes images: use predict_images().")
        if hasattr(self.estimator, "predict_proba"):
            return self.estimator.predict_proba(features)
        d = self.estimator.decision_function(features)
        return np.stack([-d, d], axis=1) if d.ndim == 1 else d

    def predict_images(self, inputs: Any, *, weights: str | os.PathLike | None = None, **runtime: Any) -> Predictions:
        """Predict images (paths, PIL images or arrays): labels and per-class scores."""
        if self.kind == "finetune":
            from mtdp_core.transfer.finetune import predict_logits, softmax

            scores = softmax(predict_logits(self.estimator, inputs, self.preprocessing, **runtime))
        else:
            features = self.feature_extractor(weights=weights, **runtime).transform(inputs)
            scores = self.decision_scores(features)
        return Predictions(self, scores)


@dataclass
class Predictions:
    """What ``SavedModel.predict_images`` returns.

    Attributes:
        scores: (n, n_classes) probabilities (logreg, rf, finetune) or decision values (svm).
        index: (n,) index of the predicted class; labels, names, ids: per sample.
        confidence: (n,) the predicted class's probability, or its decision value for svm.
    """

    model: SavedModel
    scores: np.ndarray

    @property
    def index(self) -> np.ndarray:
        return np.asarray(self.scores).argmax(axis=1)

    @property
    def labels(self) -> np.ndarray:
        return self.model.labels[self.index]

    @property
    def names(self) -> list[str]:
        return [self.model.classes[i].name for i in self.index]

    @property
    def ids(self) -> list[int | None]:
        return [self.model.classes[i].id for i in self.index]

    @property
    def confidence(self) -> np.ndarray:
        return np.asarray(self.scores)[np.arange(len(self.scores)), self.index]

    @property
    def is_probability(self) -> bool:
        return self.model.kind != "svm"


def _labels_array(labels: Sequence) -> np.ndarray:
    return np.array(labels, dtype=np.int64) if all(isinstance(v, int) for v in labels) else np.array(labels, dtype=str)


def _norm(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


# --------------------------------------------------------------------------- checksum, save, load


def _checksum(meta: dict, arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in meta.items() if k != "checksum"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_model(
    path: str | os.PathLike,
    model: Any,
    *,
    features: Any = None,
    class_names: Mapping | None = None,
    class_ids: Mapping | None = None,
    extra: dict | None = None,
    mpp: float | None = None,
) -> Path:
    """Write a classifier to ``path`` (.npz) with everything needed to use and check it.

    Args:
        model: a fitted ``Probe``, a fitted LinearSVC / LogisticRegression /
            RandomForestClassifier, or a fitted ``FineTuner``.
        features: for probes: the FeatureExtractor (or a dict ``{**backbone.identity(),
            "preprocessing": {...}}``) that made the training features. Not needed for a FineTuner.
        class_names: {label: display name}; class_ids: {label: Cytomine term id}.
        extra: JSON-able metadata kept in the file (project, job, dataset...).
        mpp: resolution of the training images, µm per pixel (slide classification reads
            tiles at it); None when unknown.

    The file is written to a temporary name then renamed: never half-written.
    """
    from mtdp_core.transfer.probes import Probe

    # A FineTuner exists only if its (torch) module was imported: probes are saved without torch.
    finetune = sys.modules.get("mtdp_core.transfer.finetune")
    training: dict = {}
    mpp = _check_mpp(mpp, "save_model", ConfigurationError)
    if finetune is not None and isinstance(model, finetune.FineTuner):
        estimator = model.network_
        identity = {**model.backbone_identity_, "preprocessing": model.preprocessing_.to_dict()}
        training = model.training_summary()
    else:
        if isinstance(model, Probe):
            estimator = model.estimator_
            training = {
                "probe": model.kind,
                "cv": model.cv_,
                "scoring": model.scoring_,
                "best_params": model.best_params_,
                "best_score": model.best_score_,
                "grid": [
                    {"params": p, "mean": float(m), "std": float(s)}
                    for p, m, s in zip(
                        model.cv_results_["params"],
                        model.cv_results_["mean_test_score"],
                        model.cv_results_["std_test_score"],
                    )
                ],
            }
        else:
            estimator = model
        codec_for(estimator)  # an estimator the format cannot hold fails first
        if features is None:
            raise ModelFileError("save_model needs features=: the FeatureExtractor that made the training features.")
        identity = features if isinstance(features, dict) else features.identity()
        if int(identity.get("n_features", -1)) != int(estimator.n_features_in_):
            raise ModelFileError(
                f"The classifier takes {estimator.n_features_in_} features but the backbone {identity.get('arch')} "
                f"gives {identity.get('n_features')}: pass the FeatureExtractor that made its training features."
            )
    codec = codec_for(estimator)
    kind = codec.kind  # the codec registered for this estimator (transfer.codecs)
    classes = make_classes(list(model.classes_), class_names, class_ids)
    arrays, estimator_info = codec.encode(estimator)
    for name, a in arrays.items():
        if a.dtype.kind not in _ALLOWED_KINDS:
            raise ModelFileError(f"Array {name} has dtype {a.dtype}: only numeric arrays can be saved.")
    identity = _norm(identity)
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "mtdp_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kind": kind,
        "classes": [c.to_dict() for c in classes],
        "backbone": {k: v for k, v in identity.items() if k != "preprocessing"},
        "preprocessing": identity.get("preprocessing"),
        "resolution": None if mpp is None else {"mpp": mpp},
        "estimator": estimator_info,
        "training": _norm(training),
        "extra": _norm(extra or {}),
        "arrays": {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in arrays.items()},
    }
    meta["checksum"] = _checksum(meta, arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **{_META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}, **arrays)
    os.replace(tmp, path)
    logger.info("saved %s model (%d classes, %s) to %s", kind, len(classes), meta["backbone"].get("arch"), path)
    return path


def _read_file(path: Path, max_bytes: int) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
            if total > max_bytes:
                raise ModelFileError(
                    f"Model file {path.name} would unpack to {total / 2**20:.0f} MiB, over the "
                    f"{max_bytes / 2**20:.0f} MiB limit: not a model file, or raise max_bytes."
                )
            names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile:
        raise ModelFileError(
            f"{path} is not an mtdp model file (not an .npz archive): give a file saved by mtdp."
        ) from None
    if _META not in names:
        raise ModelFileError(f"{path} is not an mtdp model file (no {_META} entry): give a file saved by mtdp.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {name: npz[name] for name in names}
    except ValueError as exc:  # object arrays need pickle: refused
        raise ModelFileError(
            f"{path} holds non-numeric arrays ({exc}): refused, model files hold numbers and JSON only."
        ) from None
    except OSError as exc:
        raise ModelFileError(f"{path} cannot be read ({exc}): the file is damaged.") from None
    try:
        meta = json.loads(raw.pop(_META).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{path}: the metadata is not valid JSON: the file is damaged.") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: the metadata is not a JSON object: the file is damaged.")
    return meta, raw


def load_model(
    path: str | os.PathLike,
    *,
    expect_backbone: Any = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SavedModel:
    """Read and validate a model file written by ``save_model``.

    Args:
        path: the .npz file (possibly from untrusted storage: nothing in it is executed).
        expect_backbone: the Backbone / FeatureExtractor / identity dict the caller will
            extract features with; a model made for other features is refused.
        max_bytes: refuse files that unpack to more than this.

    Raises:
        ModelFileError: not a model file, damaged, or with invalid content.
        TamperedModelError: the content differs from the checksum recorded at saving time.
        IncompatibleModelError: a format version this mtdp cannot read, or another backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {path} does not exist: give the path of a model saved by mtdp.")
    meta, arrays = _read_file(path, max_bytes)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{path} is not an mtdp classifier (format {meta.get('format')!r}): give a model saved by mtdp."
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise IncompatibleModelError(
            f"Model file {path.name} has format version {version!r}, made by mtdp {meta.get('mtdp_version')}; this "
            "mtdp "
            f"{__version__} reads versions {MIN_MODEL_FORMAT_VERSION}-{MODEL_FORMAT_VERSION}: upgrade mtdp."
        )
    if version < MIN_MODEL_FORMAT_VERSION:
        raise IncompatibleModelError(
            f"Model file {path.name} has format version {version}, older than this mtdp {__version__} reads "
            f"({MIN_MODEL_FORMAT_VERSION}+): retrain the model."
        )
    if meta.get("checksum") != _checksum(meta, arrays):
        raise TamperedModelError(
            f"Model file {path.name} was modified after it was saved (checksum mismatch): use the original file."
        )
    declared = meta.get("arrays", {})
    if set(declared) != set(arrays):
        raise ModelFileError(f"Model file {path.name} lists other arrays than it holds: the file is damaged.")
    for name, a in arrays.items():
        if a.dtype.kind not in _ALLOWED_KINDS:
            raise ModelFileError(f"Model file {path.name}: array {name} has dtype {a.dtype}; only numbers are allowed.")
    try:
        kind = meta["kind"]
        classes = [ClassInfo(c["label"], str(c["name"]), c.get("id")) for c in meta["classes"]]
        backbone = dict(meta["backbone"])
        n_features = int(backbone["n_features"])
        preprocessing = Preprocessing(**meta["preprocessing"])
        estimator_info = dict(meta["estimator"])
        mpp = _check_mpp((meta.get("resolution") or {}).get("mpp"), f"Model file {path.name}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"Model file {path.name} lacks or garbles a field ({exc}): the file is damaged.") from None
    try:
        codec = get_codec(kind)
    except ModelFileError as exc:
        raise ModelFileError(f"Model file {path.name}: {exc}") from None
    if len(classes) < 2 or not all(isinstance(c.label, (int, str)) for c in classes):
        raise ModelFileError(
            f"Model file {path.name} has invalid classes {meta.get('classes')!r}: the file is damaged."
        )
    labels = _labels_array([c.label for c in classes])
    estimator = codec.decode(arrays, estimator_info, labels, n_features)
    model = SavedModel(
        kind=kind,
        estimator=estimator,
        classes=classes,
        backbone=backbone,
        preprocessing=preprocessing,
        training=meta.get("training", {}),
        extra=meta.get("extra", {}),
        mpp=mpp,
        mtdp_version=str(meta.get("mtdp_version")),
        format_version=version,
        path=path,
    )
    if expect_backbone is not None:
        model.check_backbone(expect_backbone)
    logger.info("loaded %s model %s: %d classes, %s", kind, path.name, len(classes), model.describe_backbone())
    return model


def _check_mpp(value: Any, where: str, error: type[Exception] = ModelFileError) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 1e4):
        raise error(f"{where}: invalid training resolution {value!r} µm/px: use a positive number (e.g. 0.5).")
    return float(value)


def read_metadata(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """The JSON metadata of a model file, unvalidated (for display: ``mtdp predict --info``)."""
    return _read_file(Path(path), max_bytes)[0]


__all__ = [
    "ClassInfo",
    "Predictions",
    "SavedModel",
    "load_model",
    "make_classes",
    "read_metadata",
    "save_model",
]
