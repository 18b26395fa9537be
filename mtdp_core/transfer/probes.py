"""Classifiers on top of frozen features: the paper's linear SVM protocol and other probes.

The paper's protocol (Mormont et al. 2020, Section IV-C; the incumbent Cytomine app):

- a linear SVM (liblinear's LinearSVC) with ``C`` in {1e-10, 1e-9, ..., 1e-1, 1};
- ``C`` chosen by 5-fold cross-validation whose folds are grouped by the most relevant id
  (patient, slide or image), so that near-identical crops never sit on both sides;
- accuracy for multi-class tasks, ROC AUC for binary ones;
- the chosen model refitted on all training data.

``Probe`` implements it as a scikit-learn classifier, with one registry of probe kinds
(``svm``, ``logreg``, ``rf``: the second seed paper evaluates with random forests).
``make_cv`` chooses the folds (grouped when there are groups enough, stratified with a
warning otherwise). For ``svm`` the grid is solved by ``linear_svm.linear_svm_path`` (all
folds and C values at once, same solution as liblinear, several times faster); other kinds
use GridSearchCV. ``LearningCurve`` refits on growing subsets of the training set to
measure sample efficiency.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedGroupKFold, StratifiedKFold
from sklearn.svm import LinearSVC
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data

from mtdp_core.errors import ConfigurationError, UnknownNameError
from mtdp_core.transfer.linear_svm import decision_values, linear_svm_path

logger = logging.getLogger(__name__)

#: The paper's C grid: 1e-10, 1e-9, ..., 1e-1, 1 (11 values; the incumbent app also tried 10).
PAPER_C_GRID: tuple[float, ...] = tuple(float(f"1e-{i}") for i in range(10, 0, -1)) + (1.0,)
SCORINGS: tuple[str, ...] = ("auto", "accuracy", "roc_auc", "balanced_accuracy")


# --------------------------------------------------------------------------- probe registry


@dataclass(frozen=True)
class ProbeKind:
    """One kind of probe: how to build its estimator and the grid its parameters are tuned on."""

    name: str
    build: Callable[..., BaseEstimator]  # build(seed=..., n_jobs=..., class_weight=...) -> unfitted estimator
    param_grid: dict[str, tuple]
    description: str


_PROBES: dict[str, ProbeKind] = {}


def register_probe(name: str, *, param_grid: dict[str, Sequence], description: str) -> Callable:
    """Register a probe builder under ``name`` (decorator)."""

    def decorator(build: Callable[..., BaseEstimator]) -> Callable[..., BaseEstimator]:
        if name in _PROBES:
            raise ValueError(f"probe {name!r} is registered twice")
        _PROBES[name] = ProbeKind(name, build, {k: tuple(v) for k, v in param_grid.items()}, description)
        return build

    return decorator


def list_probes() -> list[str]:
    return sorted(_PROBES)


def get_probe_kind(name: str) -> ProbeKind:
    try:
        return _PROBES[name]
    except KeyError:
        raise UnknownNameError(f"Unknown probe kind {name!r}: use one of {', '.join(list_probes())}.") from None


@register_probe(
    "svm",
    param_grid={"C": PAPER_C_GRID},
    description="linear SVM (LinearSVC, squared hinge, one-vs-rest), the paper's protocol",
)
def _build_svm(*, seed: int, n_jobs: int | None, class_weight: Any) -> BaseEstimator:
    # max_iter above the default: the largest C values need it on unscaled CNN features.
    return LinearSVC(C=1.0, class_weight=class_weight, max_iter=5000, random_state=seed)


@register_probe(
    "logreg",
    param_grid={"C": tuple(float(f"1e{i}") for i in range(-6, 3))},
    description="multinomial logistic regression (L2, lbfgs); gives probabilities",
)
def _build_logreg(*, seed: int, n_jobs: int | None, class_weight: Any) -> BaseEstimator:
    return LogisticRegression(C=1.0, class_weight=class_weight, max_iter=2000, random_state=seed)


@register_probe(
    "rf",
    param_grid={"max_features": ("sqrt", 0.05, 0.2)},
    description="random forest of 300 trees (as in Mormont et al. 2018); gives probabilities",
)
def _build_rf(*, seed: int, n_jobs: int | None, class_weight: Any) -> BaseEstimator:
    return RandomForestClassifier(n_estimators=300, class_weight=class_weight, n_jobs=n_jobs, random_state=seed)


# --------------------------------------------------------------------------- folds and scores


@dataclass
class CVPlan:
    """The cross-validation chosen for a training set.

    Attributes:
        splitter: a scikit-learn splitter (``split(X, y, groups)``).
        groups: the groups to pass to it (None when not grouped).
        n_splits: number of folds.
        grouped: whether folds keep each group on one side.
        description: one line for logs and reports.
    """

    splitter: Any
    groups: np.ndarray | None
    n_splits: int
    grouped: bool
    description: str

    def split(self, X: Any, y: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self.splitter.split(np.zeros((len(y), 1)), y, self.groups)

    def folds(self, y: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(self.split(None, y))


def holdout_split(
    labels: Sequence, groups: Sequence | None = None, fraction: float = 0.2, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A validation hold-out for tasks that have no validation split: (kept, held-out) indices,
    about ``fraction`` of the samples held out: the first fold of ``make_cv`` with
    ``round(1 / fraction)`` folds (grouped by ``groups`` when possible, stratified, seeded)."""
    if not 0 < float(fraction) < 1:
        raise ConfigurationError(f"Invalid validation fraction {fraction!r}: use a value in (0, 1), e.g. 0.2.")
    y = np.asarray(labels)
    n_splits = max(2, int(round(1 / float(fraction))))
    return make_cv(y, groups, n_splits, seed=seed).folds(y)[0]


