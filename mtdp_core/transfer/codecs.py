"""Model codecs: how each kind of model becomes numeric arrays + JSON, and back.

One registry, one codec per model kind, as the backbones' (``@register_codec("svm",
LinearSVC)`` on a ``ModelCodec`` subclass); ``persistence.save_model`` picks the codec of the
fitted estimator, ``load_model`` the codec of the file's ``kind``. Codecs use public
scikit-learn API only:

- linear probes (``svm``, ``logreg``) store ``coef_``/``intercept_`` and are rebuilt with
  their public constructor and fitted attributes;
- random forests (``rf``) store each tree's node arrays (``tree_.children_left``,
  ``threshold``, ``value``... : public attributes) and load as a ``ForestPredictor``, which
  predicts from them with numpy exactly as ``RandomForestClassifier.predict_proba`` does.
  scikit-learn has no public way to rebuild a fitted tree, and no safe one (its pickles run
  code), so the forest is not rebuilt at all: what predicting needs is kept, nothing else;
- fine-tuned networks (``finetune``) store their ``state_dict`` tensors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from sklearn.utils.validation import validate_data

from mtdp_core.errors import ModelFileError

Arrays = Mapping[str, np.ndarray]


class ModelCodec:
    """Encodes one kind of fitted model to ``(arrays, info)`` and decodes it back.

    ``kind`` and ``types`` (the estimator classes it encodes) are set by ``register_codec``.
    """

    kind: str = ""
    types: tuple[type, ...] = ()

    def encode(self, estimator: Any) -> tuple[dict[str, np.ndarray], dict]:
        """Numeric arrays and JSON-able info that ``decode`` turns back into a predictor."""
        raise NotImplementedError

    def decode(self, arrays: Arrays, info: dict, classes: np.ndarray, n_features: int) -> Any:
        """The predictor of a file's arrays and info (validated: a damaged file is a ModelFileError)."""
        raise NotImplementedError

    def encodes(self, estimator: Any) -> bool:
        """Whether this codec encodes ``estimator`` (an instance of one of ``types``)."""
        return isinstance(estimator, self.types)


_CODECS: dict[str, ModelCodec] = {}


def register_codec(kind: str, *types: type) -> Callable[[type[ModelCodec]], type[ModelCodec]]:
    """Register a codec class for model ``kind``, encoding estimators of ``types`` (decorator)."""

    def decorator(cls: type[ModelCodec]) -> type[ModelCodec]:
        if kind in _CODECS:
            raise ValueError(f"model codec {kind!r} is registered twice")
        codec = cls()
        codec.kind, codec.types = kind, types
        _CODECS[kind] = codec
        return cls

    return decorator


def list_codecs() -> list[str]:
    return sorted(_CODECS)


def get_codec(kind: str) -> ModelCodec:
    try:
        return _CODECS[kind]
    except KeyError:
        raise ModelFileError(
            f"Unknown model kind {kind!r}: use a model saved by mtdp ({', '.join(list_codecs())})."
        ) from None


def codec_for(estimator: Any) -> ModelCodec:
    """The codec of a fitted estimator (by its class)."""
    for codec in _CODECS.values():
        if codec.encodes(estimator):
            return codec
    names = ", ".join(t.__name__ for c in _CODECS.values() for t in c.types)
    raise ModelFileError(f"Cannot save a {type(estimator).__name__}: save a Probe, {names} or FineTuner.")


def json_params(estimator: BaseEstimator) -> dict:
    """The estimator's constructor parameters that JSON can hold (others take their default on load)."""
    params = {}
    for key, value in estimator.get_params(deep=False).items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, dict):
            value = {str(k): v for k, v in value.items()}
        try:
            json.dumps(value)
        except TypeError:
            continue  # not representable (e.g. a callable): the default is used on load
        params[key] = value
    return params


def known_params(cls: type, params: dict) -> dict:
    """``params`` that ``cls`` accepts (a file from another scikit-learn version may name others)."""
    valid = cls().get_params(deep=False)
    return {k: v for k, v in params.items() if k in valid}


# --------------------------------------------------------------------------- linear probes


class LinearCodec(ModelCodec):
    """``coef``/``intercept`` of a one-vs-rest (or binary) linear classifier."""

    def encode(self, estimator: Any) -> tuple[dict[str, np.ndarray], dict]:
        # Dtypes kept as fitted (float32 features give float32 coefficients): identical predictions.
        arrays = {"coef": np.asarray(estimator.coef_), "intercept": np.asarray(estimator.intercept_).reshape(-1)}
        info = {
            "class": type(estimator).__name__,
            "params": json_params(estimator),
            "n_features_in": int(estimator.n_features_in_),
        }
        return arrays, info

    def decode(self, arrays: Arrays, info: dict, classes: np.ndarray, n_features: int) -> Any:
        coef, intercept = arrays.get("coef"), arrays.get("intercept")
        rows = 1 if len(classes) == 2 else len(classes)
        if coef is None or intercept is None or coef.shape != (rows, n_features) or intercept.shape != (rows,):
            raise ModelFileError(
                f"Linear model arrays do not fit {len(classes)} classes x {n_features} features "
                f"(coef {None if coef is None else coef.shape}): the file is damaged."
            )
        cls = self.types[0]
        estimator = cls(**known_params(cls, info.get("params", {})))
        estimator.coef_, estimator.intercept_ = np.array(coef), np.array(intercept)
        estimator.classes_ = classes
        estimator.n_features_in_ = n_features
        estimator.n_iter_ = np.zeros(1, dtype=np.int32)
        return estimator


