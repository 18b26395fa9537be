import functools
import operator

import numpy as np
import pytest
from scipy import stats

from mtdp_core.data.sampler import TaskBalancedSampler
from mtdp_core.errors import ConfigurationError

SIZES = [3, 40, 5000]  # very different task sizes, as in the paper's pool (882 to 277k images)


def _draw(sampler, n_batches):
    tasks, items = [], []
    for k in range(n_batches):
        batch = sampler.global_batch(k)
        tasks.append(batch.tasks)
        items.append(batch.items)
    return np.concatenate(tasks), np.concatenate(items)


def test_tasks_are_uniform_whatever_their_size():
    sampler = TaskBalancedSampler(SIZES, 64, batches_per_epoch=1000, seed=0)
    tasks, _ = _draw(sampler, 500)  # 32,000 samples
    counts = np.bincount(tasks, minlength=3)
    # Chi-square goodness of fit to the uniform distribution. Sampling proportionally to task
    # size (a plain random sampler) would give counts of about [19, 253, 31728]: p ~ 0.
    assert stats.chisquare(counts).pvalue > 1e-3
    assert np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.01)


def test_images_are_uniform_within_each_task():
    sampler = TaskBalancedSampler(SIZES, 64, batches_per_epoch=1000, seed=1)
    tasks, items = _draw(sampler, 500)
    offsets = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    for t, size in enumerate(SIZES[:2]):
        local = items[tasks == t] - offsets[t]
        assert local.min() >= 0 and local.max() < size
        assert stats.chisquare(np.bincount(local, minlength=size)).pvalue > 1e-3
    big = items[tasks == 2] - offsets[2]
    assert big.min() >= 0 and big.max() < SIZES[2]
    # n uniform draws among N images hit N * (1 - (1 - 1/N)^n) distinct ones on average.
    expected = SIZES[2] * (1 - (1 - 1 / SIZES[2]) ** len(big))
    assert abs(len(np.unique(big)) - expected) < 0.03 * expected


def test_tasks_are_interleaved_within_batches():
    sampler = TaskBalancedSampler([10] * 22, 64, batches_per_epoch=10, seed=0)
    distinct = [len(np.unique(sampler.global_batch(k).tasks)) for k in range(50)]
    # 64 draws among 22 tasks cover 22 * (1 - (21/22)^64) ~ 20.6 tasks on average.
    assert 19 < np.mean(distinct) < 22


def test_deterministic_per_seed_epoch_and_iteration():
    a = TaskBalancedSampler(SIZES, 8, batches_per_epoch=5, seed=7)
    b = TaskBalancedSampler(SIZES, 8, batches_per_epoch=5, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != list(b) and len(epoch1) == 5
    assert epoch1[0] == b.local_batch(5)  # epoch 1 continues the stream at batch 5
    assert list(TaskBalancedSampler(SIZES, 8, batches_per_epoch=5, seed=8)) != list(b)
    # Resuming part-way gives the remaining batches of the epoch, identical.
    a.set_iteration(7)
    assert len(a) == 3 and list(a) == epoch1[2:]


def test_ranks_split_the_global_batch():
    single = TaskBalancedSampler(SIZES, 12, batches_per_epoch=4, seed=3)
    ranks = [TaskBalancedSampler(SIZES, 12, batches_per_epoch=4, seed=3, rank=r, world_size=3) for r in range(3)]
    for k, whole in enumerate(single):
        shares = [list(r)[k] for r in ranks]
        assert all(len(s) == 4 for s in shares)
        assert functools.reduce(operator.iadd, shares, []) == whole  # same samples and seeds, in rank order
    assert list(ranks[0]) != list(ranks[1])
    assert np.array_equal(ranks[2].task_counts(2), single.task_counts(2))


def test_samples_carry_their_own_seeds():
    sampler = TaskBalancedSampler(SIZES, 64, batches_per_epoch=1, seed=0)
    seeds = [s for _, s in sampler.local_batch(0)]
    assert len(set(seeds)) == 64 and all(s >= 0 for s in seeds)
    other = TaskBalancedSampler(SIZES, 64, batches_per_epoch=1, seed=0, stream=1)
    assert other.local_batch(0) != sampler.local_batch(0)  # an independent stream


def test_state_dict_round_trip_and_validation():
    sampler = TaskBalancedSampler(SIZES, 8, batches_per_epoch=5, seed=2)
    sampler.set_iteration(13)
    other = TaskBalancedSampler(SIZES, 8, batches_per_epoch=5, seed=2)
    other.load_state_dict(sampler.state_dict())
    assert list(other) == list(sampler)
    with pytest.raises(ConfigurationError, match="another pool"):
        TaskBalancedSampler([1, 2], 8, batches_per_epoch=5, seed=2).load_state_dict(sampler.state_dict())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task_sizes": [3, 0]}, "at least one sample"),
        ({"batch_size": 10, "world_size": 4}, "multiple of the 4 processes"),
        ({"rank": 2, "world_size": 2}, "Invalid rank"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = {"task_sizes": [3, 4], "batch_size": 8, "batches_per_epoch": 2, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        TaskBalancedSampler(args.pop("task_sizes"), args.pop("batch_size"), **args)