def make_cv(
    labels: Sequence, groups: Sequence | None = None, n_splits: int = 5, *, seed: int = 0, min_groups: int = 2
) -> CVPlan:
    """Choose the folds: grouped by ``groups`` (patient, slide or image ids) when possible.

    - at least ``n_splits`` groups: ``n_splits`` folds, stratified, a group never on both sides;
    - ``min_groups`` to ``n_splits - 1`` groups: one fold per group (warning);
    - fewer (or no groups): stratified folds over samples (warning when groups were given:
      scores are then optimistic, near-identical crops of one image fall on both sides).

    The number of folds never exceeds the smallest class's number of samples (warning).

    Raises:
        ConfigurationError: fewer than two classes, or a class with a single sample.
    """
    y = np.asarray(labels)
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ConfigurationError(f"Invalid number of folds {n_splits!r}: use 2 or more (the paper uses 5).")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ConfigurationError(
            f"Only one class in the training data ({classes[0] if len(classes) else 'none'}): "
            "a classifier needs samples of at least two classes."
        )
    if counts.min() < 2:
        rare = classes[counts.argmin()]
        raise ConfigurationError(
            f"Class {rare!r} has a single training sample: cross-validation needs at least 2 per class. "
            "Add samples of that class or remove it."
        )
    k = int(n_splits)
    if counts.min() < k:
        logger.warning(
            "class %r has only %d samples: using %d folds instead of %d",
            classes[counts.argmin()],
            counts.min(),
            counts.min(),
            k,
        )
        k = int(counts.min())
    if groups is not None:
        g = np.asarray(groups)
        if len(g) != len(y):
            raise ConfigurationError(f"Got {len(g)} group ids for {len(y)} samples: give one group id per sample.")
        n_groups = len(np.unique(g))
        if n_groups >= k:
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            return CVPlan(splitter, g, k, True, f"{k}-fold stratified CV grouped by {n_groups} groups")
        if n_groups >= max(2, min_groups):
            logger.warning("only %d groups for %d folds: using %d grouped folds", n_groups, k, n_groups)
            splitter = StratifiedGroupKFold(n_splits=n_groups, shuffle=True, random_state=seed)
            return CVPlan(
                splitter, g, n_groups, True, f"{n_groups}-fold CV grouped by {n_groups} groups (too few groups for {k})"
            )
        logger.warning(
            "only %d group(s): cannot group the folds, falling back to %d-fold stratified CV "
            "(scores may be optimistic: samples of one group fall on both sides)",
            n_groups,
            k,
        )
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return CVPlan(splitter, None, k, False, f"{k}-fold stratified CV (not grouped)")


def resolve_scoring(scoring: str, n_classes: int) -> str:
    """``"auto"`` -> ROC AUC for two classes, accuracy otherwise (the paper's rule)."""
    if scoring not in SCORINGS:
        raise ConfigurationError(f"Invalid scoring {scoring!r}: use one of {', '.join(SCORINGS)}.")
    if scoring == "auto":
        return "roc_auc" if n_classes == 2 else "accuracy"
    if scoring == "roc_auc" and n_classes != 2:
        raise ConfigurationError(
            f"scoring 'roc_auc' needs a binary task, this one has {n_classes} classes: use accuracy or "
            "balanced_accuracy."
        )
    return scoring


