"""Feature extraction: images -> (n_samples, n_features) arrays."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mtdp_core.backbones import Backbone
from mtdp_core.data.images import ImageFileDataset, Preprocessing
from mtdp_core.runtime import describe_device, resolve_device

logger = logging.getLogger(__name__)


def extract_features(
    backbone: Backbone,
    paths: Sequence[str | os.PathLike],
    preprocessing: Preprocessing,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Features of image files, in order: float32 (len(paths), backbone.n_features)."""
    device = resolve_device(device)
    logger.info("extracting %s features of %d images on %s", backbone.arch, len(paths), describe_device(device))
    model = backbone.to(device).eval().to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(
        ImageFileDataset(paths, preprocessing),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    out = np.empty((len(paths), backbone.n_features), dtype=np.float32)
    with torch.inference_mode():
        for images, index in tqdm(loader, desc="features", unit="batch", disable=not progress):
            x = preprocessing.normalize(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
            out[index.numpy()] = model(x).float().cpu().numpy()
    return out