register_codec("svm", LinearSVC)(LinearCodec)
register_codec("logreg", LogisticRegression)(LinearCodec)


# --------------------------------------------------------------------------- random forests


class ForestPredictor(ClassifierMixin, BaseEstimator):
    """A saved random forest: its trees' node arrays, and ``RandomForestClassifier``'s predictions.

    Built by ``ForestCodec.decode`` (it has no ``fit``). Trees are walked with numpy, all at
    once: features are compared as float32 with float64 thresholds, leaves give their class
    fractions, and the forest averages them tree by tree, as scikit-learn does, so
    ``predict_proba`` returns the fitted forest's values.

    Attributes: ``classes_``, ``n_features_in_``, ``n_estimators_`` (trees), ``params`` (the
    forest's constructor parameters, informative).
    """

    def __init__(self, params: dict | None = None) -> None:
        self.params = params

    def _set_trees(
        self,
        left: np.ndarray,
        right: np.ndarray,
        feature: np.ndarray,
        threshold: np.ndarray,
        missing_left: np.ndarray,
        values: np.ndarray,
        offsets: np.ndarray,
        classes: np.ndarray,
        n_features: int,
    ) -> ForestPredictor:
        roots = offsets[:-1]
        tree_of = np.repeat(np.arange(len(roots)), np.diff(offsets))
        leaf = left == -1
        # Children are indices within their tree: made global over the concatenated nodes.
        self._left = np.where(leaf, -1, left + roots[tree_of])
        self._right = np.where(leaf, -1, right + roots[tree_of])
        self._feature = np.where(leaf, 0, feature)
        self._threshold = threshold
        self._missing_left = missing_left.astype(bool)
        fractions = values[:, 0, :]
        total = fractions.sum(axis=1, keepdims=True)
        total[total == 0.0] = 1.0
        self._fractions = fractions / total
        self._roots = roots
        self.classes_ = classes
        self.n_features_in_ = n_features
        self.n_estimators_ = len(roots)
        return self

    def _leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf each sample reaches in each tree: (n_samples, n_trees) node indices."""
        node = np.tile(self._roots, (len(X), 1))
        rows = np.arange(len(X))[:, None]
        while True:
            left = self._left[node]
            inner = left >= 0
            if not inner.any():
                return node
            x = X[rows, self._feature[node]].astype(np.float64)
            go_left = (x <= self._threshold[node]) | (np.isnan(x) & self._missing_left[node])
            node = np.where(inner, np.where(go_left, left, self._right[node]), node)

    def predict_proba(self, X: Any, chunk: int = 4096) -> np.ndarray:
        """Class probabilities (n_samples, n_classes): the trees' leaf fractions, averaged."""
        X = validate_data(self, X, reset=False, dtype=np.float32, ensure_all_finite="allow-nan")
        out = np.zeros((len(X), len(self.classes_)))
        for start in range(0, len(X), chunk):
            leaves = self._leaves(X[start : start + chunk])
            part = out[start : start + chunk]
            for t in range(self.n_estimators_):  # tree by tree: the summation order of scikit-learn
                part += self._fractions[leaves[:, t]]
        return out / self.n_estimators_

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_.take(np.argmax(self.predict_proba(X), axis=1))


#: Node arrays stored per tree (the layout of format 1, which also kept impurity and sample counts).
TREE_FIELDS = ("left_child", "right_child", "feature", "threshold", "missing_go_to_left")
_FROM_TREE = {"left_child": "children_left", "right_child": "children_right"}