def score_from_decisions(metric: str, y_true: np.ndarray, decisions: np.ndarray, classes: np.ndarray) -> float:
    """A metric from decision values or probabilities.

    ``decisions``: (n,) or (n, 1) for binary (higher = ``classes[1]``), or (n, n_classes)
    (binary probabilities (n, 2) are accepted too). NaN when ROC AUC is undefined (one class).
    Computed with numpy directly (the grid search scores hundreds of folds; scikit-learn's
    input validation would cost more than the metrics); equal to scikit-learn's values.
    """
    y_true = np.asarray(y_true)
    d = np.asarray(decisions, dtype=np.float64)
    if d.ndim == 2 and d.shape[1] == 2 and len(classes) == 2:
        d = d[:, 1]
    if d.ndim == 2 and d.shape[1] == 1:
        d = d[:, 0]
    if metric == "roc_auc":
        positive = y_true == classes[1]
        n_pos = int(positive.sum())
        n_neg = len(y_true) - n_pos
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        # Mann-Whitney U with average ranks for ties: the area under the ROC curve.
        ranks = rankdata(d)
        return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    predicted = predict_from_decisions(d, classes)
    if metric == "accuracy":
        return float(np.mean(predicted == y_true))
    if metric == "balanced_accuracy":
        present = np.unique(y_true)
        return float(np.mean([np.mean(predicted[y_true == c] == c) for c in present]))
    raise ConfigurationError(f"Invalid metric {metric!r}: use accuracy, roc_auc or balanced_accuracy.")


