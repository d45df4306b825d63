import numpy as np
import pytest
import torch

from fastfer.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RAFDB_MEAN,
    RAFDB_STD,
    RandomContrast,
    build_transforms,
    normalization,
)


def image(h=130, w=100):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("recipe,size", [("apvit", 112), ("fer_former", 112), ("conv_cut", 224),
                                         ("FER-former", 112), ("convcut", 224)])
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_dtype(recipe, size, train):
    torch.manual_seed(0)
    out = build_transforms(recipe, train)(image())
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    out = build_transforms(recipe, train, input_size=64)(image().permute(1, 2, 0).numpy())  # HWC numpy input
    assert out.shape == (3, 64, 64)


@pytest.mark.parametrize("recipe,mean,std", [("apvit", IMAGENET_MEAN, IMAGENET_STD),
                                             ("fer_former", RAFDB_MEAN, RAFDB_STD),
                                             ("conv_cut", IMAGENET_MEAN, IMAGENET_STD)])
def test_test_transform_normalises_with_recipe_stats(recipe, mean, std):
    flat = torch.full((3, 50, 50), 128, dtype=torch.uint8)
    out = build_transforms(recipe, train=False)(flat)
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)
    assert normalization(recipe) == (mean, std)


def test_apvit_stats_equal_the_0_255_scale_config():
    # APViT config: mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) on 0..255
    assert np.allclose(np.array(IMAGENET_MEAN) * 255, (123.675, 116.28, 103.53))
    assert np.allclose(np.array(IMAGENET_STD) * 255, (58.395, 57.12, 57.375))


def test_train_transforms_are_random_and_test_transforms_are_not():
    img = image()
    for recipe in ("apvit", "fer_former", "conv_cut"):
        train, test = build_transforms(recipe, True), build_transforms(recipe, False)
        torch.manual_seed(1)
        outs = [train(img) for _ in range(4)]
        assert any(not torch.equal(outs[0], o) for o in outs[1:])
        assert torch.equal(test(img), test(img))


def test_apvit_train_pipeline_order():
    names = [type(t).__name__ for t in build_transforms("apvit", True).transforms]
    assert names == ["ToImage", "RandomApply", "RandomResizedCrop", "RandomHorizontalFlip", "RandomGrayscale",
                     "RandomApply", "ToDtype", "Normalize", "RandomErasing"]
    t = build_transforms("apvit", True).transforms
    assert t[1].p == 0.5 and t[5].p == 0.8 and t[8].p == 0.5 and tuple(t[2].scale) == (0.8, 1.0)
    ff = [type(x).__name__ for x in build_transforms("fer_former", True).transforms]
    assert ff == ["ToImage", "Resize", "RandomGrayscale", "RandomHorizontalFlip", "ToDtype", "Normalize",
                  "RandomErasing"]


def test_random_contrast_matches_the_keras_formula():
    torch.manual_seed(3)
    x = torch.rand(3, 8, 8) * 0.5 + 0.25
    torch.manual_seed(3)
    k = torch.empty(()).uniform_(0.7, 1.3).item()
    torch.manual_seed(3)
    out = RandomContrast(0.7, 1.3)(x)
    mean = x.mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(out, ((x - mean) * k + mean).clamp(0, 1))
    assert torch.allclose(out.mean(dim=(1, 2)), x.mean(dim=(1, 2)), atol=1e-6)  # per-channel mean kept
    with pytest.raises(TypeError, match="expected a float image"):
        RandomContrast()(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected 0 ≤ lower ≤ upper"):
        RandomContrast(1.3, 0.7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="recipe: expected one of apvit, fer_former, conv_cut, got 'vit'"):
        build_transforms("vit", True)
    with pytest.raises(ValueError, match="input_size: expected an int ≥ 8, got 3"):
        build_transforms("apvit", True, input_size=3)
