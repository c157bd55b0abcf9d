"""Patches come from around the annotations and augmentations keep image and labels aligned."""

import numpy as np

from napari_sparse_unet.core.training.sampling import PatchSampler, TrainingVolume, crop_with_padding


def _volume(shape=(20, 40, 40)):
    target = np.full(shape, -1, np.int16)
    target[10, 5:35, 5:35] = 0
    target[10, 18:22, 18:22] = 1  # a small class: balanced sampling must still find it
    image = np.zeros((1, *shape), np.float32)
    image[0][target == 1] = 1.0
    return TrainingVolume(image=image, target=target)


def _sampler(volume, **kw):
    return PatchSampler([volume], (8, 16, 16), 2, normalize=lambda x: np.asarray(x, np.float32), rng=np.random.default_rng(0), **kw)


def test_every_patch_carries_labels_and_classes_are_balanced():
    sampler = _sampler(_volume(), augment=False)
    hits = np.zeros(2)
    for _ in range(200):
        image, target = sampler.sample()
        assert image.shape == (1, 8, 16, 16) and target.shape == (8, 16, 16)
        assert (target >= 0).any()
        hits += [np.any(target == 0), np.any(target == 1)]
    assert hits[1] > 80  # the 16-voxel class appears in far more than its 2 % share of patches


def test_augmentation_keeps_image_and_target_aligned():
    sampler = _sampler(_volume(), augment=True)
    for _ in range(50):
        image, target = sampler.sample()
        # Intensity changes are monotonic, so the class-1 voxels stay the brightest.
        if (target == 1).any() and (target == 0).any():
            assert image[0][target == 1].min() > image[0][target == 0].max()


def test_painted_slice_lands_at_every_depth_of_the_middle_half_even_when_the_patch_spans_the_axis():
    # Patch depth 8 = volume depth: a patch clamped inside the volume would put the
    # painted slice at one fixed depth, and the network would learn only that depth.
    target = np.full((8, 16, 16), -1, np.int16)
    target[5] = 0
    target[5, 4:8, 4:8] = 1
    volume = TrainingVolume(image=np.zeros((1, 8, 16, 16), np.float32), target=target)
    sampler = _sampler(volume, augment=False)
    depths = set()
    for _ in range(200):
        _, patch_target = sampler.sample()
        painted = np.flatnonzero((patch_target >= 0).any(axis=(1, 2)))
        assert len(painted) == 1
        depths.add(int(painted[0]))
    assert depths == {2, 3, 4, 5, 6}  # the middle half of 8: offsets 2..6


def test_patch_larger_than_volume_is_padded_with_unannotated():
    target = np.full((4, 10, 10), -1, np.int16)
    target[2, 2:8, 2:8] = 0
    target[2, 4:6, 4:6] = 1
    volume = TrainingVolume(image=np.zeros((1, 4, 10, 10), np.float32), target=target)
    image, target = _sampler(volume, augment=False).sample()
    assert image.shape == (1, 8, 16, 16)
    assert (target == -1).sum() >= 8 * 16 * 16 - 4 * 10 * 10


def testcrop_with_padding_exact():
    a = np.arange(5)
    assert crop_with_padding(a, [-2], [4], fill=-1).tolist() == [-1, -1, 0, 1]
    assert crop_with_padding(a, [3], [4], fill=None).tolist() == [3, 4, 3, 2]
    assert crop_with_padding(a, [-3], [10], fill=None).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2]
    b = np.arange(12).reshape(3, 4)
    assert np.array_equal(crop_with_padding(b, [-1, 1], [5, 2], fill=None), np.pad(b, 1, mode="reflect")[:, 2:4])
    assert crop_with_padding(np.arange(1), [-2], [3], fill=None).tolist() == [0, 0, 0]

