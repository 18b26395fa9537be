"""Inference engines for frozen backbones: torch, or the backbone's ONNX graph run by ONNX Runtime.

>>> from mtdp_core.transfer import FeatureExtractor
>>> fx = FeatureExtractor("densenet121", "imagenet", engine="auto")   # doctest: +SKIP
>>> fx.get_backbone()            # on a CPU: OnnxBackbone(arch='densenet121', ...)  # doctest: +SKIP

Modules: ``engines`` (``engine=auto|torch|onnxruntime``, resolution, loading with the
fall-back to torch), ``graphs`` (export with torch, checked, cached on disk), ``onnx_backbone``
(the graph in ONNX Runtime and the feature loop around it), ``loading`` (decoding threads,
no torch), ``gpu_decode`` (nvJPEG batches on CUDA), ``cli`` (``mtdp engine``). Nothing here
imports torch until a torch path runs. See docs/transfer.md ("Inference engines").
"""

from mtdp_core.inference.engines import ENGINES, load_frozen_backbone, onnx_backbone, resolve_engine

__all__ = ["ENGINES", "load_frozen_backbone", "onnx_backbone", "resolve_engine"]
