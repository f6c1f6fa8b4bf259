"""The joint transforms and the training order: labels nearest-only, padding, the single-class crop
rule, photometric maths, and determinism as a pure function of (seed, iteration, slot)."""
from __future__ import annotations

import colorsys

import numpy as np

import pytest
import torch

import dataclasses
from pathlib import Path

from deeplab.config import load_params
from deeplab.data.labels import IGNORE_INDEX
from deeplab.datasets import GlobalBatchSampler
from deeplab.transforms import (Augmentation, Photometric, hsv_to_rgb, keep_ratio_size, normalize, pad,
                                photometric_distortion, random_crop, random_flip, random_rescale, resize_label,
                                rgb_to_hsv, sample_seed, train_sample)

CFG = load_params(Path(__file__).resolve().parent.parent / "params").resolve("voc-r50-os8")


def test_labels_are_only_nearest_resized() -> None:
    label = torch.randint(0, 3, (37, 53), dtype=torch.uint8) * 100  # values 0, 100, 200: blending would show
    label[5:9] = IGNORE_INDEX
    for size in ((80, 111), (13, 20)):
        assert set(resize_label(label, size).unique().tolist()) <= {0, 100, 200, IGNORE_INDEX}
    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        scaled_image, scaled_label = random_rescale(image, label, (128, 64), (0.5, 2.0), gen)
        assert scaled_image.shape[-2:] == scaled_label.shape and scaled_image.dtype == torch.uint8
        assert set(scaled_label.unique().tolist()) <= {0, 100, 200, IGNORE_INDEX}


def test_keep_ratio_size_fits_the_scale_like_the_reference() -> None:
    assert keep_ratio_size(375, 500, (2048, 512)) == (512, 683)    # short side limited
    assert keep_ratio_size(1024, 2048, (2048, 512)) == (512, 1024)
    assert keep_ratio_size(100, 1000, (2048, 512)) == (205, 2048)  # long side limited


def test_pad_is_centred_with_zero_for_images_and_ignore_for_labels() -> None:
    """The reference pads a smaller crop centred: top = (H - h) // 2, left = (W - w) // 2, the rest below and
    to the right; the image with 0 after normalisation, the label with the ignore index."""
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    label = torch.ones(5, 7, dtype=torch.uint8)
    padded_image, padded_label = pad(image, label, (8, 11))
    expected_label = np.pad(label.numpy(), ((1, 2), (2, 2)), constant_values=IGNORE_INDEX)  # (8-5)//2, (11-7)//2
    np.testing.assert_array_equal(padded_label.numpy(), expected_label)
    np.testing.assert_array_equal(padded_image.numpy(), np.pad(image.numpy(), ((0, 0), (1, 2), (2, 2))))
    # the whole chain equals the reference's order: normalise the crop, then pad it with 0, centred
    mean, std = CFG.train.mean, CFG.train.std
    ours = normalize(padded_image[None].float(), mean, std, torch.tensor([[1, 2, 5, 7]]))
    reference = (image.float().numpy() - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    reference = np.pad(reference, ((0, 0), (1, 2), (2, 2)))
    np.testing.assert_allclose(ours[0].numpy(), reference, rtol=1e-6, atol=1e-5)
    aug = dataclasses.replace(Augmentation.of(CFG), base_scale=(10, 5), ratio_range=(1.0, 1.0), crop=(8, 11))
    sample = train_sample(image, label, aug, seed=3)
    assert sample["valid"].tolist() == [1, 2, 5, 7] and sample["label"][0].eq(IGNORE_INDEX).all()


def test_crop_redraws_while_one_class_dominates() -> None:
    label = torch.zeros(40, 40, dtype=torch.uint8)
    label[:, 30:] = 1            # class 1 only in the right quarter
    label[:, 20:30] = IGNORE_INDEX
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)

    def share_ok(ratio: float) -> float:
        gen, ok = torch.Generator().manual_seed(0), 0
        for _ in range(200):
            _, crop = random_crop(image, label, (16, 16), ratio, gen)
            counts = torch.bincount(crop.flatten(), minlength=256)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            ok += int(len(counts) > 1 and counts.max() < 0.75 * counts.sum())
        return ok / 200
    assert share_ok(0.75) > 2 * share_ok(1.0)
    # No crop of a one-class label satisfies the rule: it gives up after exactly 10 draws and keeps the last.
    uniform = torch.zeros(40, 40, dtype=torch.uint8)
    where = torch.arange(40 * 40).reshape(1, 40, 40)  # each pixel names its position
    gen = torch.Generator().manual_seed(0)
    gave_up, crop = random_crop(where, uniform, (16, 16), 0.75, gen)
    single = torch.Generator().manual_seed(0)  # cat_max_ratio 1: one draw per call
    draws = [random_crop(where, uniform, (16, 16), 1.0, single)[0] for _ in range(11)]
    assert crop.shape == (16, 16) and torch.equal(gave_up, draws[9]) and not torch.equal(gave_up, draws[8])
    assert torch.equal(random_crop(where, uniform, (16, 16), 1.0, gen)[0], draws[10])  # no 11th draw was taken


