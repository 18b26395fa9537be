import numpy as np
import pytest
import torch
from PIL import Image

from mtdp_core.data.folders import list_images
from mtdp_core.data.images import ImageFileDataset, Preprocessing, open_rgb
from mtdp_core.errors import ConfigurationError
from tests.helpers.images import make_image


@pytest.mark.parametrize("resize", ["center_crop", "stretch"])
def test_load_gives_uint8_square(tmp_path, resize):
    path = make_image(tmp_path / "a.png", size=(90, 40))
    x = Preprocessing(size=32, resize=resize).load(path)
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)


def test_center_crop_keeps_the_centre(tmp_path):
    array = np.zeros((20, 60, 3), dtype=np.uint8)
    array[:, 20:40] = 255  # white centre square
    Image.fromarray(array).save(tmp_path / "c.png")
    x = Preprocessing(size=20, resize="center_crop").load(tmp_path / "c.png")
    assert x.float().mean() > 250


def test_grayscale_and_rgba_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P"):
        path = make_image(tmp_path / f"{mode}.png", mode=mode)
        assert open_rgb(path).mode == "RGB"
        assert Preprocessing(size=16).load(path).shape == (3, 16, 16)


def test_jpeg_draft_decoding_matches_full_decoding(tmp_path):
    path = tmp_path / "big.jpg"
    yy, xx = np.mgrid[0:800, 0:1000]
    smooth = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(path, quality=95)
    prep = Preprocessing(size=64)
    fast = prep.load(path).float()
    full = torch.from_numpy(np.array(prep.resize_image(Image.open(path).convert("RGB")))).permute(2, 0, 1).float()
    assert (fast - full).abs().mean() < 6.0


def test_normalize():
    prep = Preprocessing(size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    batch = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    torch.testing.assert_close(prep.normalize(batch), torch.ones(2, 3, 8, 8))
    assert prep.normalize(torch.zeros(1, 3, 8, 8)).min() == -1


def test_key_changes_with_every_field():
    base = Preprocessing()
    others = [Preprocessing(size=112), Preprocessing(resize="stretch"), Preprocessing(mean=(0.5, 0.5, 0.5))]
    assert len({base.key(), *(o.key() for o in others)}) == 4
    assert base.key() == Preprocessing().key()


def test_invalid_values_are_rejected():
    with pytest.raises(ConfigurationError, match="Invalid image size"):
        Preprocessing(size=0)
    with pytest.raises(ConfigurationError, match="Invalid resize mode 'crop'"):
        Preprocessing(resize="crop")


def test_dataset_in_dataloader_workers(tiny_image_folder):
    paths = list_images(tiny_image_folder)
    loader = torch.utils.data.DataLoader(ImageFileDataset(paths, Preprocessing(size=16)), batch_size=3, num_workers=2)
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == len(paths)
    assert batches[0][0].shape == (3, 3, 16, 16)


def test_train_augmentation_is_seeded_and_square_crops(tmp_path):
    from mtdp_core.data.images import TrainAugmentation

    path = make_image(tmp_path / "wide.png", size=(120, 40))
    aug = TrainAugmentation(Preprocessing(size=24))
    a = aug.load(path, torch.Generator().manual_seed(1))
    b = aug.load(path, torch.Generator().manual_seed(1))
    assert a.shape == (3, 24, 24) and a.dtype == torch.uint8 and torch.equal(a, b)
    outputs = {aug.load(path, torch.Generator().manual_seed(s)).sum().item() for s in range(8)}
    assert len(outputs) > 1  # crops and flips vary with the seed
    flat = TrainAugmentation(Preprocessing(size=24), square_crop=False, hflip=False, vflip=False)
    assert torch.equal(flat.load(path), Preprocessing(size=24).load(path))


def test_numpy_normalisation_is_torchs_to_the_bit():
    # The onnxruntime engine normalises with numpy (no torch): the same float32 values as torch's.
    prep = Preprocessing(size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    batch = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    batch[0, 0, :, :] = np.arange(16)[:, None] * 16  # every channel sees many byte values
    by_numpy = prep.normalize_array(batch)
    by_torch = prep.normalize(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    assert by_numpy.shape == (3, 3, 16, 16) and by_numpy.dtype == np.float32
    np.testing.assert_array_equal(by_numpy, by_torch)
    np.testing.assert_array_equal(prep.load_array(Image.new("RGB", (20, 30), (1, 2, 3)))[0, 0], [1, 2, 3])
