"""The demo augmentation: the same pixels per sample through the per-image and the batch path, the geometry of
torchvision's edge-padded RandomCrop + horizontal flip, the test transform unchanged, clear errors."""
import pytest
import torch
from torchvision.transforms import v2

from fastfer.train.data import Augmented, CachedImages, SeededSampler, ShuffleSampler, train_loader
from fastfer.train.light import LightTransform

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)


def _images(n=10, side=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)


def _torchvision_reference(img, size, top, left, flip):
    """The old pipeline's geometry with the draws fixed: edge pad by size/16, crop at (top, left), flip."""
    pad = max(size // 16, 1)
    x = v2.functional.pad(img, [pad, pad, pad, pad], padding_mode="edge")
    x = v2.functional.crop(x, top, left, size, size)
    if flip:
        x = v2.functional.horizontal_flip(x)
    x = v2.functional.to_dtype(x, torch.float32, scale=True)
    return v2.functional.normalize(x, list(MEAN), list(STD))


def test_geometry_equals_edge_padded_crop_and_flip():
    tf = LightTransform(32, MEAN, STD, train=True)
    imgs = _images()
    seeds = list(range(100, 110))
    got = tf.batch(imgs, seeds)
    assert got.shape == (10, 3, 32, 32) and got.dtype == torch.float32
    draws = [tf.draw(torch.Generator().manual_seed(s)) for s in seeds]
    assert len(set(draws)) > 5 and {d[2] for d in draws} == {True, False}  # the draws vary, both flips occur
    for img, out, (top, left, flip) in zip(imgs, got, draws):
        assert torch.equal(out, _torchvision_reference(img, 32, top, left, flip))


def test_per_image_and_batch_paths_give_the_same_pixels():
    tf = LightTransform(32, MEAN, STD, train=True)
    imgs = _images()
    batch = tf.batch(imgs, list(range(10)))
    for i, img in enumerate(imgs):
        torch.manual_seed(i)
        assert torch.equal(tf(img), batch[i])


def test_train_transform_equals_the_torchvision_pipeline_it_replaced():
    """Bitwise, seed by seed, including the random draws: a run trains exactly as with the old pipeline."""
    size = 32
    old = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True),
                      v2.RandomCrop(size, padding=max(size // 16, 1), padding_mode="edge"),
                      v2.RandomHorizontalFlip(0.5), v2.ToDtype(torch.float32, scale=True),
                      v2.Normalize(list(MEAN), list(STD))])
    tf = LightTransform(size, MEAN, STD, train=True)
    for side in (32, 40):  # no resize, and a resize before the crop
        imgs = _images(16, side=side)
        seeds = [1000 + 7 * i for i in range(16)]
        batch = tf.batch(imgs, seeds)
        for img, seed, out in zip(imgs, seeds, batch):
            torch.manual_seed(seed)
            assert torch.equal(out, old(img)), (side, seed)


def test_test_transform_is_resize_and_normalise():
    tf = LightTransform(24, MEAN, STD, train=False)
    imgs = _images(side=40)
    old = v2.Compose([v2.ToImage(), v2.Resize((24, 24), antialias=True), v2.ToDtype(torch.float32, scale=True),
                      v2.Normalize(list(MEAN), list(STD))])
    batch = tf.batch(imgs, [None] * len(imgs))
    for img, out in zip(imgs, batch):
        assert torch.equal(tf(img), old(img)) and torch.equal(out, old(img))


def test_pil_input():
    from PIL import Image

    img = _images(1)[0]
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    tf = LightTransform(32, MEAN, STD, train=False)
    assert torch.equal(tf(pil), tf(img))


def test_augmented_batched_fetch_equals_sample_by_sample():
    images = _images(12)
    base = CachedImages(images, [i % 3 for i in range(12)], ("a", "b", "c"), "train")
    ds = Augmented(base, LightTransform(32, MEAN, STD, train=True))
    assert ds.batches_in_memory
    keys = [(3, 7), (0, 11), (11, 5), (-1, 5)]
    got = ds.__getitems__(keys)
    for (x, y), key in zip(got, keys):
        ex, ey = ds[key]
        assert torch.equal(x, ex) and y == ey
    with pytest.raises(IndexError, match="index 12 out of range for a dataset of 12 images"):
        ds.__getitems__([(1, 0), (12, 0)])
    # through the DataLoader (workers 0 and 2 alike): the same batches
    sampler = SeededSampler(ShuffleSampler(12, seed=1), seed=1)
    sampler.set_epoch(0)
    a = [x for x, _ in train_loader(ds, sampler, 4, 0)]
    sampler.set_epoch(0)
    b = [x for x, _ in train_loader(ds, sampler, 4, 2)]
    assert len(a) == 3 and all(torch.equal(p, q) for p, q in zip(a, b))


def test_datasets_without_a_batch_path_fetch_sample_by_sample():
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return _images(4)[i], i

    ds = Augmented(Plain(), LightTransform(32, MEAN, STD, train=True))
    assert not ds.batches_in_memory
    x, y = ds.__getitems__([(2, 3)])[0]
    assert y == 2 and torch.equal(x, ds[(2, 3)][0])


@pytest.mark.parametrize("bad, msg", [
    (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), r"images: expected 3-channel images .* got shape \(2, 1, 32, 32\)"),
    (torch.zeros(2, 3, 32, 32), "images: expected uint8 pixels, got torch.float32"),
])
def test_bad_batches_name_the_problem(bad, msg):
    with pytest.raises(ValueError, match=msg):
        LightTransform(32, MEAN, STD, train=True).batch(bad, [0, 1])


def test_seed_count_must_match():
    with pytest.raises(ValueError, match=r"seeds: expected one per image \(3\), got 2"):
        LightTransform(32, MEAN, STD, train=True).batch(_images(3), [0, 1])
