"""Transfer of a backbone to a target task: feature extraction, linear probes, fine-tuning.

>>> from mtdp_core.transfer import FeatureExtractor, Probe, save_model, load_model
>>> fx = FeatureExtractor("densenet121", "mtdp", cache_dir="cache/")          # doctest: +SKIP
>>> probe = Probe("svm").fit(fx.transform(paths), labels, groups=image_ids)  # doctest: +SKIP
>>> save_model("model.npz", probe, features=fx)                              # doctest: +SKIP

Modules: ``features`` (FeatureExtractor, extract_features), ``cache`` (the on-disk feature
cache), ``probes`` (Probe, make_cv, LearningCurve, PAPER_C_GRID), ``linear_svm`` (the
batched solver of the C grid), ``calibration`` (probabilities from SVM decision values),
``finetune`` (FineTuner), ``persistence`` (save_model, load_model) and ``codecs`` (one per
model kind: arrays + JSON and back). See docs/transfer.md.
"""

from typing import TYPE_CHECKING, Any

from mtdp_core.transfer.cache import FeatureCache
from mtdp_core.transfer.features import FeatureExtractor, extract_features
from mtdp_core.transfer.persistence import ClassInfo, Predictions, SavedModel, load_model, save_model
from mtdp_core.transfer.probes import PAPER_C_GRID, LearningCurve, Probe, fit_probe, list_probes, make_cv

if TYPE_CHECKING:
    from mtdp_core.transfer.finetune import FineTuner


def __getattr__(name: str) -> Any:
    # Fine-tuning trains a torch network: imported on first use, so that feature extraction
    # (engine onnxruntime), probes and saved models work where torch is not installed.
    if name == "FineTuner":
        from mtdp_core.transfer.finetune import FineTuner

        return FineTuner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PAPER_C_GRID",
    "ClassInfo",
    "FeatureCache",
    "FeatureExtractor",
    "FineTuner",
    "LearningCurve",
    "Predictions",
    "Probe",
    "SavedModel",
    "extract_features",
    "fit_probe",
    "list_probes",
    "load_model",
    "make_cv",
    "save_model",
]