def predict_from_decisions(decisions: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The predicted labels of decision values: binary (n,) (> 0: ``classes[1]``) or (n, n_classes) (argmax)."""
    d = np.asarray(decisions)
    return classes[(d > 0).astype(int)] if d.ndim == 1 else classes[d.argmax(axis=1)]


def score_estimator(metric: str, estimator: Any, X: Any, y: Any) -> float:
    """``metric`` of a fitted classifier on (X, y), from its decision function or probabilities."""
    if hasattr(estimator, "decision_function"):
        decisions = estimator.decision_function(X)
    else:
        decisions = estimator.predict_proba(X)
    return score_from_decisions(metric, np.asarray(y), decisions, np.asarray(estimator.classes_))


# --------------------------------------------------------------------------- the probe


def _has_method(name: str) -> Callable[[Probe], bool]:
    def check(self: Probe) -> bool:
        return (
            hasattr(self.estimator_, name)
            if hasattr(self, "estimator_")
            else hasattr(get_probe_kind(self.kind).build(seed=0, n_jobs=None, class_weight=None), name)
        )

    return check


class Probe(ClassifierMixin, BaseEstimator):
    """A classifier on frozen features with cross-validated hyper-parameters, refitted on all data.

    ``Probe("svm")`` is the paper's protocol: LinearSVC, C in PAPER_C_GRID, 5 folds grouped by
    ``groups`` passed to ``fit``, accuracy (multi-class) or ROC AUC (binary). Ties in the CV
    score (frequent with ROC AUC) go to the best CV accuracy, then to the later parameter set
    of the grid (the larger C).

    Parameters:
        kind: ``"svm"``, ``"logreg"`` or ``"rf"`` (``list_probes()``).
        param_grid: overrides the kind's grid, e.g. ``{"C": [0.01, 0.1]}``.
        n_splits: folds (fewer when groups or samples are too few; see ``make_cv``).
        scoring: ``"auto"`` (ROC AUC if binary, else accuracy), ``"accuracy"``,
            ``"roc_auc"``, ``"balanced_accuracy"``.
        class_weight: None or ``"balanced"`` (or {label: weight}).
        seed: seeds the folds and the estimator.
        n_jobs: parallel fits for the GridSearchCV engine and random forests.
        engine: ``"auto"`` (batched solver for svm, GridSearchCV otherwise), ``"batched"``
            (svm only) or ``"sklearn"``.
        device: where the batched SVM solver runs (``"cpu"``, ``"cuda"``).
        calibrate: also keep the out-of-fold decision values of the chosen parameters
            (``oof_decisions_``) and fit the softmax scale that turns decision values into
            probabilities on them (``calibration_``, see ``calibration.py``). Free for the
            batched SVM (the folds' solutions are already there); other kinds refit the chosen
            parameters on each fold. Kinds without decision values (``rf``) cannot calibrate.

    Attributes (after fit):
        estimator_: the refitted scikit-learn estimator.
        classes_: the labels, sorted.
        best_params_, best_score_, best_index_: the chosen parameters and their CV score.
        cv_results_: ``params``, ``mean_test_score``, ``std_test_score``, ``split_test_scores``
            (n_params, n_splits), ``rank_test_score``.
        scoring_: the metric used; cv_: the CVPlan description; fit_seconds_.
        oof_decisions_ (with ``calibrate``): (n_samples,) binary or (n_samples, n_classes)
            decision values, each sample's from the fold where it was tested.
        calibration_ (with ``calibrate``): ``{"method": "softmax_scale", "scale", "oof_nll"}``.
    """

    def __init__(
        self,
        kind: str = "svm",
        *,
        param_grid: dict | None = None,
        n_splits: int = 5,
        scoring: str = "auto",
        class_weight: str | dict | None = None,
        seed: int = 0,
        n_jobs: int | None = None,
        engine: str = "auto",
        device: str = "cpu",
        calibrate: bool = False,
    ) -> None:
        self.kind = kind
        self.param_grid = param_grid
        self.n_splits = n_splits
        self.scoring = scoring
        self.class_weight = class_weight
        self.seed = seed
        self.n_jobs = n_jobs
        self.engine = engine
        self.device = device
        self.calibrate = calibrate

    def _grid(self) -> list[dict]:
        grid = self.param_grid if self.param_grid is not None else get_probe_kind(self.kind).param_grid
        try:
            params = list(ParameterGrid(grid))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"Invalid param_grid {grid!r}: {exc}") from None
        if not params:
            raise ConfigurationError(f"Empty param_grid {grid!r}: give at least one value per parameter.")
        return params

    def _engine(self, params: list[dict], scoring: str) -> str:
        if self.engine not in ("auto", "batched", "sklearn"):
            raise ConfigurationError(f"Invalid engine {self.engine!r}: use auto, batched or sklearn.")
        batched_ok = self.kind == "svm" and all(set(p) == {"C"} for p in params)
        if self.engine == "batched" and not batched_ok:
            raise ConfigurationError(f"The batched engine fits only the svm probe over C, not {self.kind} {params[0]}.")
        if self.engine == "auto":
            return "batched" if batched_ok else "sklearn"
        return self.engine

    def fit(self, X: Any, y: Any, groups: Any = None) -> Probe:
        """Cross-validate the grid on (X, y) with folds grouped by ``groups``, then refit on all.

        X: features (n_samples, n_features); y: labels (n_samples,); groups: (n_samples,) ids.
        """
        kind = get_probe_kind(self.kind)
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        params = self._grid()
        plan = make_cv(y, groups, self.n_splits, seed=self.seed)
        classes = np.unique(y)
        scoring = resolve_scoring(self.scoring, len(classes))
        engine = self._engine(params, scoring)
        logger.info(
            "%s probe: %d samples x %d features, %d classes, %d parameter sets, %s, scoring %s (%s engine)",
            self.kind,
            X.shape[0],
            X.shape[1],
            len(classes),
            len(params),
            plan.description,
            scoring,
            engine,
        )
        start = time.perf_counter()
        folds = plan.folds(y)
        # Ties are frequent with ROC AUC (several C at 1.0 on an easy task), and the models
        # they pick differ in their thresholds: break them by CV accuracy, then by the later
        # parameter set (the larger C, as the incumbent app's grid order did).
        metrics = [scoring] + (["accuracy"] if scoring != "accuracy" else [])
        if self.calibrate and not hasattr(kind.build(seed=0, n_jobs=None, class_weight=None), "decision_function"):
            raise ConfigurationError(
                f"Probe {self.kind!r} gives probabilities, not decision values: calibrate only svm or logreg probes."
            )
        path = None
        if engine == "batched":
            scores, path = self._batched_scores(X, y, folds, params, metrics)
        else:
            scores = self._sklearn_scores(kind, X, y, folds, params, metrics)
        split_scores = scores[scoring]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows handled below
            mean, std = np.nanmean(split_scores, axis=1), np.nanstd(split_scores, axis=1)
            tie_break = np.nanmean(scores[metrics[-1]], axis=1)
        if np.isnan(mean).all():
            raise ConfigurationError(
                f"No fold could be scored with {scoring}: every test fold has a single class. "
                "Use more samples or groups per class, or fewer folds."
            )
        if np.isnan(split_scores).any():
            logger.warning(
                "%d fold(s) could not be scored with %s (a single class in the test fold): averaged over the others",
                int(np.isnan(split_scores[0]).sum()),
                scoring,
            )
        key = np.where(np.isnan(mean), -np.inf, mean)
        # Lexicographic: score, then accuracy, then position (later first); np.lexsort's last key is primary.
        order = np.lexsort((-np.arange(len(params)), -np.nan_to_num(tie_break, nan=-np.inf), -key))
        best = int(order[0])
        rank = np.empty(len(params), dtype=int)
        rank[order] = np.arange(1, len(params) + 1)
        self.cv_results_ = {
            "params": params,
            "mean_test_score": mean,
            "std_test_score": std,
            "split_test_scores": split_scores,
            "rank_test_score": rank,
        }
        if metrics[-1] != scoring:
            self.cv_results_["mean_test_accuracy"] = tie_break
        self.best_index_ = best
        self.best_params_ = params[best]
        self.best_score_ = float(mean[best])
        self.scoring_ = scoring
        self.cv_ = plan.description
        self.n_splits_ = plan.n_splits
        self.estimator_ = kind.build(seed=self.seed, n_jobs=self.n_jobs, class_weight=self.class_weight)
        self.estimator_.set_params(**self.best_params_)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.estimator_.fit(X, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            logger.warning("%s refit with %s did not fully converge", self.kind, self.best_params_)
        self.classes_ = self.estimator_.classes_
        if self.calibrate:
            self._calibrate(kind, X, y, folds, path)
        self.fit_seconds_ = time.perf_counter() - start
        logger.info(
            "%s: best %s, CV %s %.4f (%.1f s)",
            self.kind,
            self.best_params_,
            scoring,
            self.best_score_,
            self.fit_seconds_,
        )
        return self

    def _batched_scores(
        self, X: np.ndarray, y: np.ndarray, folds: list, params: list[dict], metrics: list[str]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The scores of every (parameter set, fold), and the path's coefficients (C, fold, problem, d + 1)."""
        Cs = [float(p["C"]) for p in params]
        coef, classes = linear_svm_path(
            X, y, [train for train, _ in folds], Cs, class_weight=self.class_weight, device=self.device
        )
        scores = {m: np.empty((len(Cs), len(folds))) for m in metrics}
        for f, (_, test) in enumerate(folds):
            for i in range(len(Cs)):
                decisions = decision_values(coef[i, f], X[test])
                for m in metrics:
                    scores[m][i, f] = score_from_decisions(m, y[test], decisions, classes)
        return scores, coef

    def _calibrate(self, kind: ProbeKind, X: np.ndarray, y: np.ndarray, folds: list, path: np.ndarray | None) -> None:
        """``oof_decisions_`` of the chosen parameters on the CV folds, and the softmax scale fitted on them."""
        from mtdp_core.transfer.calibration import fit_softmax_scale

        oof = np.zeros((len(y), 1 if len(self.classes_) == 2 else len(self.classes_)))
        for f, (train, test) in enumerate(folds):
            if path is not None:  # the batched SVM solved every fold already
                oof[test] = decision_values(path[self.best_index_, f], X[test])
            else:
                estimator = kind.build(seed=self.seed, n_jobs=self.n_jobs, class_weight=self.class_weight)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    estimator.set_params(**self.best_params_).fit(X[train], y[train])
                oof[test] = estimator.decision_function(X[test]).reshape(len(test), -1)
        self.oof_decisions_ = oof[:, 0] if oof.shape[1] == 1 else oof
        scale, nll = fit_softmax_scale(self.oof_decisions_, np.searchsorted(self.classes_, y))
        self.calibration_ = {"method": "softmax_scale", "scale": scale, "oof_nll": nll}

    def _sklearn_scores(
        self, kind: ProbeKind, X: np.ndarray, y: np.ndarray, folds: list, params: list[dict], metrics: list[str]
    ) -> dict[str, np.ndarray]:
        def scorer(metric: str) -> Callable:
            return lambda est, Xs, ys: score_estimator(metric, est, Xs, ys)

        search = GridSearchCV(
            kind.build(seed=self.seed, n_jobs=None, class_weight=self.class_weight),
            [{k: [v] for k, v in p.items()} for p in params],  # one entry per set: keeps the grid's order
            scoring={m: scorer(m) for m in metrics},
            cv=folds,
            n_jobs=self.n_jobs,
            refit=False,
            error_score="raise",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X, y)
        r = search.cv_results_
        return {m: np.stack([r[f"split{i}_test_{m}"] for i in range(len(folds))], axis=1) for m in metrics}

    # ----------------------------------------------------------------- prediction

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.estimator_.predict(validate_data(self, X, reset=False, dtype=[np.float32, np.float64]))

    @available_if(_has_method("decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.estimator_.decision_function(validate_data(self, X, reset=False, dtype=[np.float32, np.float64]))

    @available_if(_has_method("predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.estimator_.predict_proba(validate_data(self, X, reset=False, dtype=[np.float32, np.float64]))

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The probe's metric (``scoring_``: accuracy, or ROC AUC for binary tasks) on (X, y)."""
        check_is_fitted(self)
        return score_estimator(
            self.scoring_, self.estimator_, validate_data(self, X, reset=False, dtype=[np.float32, np.float64]), y
        )

    def cv_table(self) -> str:
        """The CV results as aligned text: one line per parameter set, the best marked."""
        check_is_fitted(self)
        r = self.cv_results_
        lines = [f"{'parameters':<24} {self.scoring_ + ' (mean ± std)':>26}"]
        for i, p in enumerate(r["params"]):
            text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())
            mark = "  <- best" if i == self.best_index_ else ""
            lines.append(f"{text:<24} {r['mean_test_score'][i]:>17.4f} ± {r['std_test_score'][i]:.4f}{mark}")
        return "\n".join(lines)


def fit_probe(X: Any, y: Any, groups: Any = None, kind: str = "svm", **params: Any) -> Probe:
    """``Probe(kind, **params).fit(X, y, groups)``: the one-call form used by apps and the CLI."""
    return Probe(kind, **params).fit(X, y, groups)


# --------------------------------------------------------------------------- learning curves

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def stratified_subset(y: np.ndarray, fraction: float, seed: int, min_per_class: int = 2) -> np.ndarray:
    """Indices of a class-stratified random subset: ``fraction`` of each class, at least
    ``min_per_class`` of each (or all of a class that has fewer)."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = min(len(members), max(min_per_class, int(round(fraction * len(members)))))
        picked.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picked))


@dataclass
class LearningCurve:
    """Sample efficiency: a probe trained on growing subsets of the training set.

    For each fraction and seed, a class-stratified subset of the training set (at least
    ``min_per_class`` samples per class) trains ``probe`` (its own CV included, on the
    subset), which is then scored on the whole test set.

    ``run(...)`` returns one row per (fraction, seed): ``fraction``, ``seed``, ``n_train``,
    ``cv_score``, ``test_score``, ``best_params``, ``metric``.
    """

    probe: Probe = field(default_factory=Probe)
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    seeds: Sequence[int] = (0, 1, 2)
    min_per_class: int = 2

    def run(self, X_train: Any, y_train: Any, X_test: Any, y_test: Any, groups: Any = None) -> list[dict]:
        X_train, X_test = np.asarray(X_train), np.asarray(X_test)
        y_train, y_test = np.asarray(y_train), np.asarray(y_test)
        for fraction in self.fractions:
            if not 0 < float(fraction) <= 1:
                raise ConfigurationError(f"Invalid learning-curve fraction {fraction!r}: use values in (0, 1].")
        rows = []
        for fraction in sorted(float(f) for f in self.fractions):
            for seed in self.seeds:
                subset = stratified_subset(y_train, fraction, seed, self.min_per_class)
                probe = clone(self.probe).set_params(seed=seed)
                probe.fit(X_train[subset], y_train[subset], None if groups is None else np.asarray(groups)[subset])
                rows.append(
                    {
                        "fraction": fraction,
                        "seed": int(seed),
                        "n_train": int(len(subset)),
                        "metric": probe.scoring_,
                        "cv_score": probe.best_score_,
                        "test_score": probe.score(X_test, y_test),
                        "best_params": probe.best_params_,
                    }
                )
                logger.info(
                    "learning curve: %.0f%% (%d samples), seed %d: test %s %.4f",
                    100 * fraction,
                    len(subset),
                    seed,
                    probe.scoring_,
                    rows[-1]["test_score"],
                )
        return rows
