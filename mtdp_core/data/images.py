"""Reading images and turning them into model inputs.

The pipeline is split where it is cheapest: worker processes decode and resize each image to
a ``uint8`` tensor (3, size, size); normalisation to float happens once per batch, on the
device that runs the model (``Preprocessing.normalize``). JPEGs are decoded at reduced scale
when the target is much smaller than the file (PIL's ``draft``), which makes large tiles
several times cheaper to read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageOps

from mtdp_core.data.folders import IMAGE_EXTENSIONS, list_images
from mtdp_core.errors import ConfigurationError

if TYPE_CHECKING:  # torch is imported where tensors are made: the numpy path runs without it
    import torch

__all__ = ["IMAGE_EXTENSIONS", "ImageFileDataset", "Preprocessing", "TrainAugmentation", "list_images", "open_rgb"]

ResizeMode = Literal["center_crop", "stretch"]
RESIZE_MODES: tuple[str, ...] = ("center_crop", "stretch")


@runtime_checkable
class LazyImage(Protocol):
    """An image that is decoded only when needed, e.g. a tile of a whole-slide image
    (``mtdp_core.slides.TileImage``): the feature pipeline takes it where it takes a path, and
    DataLoader workers call ``open_image()``. ``fingerprint()`` identifies its pixels (path,
    modification time, region...) for the feature cache; ``str()`` names it in error messages."""

    def open_image(self) -> Image.Image: ...

    def fingerprint(self) -> str: ...


def open_rgb(source: str | os.PathLike | Image.Image | LazyImage, *, draft_size: int | None = None) -> Image.Image:
    """Open an image as RGB, applying its EXIF orientation.

    ``draft_size`` lets the JPEG decoder skip detail: the result is at least that large on
    its shorter side (or the full image when it is smaller).
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, LazyImage):
        image = source.open_image()
    else:
        image = Image.open(source)
        if draft_size and image.format == "JPEG":
            w, h = image.size
            scale = draft_size / min(w, h)
            image.draft("RGB", (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))))
        image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input.

    Attributes:
        size: side of the square input, in pixels.
        resize: ``"center_crop"`` scales the shorter side to ``size`` then crops the centre
            (keeps the aspect ratio); ``"stretch"`` scales to ``size`` x ``size``.
        mean, std: per-channel normalisation of [0, 1] RGB values (the backbone's).
    """

    size: int = 224
    resize: ResizeMode = "center_crop"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise ConfigurationError(
                f"Invalid image size {self.size!r}: use an integer of at least 8 pixels (e.g. 224)."
            )
        if self.resize not in RESIZE_MODES:
            raise ConfigurationError(f"Invalid resize mode {self.resize!r}: use one of {', '.join(RESIZE_MODES)}.")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def for_backbone(cls, backbone, size: int = 224, resize: ResizeMode = "center_crop") -> Preprocessing:
        """The preprocessing that matches a backbone's normalisation."""
        return cls(size=size, resize=resize, mean=tuple(backbone.mean), std=tuple(backbone.std))

    def resize_image(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if self.resize == "stretch":
            return image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        scale = self.size / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def load_array(self, source: str | os.PathLike | Image.Image | LazyImage | np.ndarray) -> np.ndarray:
        """Decode and resize one image: uint8 array (size, size, 3), HWC as decoded (no torch)."""
        if isinstance(source, np.ndarray):
            source = Image.fromarray(source)
        image = self.resize_image(open_rgb(source, draft_size=self.size))
        return np.array(image, dtype=np.uint8)  # writable (torch.as_tensor warns on read-only arrays)

    def load(self, source: str | os.PathLike | Image.Image) -> torch.Tensor:
        """Decode and resize one image: uint8 tensor (3, size, size)."""
        import torch

        return torch.from_numpy(self.load_array(source).copy()).permute(2, 0, 1).contiguous()

    def normalize_array(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W), without torch.

        The same float32 operations as ``normalize`` (divide by 255, subtract the mean, divide by
        the std), so both give identical values: they are tabulated once per channel for the 256
        byte values, then looked up, which also writes the channels-first layout in one pass.
        """
        table = self._normalization_table()
        out = np.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=np.float32)
        for c in range(3):
            np.take(table[c], batch[..., c], out=out[:, c])
        return out

    def _normalization_table(self) -> np.ndarray:
        values = np.arange(256, dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None]
        return (values[None, :] - mean) / std  # (3, 256) float32

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) in [0, 255] (or float in [0, 1]) -> normalised float32."""
        import torch

        x = batch.float()
        if batch.dtype == torch.uint8:
            x = x.div_(255.0)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """Short hash that changes whenever the preprocessing changes (for feature caches)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


class ImageFileDataset:
    """Image files -> ``(uint8 tensor (3, size, size), index)``, decoded in DataLoader workers
    (a map-style dataset: ``__len__`` and ``__getitem__`` are all a DataLoader needs)."""

    def __init__(self, paths: Sequence[str | os.PathLike], preprocessing: Preprocessing) -> None:
        self.paths = [Path(p) for p in paths]
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.preprocessing.load(self.paths[index]), index


@dataclass(frozen=True)
class TrainAugmentation:
    """The paper's training augmentation, on top of a Preprocessing.

    A random square crop of side min(width, height) when the image is not square (so nothing
    is stretched), resized to ``preprocessing.size``, then random horizontal and vertical
    flips. Randomness comes from ``generator`` (or torch's global RNG, which DataLoader seeds
    per worker), so a seeded loader gives the same images every run.
    """

    preprocessing: Preprocessing
    square_crop: bool = True
    hflip: bool = True
    vflip: bool = True

    def load(self, source: str | os.PathLike | Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode, randomly crop/flip and resize one image: uint8 tensor (3, size, size)."""
        import torch

        size = self.preprocessing.size
        image = open_rgb(source, draft_size=size)
        w, h = image.size
        if self.square_crop and w != h:
            side = min(w, h)
            left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
            top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
            image = image.crop((left, top, left + side, top + side))
        image = self.preprocessing.resize_image(image)
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        flips = torch.rand(2, generator=generator)
        if self.hflip and flips[0] < 0.5:
            x = x.flip(-1)
        if self.vflip and flips[1] < 0.5:
            x = x.flip(-2)
        return x.contiguous()