def test_train_sample_is_a_pure_function_of_its_seed() -> None:
    gen = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, 30, 45), dtype=torch.uint8, generator=gen)
    label = torch.randint(0, 4, (30, 45), dtype=torch.uint8, generator=gen)
    aug = dataclasses.replace(Augmentation.of(CFG), base_scale=(64, 32), crop=(24, 24))
    a, b = train_sample(image, label, aug, seed=11), train_sample(image, label, aug, seed=11)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["image"].shape == (3, 24, 24) and a["label"].shape == (24, 24) and a["image"].dtype == torch.uint8
    others = [train_sample(image, label, aug, seed=s) for s in range(12, 20)]
    assert any(not torch.equal(a["image"], o["image"]) for o in others)
    assert sample_seed(0, 5, 1) == sample_seed(0, 5, 1) != sample_seed(0, 5, 2) != sample_seed(1, 5, 1)


def test_hsv_round_trip_and_reference_formula() -> None:
    rgb = torch.randint(0, 256, (2, 3, 6, 6)).float()
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-3)
    r, g, b = (float(v) for v in rgb[0, :, 1, 2])
    h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    hsv = rgb_to_hsv(rgb)[0, :, 1, 2]
    assert hsv[0].item() == pytest.approx(h * 6, abs=1e-4) and hsv[1].item() == pytest.approx(s, abs=1e-5)


def test_photometric_distortion_steps() -> None:
    images = torch.randint(0, 256, (3, 3, 8, 8)).float()
    identity = torch.stack([Photometric().as_tensor()] * 3)
    assert torch.allclose(photometric_distortion(images, identity), images, atol=1e-3)
    bright = torch.stack([Photometric(brightness=10.0).as_tensor()] * 3)
    assert torch.allclose(photometric_distortion(images, bright), (images + 10).clamp(0, 255), atol=1e-3)
    grey = photometric_distortion(images, torch.stack([Photometric(saturation=0.0).as_tensor()] * 3))
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-3) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-3)
    assert photometric_distortion(images, torch.stack([Photometric(contrast=3.0).as_tensor()] * 3)).max() <= 255


def test_ranks_and_micro_batches_partition_the_global_batch() -> None:
    single = GlobalBatchSampler(10, 4, seed=0, start=0, stop=6)
    per_iteration = [single.rank_items(it) for it in range(6)]
    for it, items in enumerate(per_iteration):  # an epoch is 2 iterations (drop_last), no repeats inside
        epoch_items = per_iteration[it - it % 2] + per_iteration[it - it % 2 + 1]
        assert len({i for i, _ in epoch_items}) == 8
    ranks = [list(GlobalBatchSampler(10, 4, seed=0, start=0, stop=6, rank=r, world=2, accumulation=2))
             for r in range(2)]
    for it in range(6):  # rank r, micro-batch k of iteration it: 1 image each; together the global batch
        joined = [item for r in range(2) for item in ranks[r][2 * it] + ranks[r][2 * it + 1]]
        assert joined == per_iteration[it]
    resumed = list(GlobalBatchSampler(10, 4, seed=0, start=3, stop=6))
    assert resumed == per_iteration[3:]
    with pytest.raises(ValueError, match="cannot be split"):
        GlobalBatchSampler(10, 4, seed=0, start=0, stop=1, world=3)


