"""Data plumbing of training: dataset specs, samplers that resume mid-epoch, per-sample seeded augmentation that
does not depend on the number of loader workers."""
import pytest
import torch

from fastfer.train.data import (Augmented, SeededSampler, ShuffleSampler, light_transforms, make_sampler,
                                parse_data_spec, sample_seed, train_loader)


def test_parse_data_spec():
    assert parse_data_spec("synthetic") == ("synthetic", None)
    assert parse_data_spec("RAF-DB:/data/raf") == ("rafdb", "/data/raf")
    assert parse_data_spec("folder:~/faces")[1].endswith("/faces")
    for bad, msg in (("rafdb", "expected rafdb:PATH"), ("synthetic:/x", "takes no path"),
                     ("mnist:/x", "expected 'synthetic' or NAME:PATH")):
        with pytest.raises(ValueError, match=msg):
            parse_data_spec(bad)


def test_shuffle_sampler_shards_pads_and_resumes():
    full = ShuffleSampler(10, seed=3)
    full.set_epoch(1)
    order = full.epoch_indices()
    assert sorted(order) == list(range(10))
    shards = [ShuffleSampler(10, seed=3, num_replicas=3, rank=r) for r in range(3)]
    for s in shards:
        s.set_epoch(1)
    got = [i for s in shards for i in s.epoch_indices()]
    assert len(got) == 12 and set(got) == set(range(10))  # padded to 3 × 4
    full.set_epoch(1, start=4)
    assert list(full) == order[4:] and len(full) == 6
    with pytest.raises(ValueError, match="start: expected 0 ≤ start ≤ 10"):
        full.set_epoch(0, start=11)


def test_seeded_sampler_positions_are_stable_under_resume():
    s = make_sampler("class_balanced", [0] * 8 + [1] * 2, seed=0, rank=0, world_size=1, oversample_thr=0.5,
                     oversample_method="sqrt")
    s.set_epoch(2)
    whole = list(s)
    s.set_epoch(2, start=5)
    assert list(s) == whole[5:]
    assert whole[0][1] == sample_seed(0, 2, 0, 0) and whole[5][1] == sample_seed(0, 2, 0, 5)
    assert len({seed for _, seed in whole}) == len(whole)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=12):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, 24, 24), dtype=torch.uint8, generator=g)
        self.targets = [i % 3 for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def _batches(workers):
    ds = Augmented(_Images(), light_transforms(16, (0.5,) * 3, (0.25,) * 3, train=True))
    sampler = SeededSampler(ShuffleSampler(12, seed=1), seed=1)
    sampler.set_epoch(0)
    return [x for x, _ in train_loader(ds, sampler, 4, workers)]


def test_augmentation_is_a_function_of_the_sample_seed_not_the_workers():
    state = torch.get_rng_state()
    a, b = _batches(0), _batches(2)
    assert torch.equal(torch.get_rng_state(), state)  # the process RNG is never drawn from
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    ds = Augmented(_Images(), light_transforms(16, (0.5,) * 3, (0.25,) * 3, train=True))
    assert not torch.equal(ds[(0, 1)][0], ds[(0, 2)][0])  # different seeds, different crops/flips
