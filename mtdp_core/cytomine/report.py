"""Metrics, confusion-matrix pictures and small HTML reports of the apps."""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def classification_metrics(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    labels: Sequence[Any],
    names: Mapping[Any, str] | None = None,
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support and the confusion
    matrix (rows: true class, columns: predicted, in ``labels`` order); ROC AUC for two classes
    when ``scores`` (n, 2) or (n,) are given (higher = ``labels[1]``)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true, y_pred = list(y_true), list(y_pred)
    labels = list(labels)
    names = names or {}
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = [label for label in labels if label in set(y_true)]
    result: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)) if y_true else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if present else float("nan"),
        "classes": [_plain(label) for label in labels],
        "class_names": [str(names.get(label, label)) for label in labels],
        "per_class": {
            str(names.get(label, label)): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": cm.tolist(),
    }
    if scores is not None and len(labels) == 2 and len(set(y_true)) == 2:
        s = np.asarray(scores, dtype=float)
        s = s[:, 1] if s.ndim == 2 else s
        result["roc_auc"] = float(roc_auc_score([t == labels[1] for t in y_true], s))
    return result


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], names: Sequence[str], path: str | os.PathLike, title: str = "Confusion matrix"
) -> Path:
    """A confusion matrix picture (counts and row percentages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(3.5, 0.9 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=2, default=_plain, allow_nan=True) + "\n")
    return path


def metrics_table_html(metrics: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
        f"<td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>"
        for name, m in metrics.get("per_class", {}).items()
    )
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    summary = (
        f"accuracy {metrics.get('accuracy', float('nan')):.3f}, balanced accuracy "
        f"{metrics.get('balanced_accuracy', float('nan')):.3f}, n = {metrics.get('n', 0)}"
    )
    if "roc_auc" in metrics:
        summary += f", ROC AUC {metrics['roc_auc']:.3f}"
    return f"<p>{html.escape(summary)}</p><table>{head}{rows}</table>"


def write_html_report(path: str | os.PathLike, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """A self-contained HTML page: ``sections`` are (heading, HTML body) pairs."""
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f4f4f4}"
    )
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