def _blocky_label(gen: torch.Generator, height: int, width: int) -> torch.Tensor:
    """A label of a few class rectangles and ignore stripes: crops of it sometimes hold one class only."""
    label = torch.zeros(height, width, dtype=torch.uint8)
    for _ in range(int(torch.randint(1, 5, (), generator=gen))):
        top, left = (int(torch.randint(0, n, (), generator=gen)) for n in (height, width))
        label[top:top + height // 2, left:left + width // 3] = int(torch.randint(1, 19, (), generator=gen))
    label[:, ::17] = IGNORE_INDEX
    return label


def test_the_crop_first_chain_is_the_crop_of_the_whole_resize_over_1200_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """rescaled_crop then the flip against random_rescale, random_crop then the flip, from the same
    generator state: the same
    draws (the generators stay in step), labels bit-equal, images within one grey level, for random image
    sizes (down- and up-scaled, crops larger than the image too), ratios, crops and the single-class rule's
    re-draws; tensors and channels-last arrays (the memory-mapped form) alike."""
    from deeplab import transforms
    from deeplab.transforms import mixed_enough, rescaled_crop
    paths: list[bool] = []
    cheaper = transforms.whole_resize_is_cheaper
    monkeypatch.setattr(transforms, "whole_resize_is_cheaper", lambda *a: paths.append(cheaper(*a)) or paths[-1])
    gen = torch.Generator().manual_seed(0)
    worst, redraws = 0, 0
    for draw in range(1200):
        height, width = (int(torch.randint(24, 160, (), generator=gen)) for _ in range(2))
        label = _blocky_label(gen, height, width)
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
        crop = (int(torch.randint(8, 96, (), generator=gen)), int(torch.randint(8, 96, (), generator=gen)))
        base = (int(torch.randint(32, 256, (), generator=gen)), int(torch.randint(16, 128, (), generator=gen)))
        aug = dataclasses.replace(Augmentation.of(CFG), base_scale=base, crop=crop, ratio_range=(0.5, 2.0),
                                  cat_max_ratio=(0.75, 1.0)[draw % 5 == 0])
        seed = int(torch.randint(0, 2**62, (), generator=gen))
        whole, ours = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        scaled = random_rescale(image, label, aug.base_scale, aug.ratio_range, whole)
        expected = random_crop(*scaled, aug.crop, aug.cat_max_ratio, whole, aug.crop_tries)
        source = (image, label) if draw % 2 else (image.permute(1, 2, 0).numpy(), label.numpy())
        got = rescaled_crop(*source, aug, ours)
        expected, got = random_flip(*expected, whole, aug.flip_prob), random_flip(*got, ours, aug.flip_prob)
        assert torch.equal(got[1], expected[1]), draw
        assert got[0].shape == expected[0].shape and got[0].dtype == torch.uint8, draw
        worst = max(worst, int((got[0].int() - expected[0].int()).abs().max()))
        assert torch.rand((), generator=whole) == torch.rand((), generator=ours)  # as many draws taken
        first = torch.Generator().manual_seed(seed)
        _, window = random_crop(*random_rescale(image, label, aug.base_scale, aug.ratio_range, first), aug.crop,
                                aug.cat_max_ratio, first, tries=1)
        redraws += not mixed_enough(window, aug.cat_max_ratio)  # the rule drew this crop again
    assert worst <= 1, worst
    assert redraws > 100, redraws
    assert 100 < sum(paths) < len(paths) - 100, sum(paths)  # both ways: the whole resize and the window