@register_codec("rf", RandomForestClassifier, ForestPredictor)
class ForestCodec(ModelCodec):
    """Each tree's node arrays, concatenated, with the offsets where each tree starts."""

    def encode(self, estimator: Any) -> tuple[dict[str, np.ndarray], dict]:
        if isinstance(estimator, ForestPredictor):
            raise ModelFileError("This forest was loaded from a model file: copy that file instead of saving it again.")
        if getattr(estimator, "n_outputs_", 1) != 1:
            raise ModelFileError("Cannot save a multi-output random forest: train one forest per output.")
        trees = [tree.tree_ for tree in estimator.estimators_]
        arrays = {
            f"tree.{name}": np.concatenate([np.asarray(getattr(t, _FROM_TREE.get(name, name))) for t in trees])
            for name in TREE_FIELDS
        }
        arrays["tree.offsets"] = np.concatenate([[0], np.cumsum([t.node_count for t in trees])]).astype(np.int64)
        arrays["tree.max_depth"] = np.array([t.max_depth for t in trees], dtype=np.int64)
        arrays["tree.values"] = np.concatenate([t.value for t in trees]).astype(np.float64)
        info = {
            "class": "RandomForestClassifier",
            "params": json_params(estimator),
            "n_features_in": int(estimator.n_features_in_),
            "node_fields": list(TREE_FIELDS),
        }
        return arrays, info

    def decode(self, arrays: Arrays, info: dict, classes: np.ndarray, n_features: int) -> Any:
        if int(info.get("n_features_in", -1)) != n_features:
            raise ModelFileError(
                f"Random forest expects {info.get('n_features_in')} features, backbone gives {n_features}."
            )
        missing = [f"tree.{n}" for n in (*TREE_FIELDS, "offsets", "values") if f"tree.{n}" not in arrays]
        if missing:
            raise ModelFileError(f"Random forest arrays {missing} are missing: the file is damaged.")
        offsets = np.asarray(arrays["tree.offsets"], dtype=np.int64)
        n_nodes = len(arrays["tree.left_child"])
        sizes = np.diff(offsets)
        if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n_nodes or np.any(sizes < 1):
            raise ModelFileError("Random forest tree offsets do not fit its nodes: the file is damaged.")
        nodes = {n: np.asarray(arrays[f"tree.{n}"]) for n in TREE_FIELDS}
        values = np.asarray(arrays["tree.values"], dtype=np.float64)
        if any(a.shape != (n_nodes,) for a in nodes.values()) or values.shape != (n_nodes, 1, len(classes)):
            raise ModelFileError(
                f"Random forest node arrays do not fit {n_nodes} nodes and {len(classes)} classes: the file is damaged."
            )
        left, right, feature = (nodes[n].astype(np.int64) for n in ("left_child", "right_child", "feature"))
        _check_trees(left, right, feature, offsets, n_features)
        return ForestPredictor(known_params(RandomForestClassifier, info.get("params", {})))._set_trees(
            left,
            right,
            feature,
            nodes["threshold"].astype(np.float64),
            nodes["missing_go_to_left"],
            values,
            offsets,
            classes,
            n_features,
        )


def _check_trees(
    left: np.ndarray, right: np.ndarray, feature: np.ndarray, offsets: np.ndarray, n_features: int
) -> None:
    # Children must point forward inside their own tree (so every walk ends at a leaf) and
    # features inside the feature vector: indexing with anything else would read garbage.
    size = np.repeat(np.diff(offsets), np.diff(offsets))
    position = np.arange(len(left)) - np.repeat(offsets[:-1], np.diff(offsets))
    leaf = left == -1
    ok = (
        np.all((right == -1) == leaf)
        and np.all((left[~leaf] > position[~leaf]) & (left[~leaf] < size[~leaf]))
        and np.all((right[~leaf] > position[~leaf]) & (right[~leaf] < size[~leaf]))
        and np.all((feature[~leaf] >= 0) & (feature[~leaf] < n_features))
    )
    if not ok:
        raise ModelFileError("A tree of the random forest has invalid node indices: the file is damaged.")


# --------------------------------------------------------------------------- fine-tuned networks


@register_codec("finetune")
class NetworkCodec(ModelCodec):
    """A fine-tuned network's ``state_dict`` tensors (``net.<name>``) and its architecture.

    torch is imported only for such a network: probes are saved and loaded without it.
    """

    def encodes(self, estimator: Any) -> bool:
        # A FineTunedNetwork exists only if its (torch) module was imported.
        finetune = sys.modules.get("mtdp_core.transfer.finetune")
        return finetune is not None and isinstance(estimator, finetune.FineTunedNetwork)

    def encode(self, estimator: Any) -> tuple[dict[str, np.ndarray], dict]:
        state = estimator.state_dict()
        arrays = {f"net.{k}": v.detach().cpu().numpy() for k, v in state.items()}
        info = {
            "class": "FineTunedNetwork",
            "arch": estimator.arch,
            "n_classes": int(estimator.n_classes),
            "state_keys": list(state),
        }
        return arrays, info

    def decode(self, arrays: Arrays, info: dict, classes: np.ndarray, n_features: int) -> Any:
        state = {k[len("net.") :]: v for k, v in arrays.items() if k.startswith("net.")}
        if list(state) != list(info.get("state_keys", [])) and set(state) != set(info.get("state_keys", [])):
            raise ModelFileError("The fine-tuned network's tensors do not match its key list: the file is damaged.")
        from mtdp_core.transfer.finetune import network_from_state

        return network_from_state(str(info.get("arch")), len(classes), state)
