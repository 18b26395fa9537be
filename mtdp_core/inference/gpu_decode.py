"""JPEG decoding on the GPU (nvJPEG, through ``torchvision.io.decode_jpeg(device="cuda")``) for the
torch engine on CUDA, where decoding on the CPU workers is the bottleneck.

Worker processes only read the files' bytes and look at their headers (no decoding); each
batch's JPEGs are decoded together on the GPU, resized there (bilinear with antialiasing, as
Pillow's) and cropped, then normalised and run as in the CPU-decoded pipeline. Images the GPU
decoder cannot take as Pillow would (not JPEG, CMYK, an EXIF orientation, unreadable headers)
are decoded by the workers on the CPU, as before, in the same batches.

Off by default (``FeatureExtractor(gpu_decode=True)``, ``--gpu-decode``): the features differ
slightly from the CPU path (the GPU decodes at full size where Pillow's draft mode decodes at
reduced scale, and the resampling kernels differ at the level of rounding), so it is its own
feature-cache entry (decoder ``nvjpeg``). ``gpu_jpeg_available`` checks once per device
that decoding works (torchvision built with nvJPEG, a CUDA device); otherwise the CPU
pipeline runs, with a warning.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mtdp_core.data.images import Preprocessing
from mtdp_core.errors import ImageReadError

logger = logging.getLogger(__name__)

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_EXIF_ORIENTATION = 0x0112


@cache
def gpu_jpeg_available(device: str) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` decodes on ``device`` here (tried once on a tiny JPEG)."""
    try:
        import torch
        from torchvision.io import decode_jpeg

        if not str(device).startswith("cuda") or not torch.cuda.is_available():
            return False
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (120, 30, 200)).save(buffer, format="JPEG")
        data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            out = decode_jpeg([data], device=device)
        return tuple(out[0].shape) == (3, 16, 16)
    except Exception as exc:  # noqa: BLE001 - any failure means: decode on the CPU
        logger.info("JPEG decoding on %s is not available (%s: %s)", device, type(exc).__name__, exc)
        return False


class JpegBytesDataset:
    """``dataset[i]`` -> ``(kind, payload, i, error)``: the file's bytes (kind ``"jpeg"``, for the
    GPU decoder) or the decoded and resized uint8 (s, s, 3) array (kind ``"pixels"``, as the CPU
    pipeline makes it) for what the GPU decoder cannot take as Pillow would."""

    def __init__(self, inputs: Sequence[Any], preprocessing: Preprocessing) -> None:
        self.inputs = inputs
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray, int, str]:
        item = self.inputs[index]
        try:
            if isinstance(item, (str, os.PathLike)) and os.fspath(item).lower().endswith(JPEG_SUFFIXES):
                with open(item, "rb") as handle:
                    data = handle.read()
                if _gpu_decodable(data):
                    return "jpeg", np.frombuffer(data, dtype=np.uint8).copy(), index, ""
            return "pixels", self.preprocessing.load_array(item), index, ""
        except Exception as exc:  # noqa: BLE001 - reported with the file's name by the consumer
            size = self.preprocessing.size
            return "pixels", np.zeros((size, size, 3), np.uint8), index, f"{item}: {exc}"


def _gpu_decodable(data: bytes) -> bool:
    """A baseline/progressive RGB or greyscale JPEG without EXIF rotation (headers only, no decoding)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return (
                image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
            )
    except Exception:  # noqa: BLE001 - let the CPU path report what is wrong with it
        return False


def _collate(batch: list) -> list:
    return batch  # kinds and sizes differ: the consumer handles the list


def resize_on_device(image: Any, preprocessing: Preprocessing) -> Any:
    """uint8 (3, h, w) on the GPU -> uint8 (s, s, 3), as ``Preprocessing.resize_image`` does with Pillow."""
    import torch
    import torch.nn.functional as F

    size = preprocessing.size
    _, h, w = image.shape
    if preprocessing.resize == "stretch":
        nh, nw = size, size
    else:
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    x = image
    if (nh, nw) != (h, w):
        x = F.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].permute(1, 2, 0)


def run_gpu_decode_extraction(
    model: Any,
    preprocessing: Preprocessing,
    inputs: Sequence[Any],
    indices: Sequence[int],
    sink: Callable[[np.ndarray, np.ndarray], None],
    *,
    device: Any,
    batch_size: int,
    num_workers: int,
    amp: bool = True,
    progress: bool = False,
) -> None:
    """``features.run_extraction`` with the JPEGs of each batch decoded on ``device`` (nvJPEG)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from mtdp_core.runtime import resolve_precision

    if not len(indices):
        return
    dataset = torch.utils.data.Subset(JpegBytesDataset(inputs, preprocessing), list(indices))
    workers = min(num_workers, max(0, -(-len(indices) // batch_size)))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
    )
    autocast = resolve_precision(amp, device).autocast()
    bar = tqdm(total=len(indices), desc="features", unit="img", disable=not progress, smoothing=0.05)
    with torch.inference_mode(), autocast, bar, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        for batch in loader:
            failed = [error for _, _, _, error in batch if error]
            if failed:
                more = f" (and {len(failed) - 1} more in this batch)" if len(failed) > 1 else ""
                raise ImageReadError(f"Cannot read image {failed[0]}{more}. Fix or remove the file and run again.")
            images: list = [None] * len(batch)
            jpeg = [k for k, (kind, _, _, _) in enumerate(batch) if kind == "jpeg"]
            if jpeg:
                decoded = decode_jpeg(
                    [torch.from_numpy(batch[k][1]) for k in jpeg], mode=ImageReadMode.RGB, device=device
                )
                for k, image in zip(jpeg, decoded):
                    images[k] = resize_on_device(image, preprocessing)
            for k, (kind, payload, _, _) in enumerate(batch):
                if kind == "pixels":
                    images[k] = torch.from_numpy(payload).to(device, non_blocking=True)
            x = torch.stack(images).permute(0, 3, 1, 2)  # channels_last view of (B, s, s, 3)
            x = preprocessing.normalize(x).contiguous(memory_format=torch.channels_last)
            rows = model(x).float().cpu().numpy()
            index = np.fromiter((i for _, _, i, _ in batch), dtype=np.int64, count=len(batch))
            sink(index, rows)
            bar.update(len(batch))
