import pickle

import numpy as np
import pytest
import torch

from mtdp_core.data.datasets import MultiTaskDataset, StringArray
from mtdp_core.data.images import Preprocessing, TrainAugmentation
from mtdp_core.data.sampler import TaskBalancedSampler
from mtdp_core.errors import DataError
from tests.data.pool_factory import make_tiny_pool


@pytest.fixture
def pool(tmp_path):
    return make_tiny_pool(tmp_path / "pool")


def test_string_array():
    strings = ["a", "", "ééé/path.png", "x" * 300]
    array = StringArray(strings)
    assert len(array) == 4 and [array[i] for i in range(4)] == strings
    assert [pickle.loads(pickle.dumps(array))[i] for i in range(4)] == strings


def test_items_are_image_label_task(pool):
    dataset = MultiTaskDataset.from_pool(pool, "train", Preprocessing(size=24))
    assert (
        dataset.task_names == ["alpha", "beta", "gamma"]
        and dataset.task_sizes == [6, 9, 24]
        and dataset.n_classes == [2, 3, 2]
    )
    assert list(dataset.offsets) == [0, 6, 15] and len(dataset) == 39
    image, label, task = dataset[7]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 24)
    assert task == 1 and label == pool["beta"].samples("train").labels[1]
    assert dataset.path(7) == pool["beta"].samples("train").paths[1]
    assert dataset[(7, 123)][0].equal(image)  # no augmentation: the seed is ignored


def test_augmentation_follows_the_sample_seed(pool):
    augment = TrainAugmentation(Preprocessing(size=24))
    dataset = MultiTaskDataset.from_pool(pool, "train", augment)
    index = 16  # gamma's 2nd training image: non-square, so the square crop is random
    images = [dataset[(index, seed)][0] for seed in range(12)]
    assert all(img.equal(dataset[(index, seed)][0]) for seed, img in enumerate(images))  # reproducible
    assert len({img.numpy().tobytes() for img in images}) > 2  # and varied


def test_batches_through_a_dataloader_match_with_or_without_workers(pool):
    dataset = MultiTaskDataset.from_pool(pool, "train", TrainAugmentation(Preprocessing(size=24)))
    sampler = TaskBalancedSampler(dataset.task_sizes, 8, batches_per_epoch=3, seed=0)
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
        batches.append(list(loader))
    for (x0, y0, t0), (x1, y1, t1) in zip(*batches):
        assert x0.shape == (8, 3, 24, 24) and x0.equal(x1) and y0.equal(y1) and t0.equal(t1)
    tasks = np.concatenate([t.numpy() for _, _, t in batches[0]])
    items = [i for k in range(3) for i, _ in sampler.local_batch(k)]
    assert list(tasks) == [dataset.task_index(i) for i in items]


def test_missing_image_is_a_clear_error(pool):
    dataset = MultiTaskDataset.from_pool(pool, "train", Preprocessing(size=24))
    dataset.path(0).unlink()
    with pytest.raises(DataError, match="of task 'alpha' is missing"):
        dataset[0]
