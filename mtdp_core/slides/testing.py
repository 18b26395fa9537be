"""Writing test slides: pyramidal tiled TIFFs and Aperio-like SVS files, of any size.

For tests and benchmarks (needs ``tifffile``, in the ``test`` extra; JPEG tiles also need
``imagecodecs``). Each level is one IFD of the main chain, which OpenSlide opens both as a
generic tiled TIFF and, with an Aperio description, as an Aperio slide (its ``subifds``
pyramids would open as one level).

- ``write_slide(path, image)``: an in-memory RGB array -> a pyramid (each level the previous
  one halved, box filter), lossless ``zlib`` tiles by default, so tests can compare pixels.
- ``write_tiled_slide(path, size, tile_fn)``: slides larger than memory: ``tile_fn(level,
  col, row, tile)`` returns each tile's pixels (or None for an empty tile: written sparse,
  0 bytes; a generic TIFF reads it back as background, while OpenSlide renders a missing
  Aperio tile from the levels above it, slowly), called once per tile as it is written; with
  ``encoded=True`` it returns the tile already compressed (e.g. a few JPEG tiles encoded once
  and repeated: a 100,000 px slide is written in seconds).
- ``tissue_like(shape, seed)``: H&E-looking synthetic pixels (pink stroma, purple nuclei on
  a white background) for tests that run without real data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

TileFn = Callable[[int, int, int, int], "np.ndarray | bytes | None"]


def _tifffile():
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - in the test extra
        raise ImportError("Writing test slides needs tifffile: pip install 'mtdp[test]'.") from exc
    return tifffile


def _description(fmt: str, size: tuple[int, int], mpp: float | None, magnification: float | None, tile: int) -> str:
    if fmt != "svs":
        return ""
    w, h = size
    parts = [f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) -> {w}x{h} JPEG/RGB Q=80"]
    if magnification is not None:
        parts.append(f"AppMag = {magnification:g}")
    if mpp is not None:
        parts.append(f"MPP = {mpp:g}")
    parts.append("ScanScope ID = MTDP-TEST")
    return "|".join(parts)


def level_sizes(size: tuple[int, int], levels: int, factor: int = 2) -> list[tuple[int, int]]:
    w, h = size
    return [(max(1, w // factor**i), max(1, h // factor**i)) for i in range(levels)]


def write_tiled_slide(
    path: str | os.PathLike,
    size: tuple[int, int],
    tile_fn: TileFn,
    *,
    levels: int = 3,
    factor: int = 2,
    tile: int = 256,
    fmt: str = "tiff",
    mpp: float | None = 0.5,
    magnification: float | None = None,
    compression: str = "zlib",
    thumbnail: np.ndarray | None = None,
    encoded: bool = False,
) -> Path:
    """Write a pyramidal slide tile by tile (memory: one tile), see the module docstring.

    Args:
        size: level-0 (width, height).
        tile_fn: ``(level, col, row, tile) -> (tile, tile, 3) uint8 or None``.
        levels, factor: number of levels and downsample between consecutive levels.
        fmt: ``"tiff"`` (generic tiled TIFF, resolution in the TIFF tags) or ``"svs"`` (Aperio
            description with AppMag/MPP, plus a stripped thumbnail IFD after level 0 as
            Aperio files have).
        mpp: µm per level-0 pixel (None: no resolution recorded).
        compression: ``"zlib"`` (lossless), ``"jpeg"`` (needs imagecodecs) or None.
        encoded: ``tile_fn`` returns tiles already compressed with ``compression`` (bytes).
    """
    tifffile = _tifffile()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = level_sizes(size, levels, factor)
    big = size[0] * size[1] * 3 > 2**31
    with tifffile.TiffWriter(path, bigtiff=big) as tw:
        for level, (w, h) in enumerate(sizes):
            cols, rows = -(-w // tile), -(-h // tile)

            def tiles(level: int = level, cols: int = cols, rows: int = rows) -> Iterator[np.ndarray | bytes | None]:
                for r in range(rows):
                    for c in range(cols):
                        t = tile_fn(level, c, r, tile)
                        yield (t if t is not None else b"") if encoded else t

            kwargs: dict = {}
            if level == 0 and fmt == "tiff" and mpp is not None:
                kwargs.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
            tw.write(
                tiles(),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=0 if level == 0 else 1,
                description=_description(fmt, size, mpp, magnification, tile) if level == 0 else None,
                metadata=None,
                **kwargs,
            )
            if level == 0 and fmt == "svs" and thumbnail is not None:
                tw.write(
                    thumbnail,
                    photometric="rgb",
                    compression="zlib",
                    description=f"Aperio Image Library v12.0.0\r\n{size[0]}x{size[1]} -> "
                    f"{thumbnail.shape[1]}x{thumbnail.shape[0]} - ",
                    metadata=None,
                )
    return path


def build_pyramid(image: np.ndarray, levels: int, factor: int = 2) -> list[np.ndarray]:
    """``image`` and each coarser level (box filter from the previous level, PIL ``reduce``)."""
    out = [np.ascontiguousarray(image)]
    for w, h in level_sizes((image.shape[1], image.shape[0]), levels, factor)[1:]:
        prev = Image.fromarray(out[-1])
        reduced = prev.crop((0, 0, w * factor, h * factor)).reduce(factor)
        out.append(np.asarray(reduced))
    return out


def write_slide(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    levels: int = 3,
    factor: int = 2,
    tile: int = 128,
    fmt: str = "tiff",
    mpp: float | None = 0.5,
    magnification: float | None = None,
    compression: str = "zlib",
) -> Path:
    """Write an RGB array (h, w, 3) as a pyramidal slide (see ``write_tiled_slide``)."""
    pyramid = build_pyramid(np.asarray(image, dtype=np.uint8), levels, factor)

    def tile_fn(level: int, col: int, row: int, size: int) -> np.ndarray:
        return pyramid[level][row * size : (row + 1) * size, col * size : (col + 1) * size]

    thumb = pyramid[-1] if fmt == "svs" else None
    return write_tiled_slide(
        path,
        (image.shape[1], image.shape[0]),
        tile_fn,
        levels=levels,
        factor=factor,
        tile=tile,
        fmt=fmt,
        mpp=mpp,
        magnification=magnification,
        compression=compression,
        thumbnail=thumb,
    )


def tissue_like(shape: tuple[int, int], seed: int = 0, *, tissue: np.ndarray | None = None) -> np.ndarray:
    """(h, w, 3) uint8 H&E-like pixels: white glass, and where ``tissue`` (bool (h, w); default
    a centred ellipse) pink stroma with purple nuclei and texture."""
    from scipy import ndimage

    h, w = shape
    rng = np.random.default_rng(seed)
    if tissue is None:
        yy, xx = np.mgrid[0:h, 0:w]
        tissue = ((xx - w / 2) / (0.38 * w)) ** 2 + ((yy - h / 2) / (0.36 * h)) ** 2 <= 1
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), 3)
    texture /= max(np.abs(texture).max(), 1e-6)
    nuclei = ndimage.gaussian_filter((rng.random((h, w)) < 0.004).astype(float), 2.5)
    nuclei = np.clip(nuclei / max(nuclei.max(), 1e-6) * 2.5, 0, 1)
    stroma = np.array([232.0, 150.0, 190.0])
    nucleus = np.array([95.0, 60.0, 150.0])
    pix = stroma + texture[..., None] * np.array([12.0, 25.0, 15.0])
    pix = pix * (1 - nuclei[..., None]) + nucleus * nuclei[..., None]
    glass = np.array([243.0, 242.0, 245.0]) + rng.normal(0, 1.5, (h, w, 3))
    out = np.where(tissue[..., None], pix, glass)
    return np.clip(out, 0, 255).astype(np.uint8)
