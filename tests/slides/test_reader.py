"""Opening slides and reading regions: levels and resolution from the files, regions equal to the
level-0 pixels after resizing, the best level, bounded reads, and the errors users meet."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from mtdp_core.errors import ConfigurationError, MissingResolutionError, RegionOutsideSlideError, SlideReadError
from mtdp_core.slides import reader
from mtdp_core.slides.reader import Resolution, SlideSource, cached_slide, open_slide
from mtdp_core.slides.testing import build_pyramid, tissue_like, write_tiled_slide
from tests.helpers.slides import MPP, SIZE


def _diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


# --------------------------------------------------------------------------- metadata


def test_generic_tiff_levels_and_resolution(tiff_slide):
    with open_slide(tiff_slide) as slide:
        assert slide.backend == "openslide"
        assert slide.vendor == "generic-tiff"
        assert slide.dimensions == SIZE
        assert slide.level_dimensions == ((720, 560), (360, 280), (180, 140))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.mpp == pytest.approx(MPP)
        assert slide.objective_power is None
        assert slide.magnification == pytest.approx(10 / MPP)  # derived, 10 µm/px at 1x
        info = slide.info()
        assert info["mpp_source"] == "file" and len(info["levels"]) == 3


def test_aperio_svs_levels_resolution_and_objective(svs_slide):
    with open_slide(svs_slide) as slide:
        assert slide.vendor == "aperio"
        # The thumbnail IFD after level 0 is an associated image, not a level.
        assert slide.level_count == 3
        assert slide.level_dimensions[1] == (360, 280)
        assert slide.mpp == pytest.approx(MPP)
        assert slide.objective_power == 10
        assert "thumbnail" in slide.associated_images


def test_plain_image_is_a_one_level_slide_without_resolution(png_slide, slide_pixels):
    with open_slide(png_slide) as slide:
        assert slide.backend == "pillow"
        assert slide.dimensions == SIZE and slide.level_count == 1
        assert slide.mpp is None and slide.objective_power is None
        region = slide.read_region((100, 50, 64, 48), (64, 48))
        assert np.array_equal(np.asarray(region), slide_pixels[50:98, 100:164])


def test_plain_tiff_resolution_in_centimetres_is_read_and_low_dpi_is_ignored(tmp_path):
    pixels = tissue_like((40, 60), seed=1)
    Image.fromarray(pixels).save(tmp_path / "cm.tif", resolution=40000.0, resolution_unit=3)  # px per cm
    Image.fromarray(pixels).save(tmp_path / "dpi.png", dpi=(72, 72))
    with open_slide(tmp_path / "cm.tif") as slide:
        assert slide.backend == "pillow"
        assert slide.mpp == pytest.approx(0.25)
    with open_slide(tmp_path / "dpi.png") as slide:
        assert slide.mpp is None  # 72 dpi is a writer's default, not a scan's resolution


def test_user_mpp_overrides_the_file(png_slide, tiff_slide):
    with open_slide(png_slide, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.info()["mpp_source"] == "user"
    with open_slide(tiff_slide, mpp=0.3) as slide:
        assert slide.mpp == 0.3
    with pytest.raises(ConfigurationError, match="resolution"):
        open_slide(tiff_slide, mpp=-1)


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.5", Resolution(mpp=0.5)),
        ("0.5mpp", Resolution(mpp=0.5)),
        (" 0.25 um ", Resolution(mpp=0.25)),
        ("0.5µm/px", Resolution(mpp=0.5)),
        ("20x", Resolution(magnification=20)),
        ("2.5X", Resolution(magnification=2.5)),
        (0.5, Resolution(mpp=0.5)),
    ],
)
def test_resolution_parse(text, expected):
    assert Resolution.parse(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "-1", "0", "20y", "x20"])
def test_resolution_parse_rejects(text):
    with pytest.raises(ConfigurationError):
        Resolution.parse(text)


def test_downsample_for_mpp_and_magnification(svs_slide, tiff_slide, png_slide):
    with open_slide(svs_slide) as slide:
        assert slide.downsample_for(None) == 1.0
        assert slide.downsample_for("2") == pytest.approx(2.0)
        assert slide.downsample_for("5x") == pytest.approx(2.0)  # objective power 10
        assert slide.downsample_for("2.5x") == pytest.approx(4.0)
    with open_slide(tiff_slide) as slide:  # no objective power: magnification through 10 µm/px at 1x
        assert slide.downsample_for("2x") == pytest.approx(5.0 / MPP)
    with open_slide(png_slide) as slide:
        with pytest.raises(MissingResolutionError, match="--slide-mpp"):
            slide.downsample_for("2")
        with pytest.raises(MissingResolutionError, match="--slide-mpp"):
            slide.downsample_for("5x")


def test_best_level(tiff_slide):
    with open_slide(tiff_slide) as slide:
        assert [slide.best_level(d) for d in (0.5, 1, 1.9, 2, 2.01, 3.9, 4, 100)] == [0, 0, 0, 1, 1, 1, 2, 2]
        # Within 1% of a level's downsample counts as that level (scanners' 3.9997 for 4).
        assert slide.best_level(3.98) == 2


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize("fixture", ["tiff_slide", "svs_slide"])
def test_region_at_a_level_equals_that_level(request, fixture, slide_pixels):
    pyramid = build_pyramid(slide_pixels, 3)
    with open_slide(request.getfixturevalue(fixture)) as slide:
        # Level 0, exactly (lossless tiles), across tile borders.
        region = slide.read_region((100, 90, 200, 100), (200, 100))
        assert np.array_equal(np.asarray(region), slide_pixels[90:190, 100:300])
        # Downsample 2 on even coordinates: level 1's own pixels, no resampling.
        region = slide.read_region((200, 120, 300, 200), (150, 100))
        assert np.array_equal(np.asarray(region), pyramid[1][60:160, 100:250])
        # The same at a resolution: 2 µm/px on a 1 µm/px slide.
        assert np.array_equal(np.asarray(slide.read(200, 120, 300, 200, resolution="2")), np.asarray(region))


def test_region_between_levels_matches_level0_resized(tiff_slide, slide_pixels):
    box = (96.5, 81.0, 300.0, 240.0)  # downsample 3: read from level 1, resized by 1.5
    out = (100, 80)
    reference = Image.fromarray(slide_pixels).resize(
        out, Image.Resampling.BILINEAR, box=(box[0], box[1], box[0] + box[2], box[1] + box[3])
    )
    with open_slide(tiff_slide) as slide:
        assert slide.best_level(3.0) == 1
        region = slide.read_region(box, out)
    assert region.size == out
    assert _diff(region, reference) < 4.0  # resampling tolerance (0-255 scale)


def test_region_upsampled_from_level0(tiff_slide, slide_pixels):
    reference = Image.fromarray(slide_pixels[100:150, 200:250]).resize((100, 100), Image.Resampling.BILINEAR)
    with open_slide(tiff_slide) as slide:
        region = slide.read_region((200, 100, 50, 50), (100, 100))
    assert _diff(region, reference) < 2.0


def test_region_partly_outside_is_background(tiff_slide, slide_pixels):
    with open_slide(tiff_slide) as slide:
        region = np.asarray(slide.read_region((-20, 500, 100, 100), (100, 100)))
    assert (region[:, :20] == 255).all()  # left of the slide
    assert (region[60:, :] == 255).all()  # below it (560 px high)
    assert np.array_equal(region[:60, 20:], slide_pixels[500:560, 0:80])


def test_region_outside_or_invalid_is_refused(tiff_slide):
    with open_slide(tiff_slide) as slide:
        with pytest.raises(RegionOutsideSlideError, match="outside slide pyramid.tif"):
            slide.read_region((800, 0, 100, 100), (50, 50))
        with pytest.raises(RegionOutsideSlideError, match="top-left"):
            slide.read_region((-200, -200, 100, 100), (50, 50))
        with pytest.raises(ConfigurationError, match="must be > 0"):
            slide.read_region((0, 0, 0, 10), (10, 10))
        with pytest.raises(ConfigurationError, match="limit"):
            slide.read_region((0, 0, 720, 560), (720, 560), max_output_side=512)


def test_large_outputs_are_read_in_bounded_blocks(tmp_path, monkeypatch):
    """A thumbnail of a one-level slide never reads more than the block budget at once, and
    the blocks join without seams (same picture as one read)."""
    pixels = tissue_like((900, 1200), seed=4)
    path = tmp_path / "flat.tif"
    write_tiled_slide(
        path,
        (1200, 900),
        lambda level, c, r, t: pixels[r * t : (r + 1) * t, c * t : (c + 1) * t],
        levels=1,
        tile=128,
    )
    whole = open_slide(path).thumbnail(300)
    reads: list[int] = []
    original = reader.OpenSlideSlide._read_level

    def spy(self, level, x, y, w, h):
        reads.append(w * h)
        return original(self, level, x, y, w, h)

    monkeypatch.setattr(reader, "READ_BLOCK_PIXELS", 256 * 256)
    monkeypatch.setattr(reader.OpenSlideSlide, "_read_level", spy)
    with open_slide(path) as slide:
        blocks = slide.thumbnail(300)
    assert len(reads) > 4
    assert max(reads) <= (256 + 16) ** 2  # the budget plus the resampling margin
    assert blocks.size == whole.size == (300, 225)
    assert _diff(blocks, whole) < 0.5


def test_empty_tiles_read_as_background(tmp_path):
    pixels = tissue_like((256, 256), seed=5)
    path = write_tiled_slide(
        tmp_path / "sparse.tif",
        (512, 256),
        lambda level, c, r, t: pixels if c == 0 else None,  # right tile absent (0 bytes)
        levels=1,
        tile=256,
    )
    with open_slide(path) as slide:
        region = np.asarray(slide.read_region((0, 0, 512, 256), (512, 256)))
    assert np.array_equal(region[:, :256], pixels)
    assert (region[:, 256:] == 255).all()


# --------------------------------------------------------------------------- errors and processes


def test_unreadable_file_names_the_file_and_the_formats(tmp_path):
    bad = tmp_path / "scan.svs"
    bad.write_bytes(b"this is not a slide")
    with pytest.raises(SlideReadError, match=r"scan\.svs.*Aperio \.svs.*\.png"):
        open_slide(bad)
    with pytest.raises(SlideReadError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_cached_slide_opens_once_per_process_and_sources_pickle(tiff_slide):
    source = SlideSource(str(tiff_slide))
    assert cached_slide(source) is cached_slide(source)
    assert pickle.loads(pickle.dumps(source)) == source
    assert cached_slide(SlideSource(str(tiff_slide), mpp=0.3)).mpp == 0.3


# --------------------------------------------------------------------------- the real slide


@pytest.mark.realdata
def test_real_aperio_slide(real_slide):
    import openslide

    with open_slide(real_slide) as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.mpp == pytest.approx(0.499)
        assert slide.objective_power == 20
        region = slide.read_region((1000, 1200, 300, 200), (300, 200))
        direct = openslide.OpenSlide(str(real_slide)).read_region((1000, 1200), 0, (300, 200)).convert("RGB")
        assert np.array_equal(np.asarray(region), np.asarray(direct))
        half = slide.read_region((1000, 1200, 300, 200), (150, 100))
        assert _diff(half, direct.resize((150, 100), Image.Resampling.BILINEAR)) < 3.0
