"""GPU JPEG decoding: its capability check, its fall-back to the CPU, and its logic (run on the CPU here)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mtdp_core.backbones import create_backbone
from mtdp_core.data.images import Preprocessing
from mtdp_core.inference.gpu_decode import (
    JpegBytesDataset,
    gpu_jpeg_available,
    resize_on_device,
    run_gpu_decode_extraction,
)
from mtdp_core.transfer.features import FeatureExtractor, extract_features
from tests.helpers.images import make_image


def _photo(path, size=(90, 60), seed=0):
    """A smooth image (JPEG artefacts and resampling stay small on it)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    array = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (w + h)) + 60], axis=-1)
    array = np.clip(array + rng.integers(-3, 4, array.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)
    return path


def test_no_gpu_decoding_without_cuda():
    assert not gpu_jpeg_available("cpu")
    if not torch.cuda.is_available():
        assert not gpu_jpeg_available("cuda")


def test_gpu_decode_falls_back_to_the_cpu_pipeline_with_the_same_features(tmp_path):
    paths = [_photo(tmp_path / f"{i}.jpg", seed=i) for i in range(5)] + [make_image(tmp_path / "x.png")]
    common = dict(image_size=32, num_workers=0, device="cpu", engine="torch", cache_dir=tmp_path / "cache")
    plain, plain_stats = FeatureExtractor("resnet18", "random", **common).extract(paths)
    asked, asked_stats = FeatureExtractor("resnet18", "random", gpu_decode=True, **common).extract(paths)
    np.testing.assert_array_equal(plain, asked)
    assert asked_stats["n_cached"] == len(paths)  # the same (CPU-decoded) cache entry


def test_only_what_nvjpeg_decodes_as_pillow_goes_to_the_gpu(tmp_path):
    prep = Preprocessing(size=16)
    rgb = _photo(tmp_path / "rgb.jpg")
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(rgb).convert("CMYK").save(cmyk)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(rgb).save(rotated, exif=exif)
    png = make_image(tmp_path / "p.png")
    kinds = [item[0] for item in JpegBytesDataset([rgb, cmyk, rotated, png], prep)]
    assert kinds == ["jpeg", "pixels", "pixels", "pixels"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    kind, pixels, index, error = JpegBytesDataset([broken], prep)[0]
    assert kind == "pixels" and "broken.jpg" in error


def test_resizing_on_the_device_matches_pillow(tmp_path):
    path = _photo(tmp_path / "a.jpg", size=(90, 60))
    for resize in ("center_crop", "stretch"):
        prep = Preprocessing(size=32, resize=resize)
        image = np.array(Image.open(path).convert("RGB"))
        reference = np.asarray(prep.resize_image(Image.fromarray(image)), dtype=int)
        got = resize_on_device(torch.from_numpy(image).permute(2, 0, 1), prep).numpy().astype(int)
        assert got.shape == reference.shape == (32, 32, 3)
        assert np.abs(got - reference).mean() < 1.0 and np.abs(got - reference).max() <= 3


def test_the_gpu_decoding_loop_on_the_cpu_gives_the_pipelines_features(tmp_path):
    # decode_jpeg also decodes on the CPU: the loop (routing, batching, resizing, order) runs here.
    paths = [_photo(tmp_path / f"{i}.jpg", size=(40 + 4 * i, 36), seed=i) for i in range(5)]
    paths.insert(2, make_image(tmp_path / "x.png", size=(40, 36)))
    backbone = create_backbone("resnet18", "random")
    prep = Preprocessing.for_backbone(backbone, size=32)
    reference = extract_features(backbone, paths, prep, batch_size=4, num_workers=0, device="cpu", progress=False)
    out = np.zeros_like(reference)

    def sink(index, rows):
        out[index] = rows

    run_gpu_decode_extraction(
        backbone.eval(), prep, paths, range(len(paths)), sink, device=torch.device("cpu"), batch_size=4, num_workers=1
    )
    cosine = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.99  # the same images, up to JPEG decoder and resampling rounding
    np.testing.assert_array_equal(out[2], reference[2])  # the PNG went through the CPU path
