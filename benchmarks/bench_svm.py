"""Benchmark: the linear SVM grid search of the paper's protocol, against a plain GridSearchCV.

Same features, same folds (5-fold stratified, grouped), same grid (C in 1e-10..1, 11
values), same metric (ROC AUC for two classes, accuracy otherwise), refit on all data:

- ``plain``: ``GridSearchCV(LinearSVC(), {"C": grid}, cv=folds)`` (the incumbent app's call);
- ``plain, n_jobs=-1``: the same with folds fitted in parallel on all cores;
- ``mtdp``: ``Probe("svm").fit(X, y, groups)``: the batched Newton solver over all folds and
  C values (``mtdp_core.transfer.linear_svm``), then the same LinearSVC refit.

Reports wall times, speed-ups, the chosen C and its CV score for each, and the largest
difference between the two grids of CV scores.

Features: synthetic by default (``--n`` x ``--d``, class-structured, non-negative like
pooled post-ReLU CNN features, not separable: ~80% accuracy), or a features .npz written by
``mtdp features`` (``--features``, with its labels and groups).

    python benchmarks/bench_svm.py --n 10000 --d 1024 --classes 2,4 --output bench-svm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.svm import LinearSVC

from mtdp_core.logs import configure_logging
from mtdp_core.transfer.probes import PAPER_C_GRID, Probe, make_cv, resolve_scoring


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="samples (synthetic features)")
    p.add_argument("--d", type=int, default=1024, help="features per sample (synthetic)")
    p.add_argument("--classes", default="2,4", help="comma-separated class counts to run (synthetic)")
    p.add_argument("--groups", type=int, default=200, help="number of groups (synthetic: e.g. images or slides)")
    p.add_argument("--features", type=Path, default=None, help="a features .npz from `mtdp features` instead")
    p.add_argument(
        "--no-parallel-baseline", dest="parallel", action="store_false", help="skip GridSearchCV with n_jobs=-1"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p


def synthetic_features(n: int, d: int, k: int, n_groups: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-structured, non-negative features (n, d) float32, labels and group ids.

    Each class has a centre in a 64-d latent space; samples are noisy latents projected to d
    dimensions, offset and passed through a ReLU (like pooled CNN features); classes overlap.
    Each group (think: an image) holds samples of one class, as crops of one annotated image do.
    """
    rng = np.random.default_rng(seed)
    group_class = rng.integers(0, k, n_groups)
    groups = rng.integers(0, n_groups, n)
    y = group_class[groups]
    latent = rng.normal(0, 0.25, (k, 64))[y] + rng.normal(0, 1.0, (n, 64))
    X = np.maximum(latent @ rng.normal(0, 1 / 8, (64, d)) + rng.normal(0, 0.3, (n, d)) + 0.1, 0)
    return X.astype(np.float32), y, groups


def run_case(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, parallel: bool) -> dict:
    scoring = resolve_scoring("auto", len(np.unique(y)))
    folds = make_cv(y, groups, 5, seed=0).folds(y)  # the folds Probe(seed=0) uses
    grid = {"C": list(PAPER_C_GRID)}
    out: dict = {
        "case": name,
        "n": int(X.shape[0]),
        "d": int(X.shape[1]),
        "classes": int(len(np.unique(y))),
        "scoring": scoring,
    }

    def plain(n_jobs: int | None) -> dict:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search = GridSearchCV(LinearSVC(), grid, cv=folds, scoring=scoring, n_jobs=n_jobs).fit(X, y)
        return {
            "seconds": time.perf_counter() - start,
            "best_C": search.best_params_["C"],
            "best_score": float(search.best_score_),
            "scores": search.cv_results_["mean_test_score"].tolist(),
        }

    # Warm-up: the first torch operations of a process initialise thread pools and kernels
    # (a one-off of up to a few seconds on a loaded machine), not part of the method's cost.
    warm_X, warm_y, warm_g = synthetic_features(200, 16, 2, 20, 0)
    Probe("svm").fit(warm_X, warm_y, warm_g)
    start = time.perf_counter()
    probe = Probe("svm").fit(X, y, groups)
    out["mtdp"] = {
        "seconds": time.perf_counter() - start,
        "best_C": probe.best_params_["C"],
        "best_score": probe.best_score_,
        "scores": probe.cv_results_["mean_test_score"].tolist(),
    }
    out["plain"] = plain(None)
    if parallel:
        out["plain_parallel"] = plain(-1)
    out["max_score_difference"] = float(np.max(np.abs(np.subtract(out["mtdp"]["scores"], out["plain"]["scores"]))))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging("WARNING")
    cases = []
    if args.features:
        with np.load(args.features, allow_pickle=False) as data:
            X, y = data["features"], data["labels"]
            groups = data["groups"] if "groups" in data.files else np.arange(len(y))
        cases.append((args.features.stem, X, y, groups))
    else:
        for k in (int(v) for v in args.classes.split(",")):
            X, y, groups = synthetic_features(args.n, args.d, k, args.groups, args.seed)
            cases.append((f"synthetic {k} classes", X, y, groups))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    load = os.getloadavg()[0]
    print(f"# SVM grid search benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, load average {load:.1f})")
    print(
        "| features | metric | plain GridSearchCV | GridSearchCV n_jobs=-1 | mtdp Probe | speed-up vs plain "
        "| best C (plain / mtdp) | best CV score (plain / mtdp) | max score diff |"
    )
    print("|---|---|---:|---:|---:|---:|---|---|---:|")
    results = []
    for name, X, y, groups in cases:
        r = run_case(name, X, y, groups, args.parallel)
        results.append(r)
        par = f"{r['plain_parallel']['seconds']:.1f} s" if "plain_parallel" in r else "–"
        print(
            f"| {name} ({r['n']} x {r['d']}) | {r['scoring']} | {r['plain']['seconds']:.1f} s | {par} | "
            f"{r['mtdp']['seconds']:.1f} s | {r['plain']['seconds'] / r['mtdp']['seconds']:.1f}x | "
            f"{r['plain']['best_C']:g} / {r['mtdp']['best_C']:g} | "
            f"{r['plain']['best_score']:.4f} / {r['mtdp']['best_score']:.4f} | {r['max_score_difference']:.4f} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.output:
        args.output.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": machine,
                    "argv": list(argv if argv is not None else sys.argv[1:]),
                    "results": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
