"""The fixed filter bank: closed-form eigenvalues, Hessian features, layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sparse_unet.core.config import ModelConfig
from napari_sparse_unet.core.network.filters import FilterBank, features_per_scale, symmetric_eigenvalues


@pytest.mark.parametrize("n", [1, 2, 3])
def test_closed_form_eigenvalues_match_lapack(n: int) -> None:
    rng = np.random.default_rng(n)
    matrices = rng.normal(size=(20000, n, n))
    matrices = matrices + matrices.transpose(0, 2, 1)
    # Degenerate cases: diagonal, multiples of the identity, zero.
    matrices[:10] = [np.diag(rng.normal(size=n)) for _ in range(10)]
    matrices[10:20] = np.eye(n) * 2.0
    matrices[20:30] = 0.0
    expected = np.linalg.eigvalsh(matrices)[:, ::-1]
    fields = [[torch.from_numpy(matrices[:, i, j]).float() for j in range(n)] for i in range(n)]
    got = torch.stack(symmetric_eigenvalues(fields), 1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def _ball_and_sheet(shape: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """A bright ball (radius 5) centred at (20, 20, 10) and a bright sheet at Y = 30 (3 voxels thick)."""
    z, y, x = np.indices(shape)
    image = ((z - 20) ** 2 + (y - 20) ** 2 + (x - 10) ** 2 <= 25).astype(np.float32)
    image[:, 29:32, 20:] = 1.0
    return image


def test_hessian_eigenvalues_tell_a_blob_from_a_sheet() -> None:
    bank = FilterBank([(2.0, 2.0, 2.0)], 3, hessian=True)
    image = _ball_and_sheet()
    features = bank(torch.from_numpy(image)[None, None])[0].numpy()
    halo = bank.halo[0]
    assert features.shape == (1 + features_per_scale(3, True), *(s - 2 * halo for s in image.shape))
    largest, middle, smallest = features[4:7]
    log = features[3]
    np.testing.assert_allclose(largest + middle + smallest, log, atol=1e-5)  # trace = Laplacian
    assert np.all(largest >= middle - 1e-6) and np.all(middle >= smallest - 1e-6)

    def at(z: int, y: int, x: int) -> np.ndarray:
        return features[4:7, z - halo, y - halo, x - halo]

    blob, sheet = at(20, 20, 10), at(20, 30, 30)
    # Bright blob: curved down along every axis. Bright sheet: along its normal only.
    assert blob.max() < -0.05
    assert sheet[2] < -0.1 and abs(sheet[0]) < 0.1 * abs(sheet[2]) and abs(sheet[1]) < 0.1 * abs(sheet[2])
    # The LoG alone is negative at both: it cannot tell them apart as the eigenvalues do.
    assert log[20 - halo, 20 - halo, 10 - halo] < 0 and log[20 - halo, 30 - halo, 30 - halo] < 0


def test_unfiltered_axes_leave_zero_padded_eigenvalues_and_level_mask() -> None:
    # Z not filtered (coarse sections): the in-plane 2x2 Hessian, padded with one zero.
    bank = FilterBank([(0.0, 2.0, 2.0), (1.0, 4.0, 4.0)], 3, hessian=True)
    image = torch.rand(1, 2, 12, 40, 40)
    features = bank(image)[0]
    per_channel = bank.features_per_channel
    assert per_channel == 1 + 2 * 6 and features.shape[0] == 2 * per_channel
    first_scale = features[1:7]
    assert torch.all(first_scale[5] == 0) and first_scale[3].abs().max() > 0
    np.testing.assert_allclose((first_scale[3] + first_scale[4]).numpy(), first_scale[2].numpy(), atol=1e-5)
    mask = bank.level_mask(2)
    assert mask.tolist() == ([True] + ([True] + [False] * 5) * 2) * 2


def test_bank_without_hessian_keeps_the_old_layout() -> None:
    bank = FilterBank([(1.0, 1.0, 1.0)], 3)
    assert bank.features_per_channel == 4
    assert bank(torch.rand(1, 1, 10, 10, 10)).shape == (1, 4, 4, 4, 4)


def test_context_scales_add_only_the_smoothed_intensity() -> None:
    # A context scale gives what a full scale at that σ gives as its smoothed feature, nothing else.
    sigma = (1.0, 3.0, 3.0)
    full = FilterBank([(1.0, 1.0, 1.0), sigma], 3, hessian=True)
    lean = FilterBank([(1.0, 1.0, 1.0)], 3, hessian=True, context_sigmas=[sigma])
    assert lean.halo == full.halo
    assert lean.features_per_channel == 1 + features_per_scale(3, True) + 1
    image = torch.rand(1, 2, 16, 24, 24)
    got, expected = lean(image)[0], full(image)[0]
    per = features_per_scale(3, True)
    for channel in range(2):
        lean_at, full_at = channel * lean.features_per_channel, channel * full.features_per_channel
        torch.testing.assert_close(got[lean_at : lean_at + 1 + per], expected[full_at : full_at + 1 + per])
        torch.testing.assert_close(got[lean_at + 1 + per], expected[full_at + 1 + per], atol=1e-5, rtol=1e-5)
    # Smoothed intensities follow a brightness shift: the augmentation moves them.
    assert lean.level_mask(1).tolist() == [True, True] + [False] * (per - 1) + [True]


def test_checkpoint_settings_without_context_scales_still_load() -> None:
    from napari_sparse_unet.core.config import ModelConfig

    old = ModelConfig(3, 1, 2, ((1, 2, 2),), sigmas=((1.0, 1.0, 1.0),)).to_dict()
    del old["context_sigmas"]
    config = ModelConfig.from_dict(old)
    assert config.context_sigmas == () and config.filter_bank().features_per_channel == 4


def test_checkpoint_settings_with_the_structure_tensor_switch_off_still_load() -> None:
    from napari_sparse_unet.core.config import ModelConfig
    from napari_sparse_unet.core.errors import ConfigError

    old = ModelConfig(3, 1, 2, ((1, 2, 2),), sigmas=((1.0, 1.0, 1.0),)).to_dict()
    assert ModelConfig.from_dict({**old, "filter_structure_tensor": False}) == ModelConfig.from_dict(old)
    with pytest.raises(ConfigError, match="structure-tensor"):
        ModelConfig.from_dict({**old, "filter_structure_tensor": True})


@pytest.mark.parametrize("shape", [(7, 23, 30), (7, 9, 4)])  # the second: halos longer than the axes (mirrored again)
def test_features_of_whole_planes_equal_those_of_the_planes_read_with_their_halo(shape) -> None:
    from napari_sparse_unet.core.training.sampling import crop_with_padding

    bank = FilterBank([(0.0, 1.0, 1.0), (1.0, 2.0, 2.0)], 3, hessian=True, context_sigmas=[(2.0, 4.0, 4.0)])
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(20, *shape[1:])).astype(np.float32)
    start, depth = 5, shape[0]
    halo = bank.halo
    with_halo = crop_with_padding(volume, [start - halo[0], -halo[1], -halo[2]], [depth + 2 * halo[0], shape[1] + 2 * halo[1], shape[2] + 2 * halo[2]], fill=None)
    planes = crop_with_padding(volume, [start - halo[0], 0, 0], [depth + 2 * halo[0], *shape[1:]], fill=None)
    with torch.no_grad():
        expected = bank(torch.from_numpy(np.ascontiguousarray(with_halo))[None, None])
        got = bank.planes(torch.from_numpy(np.ascontiguousarray(planes))[None, None])
    assert got.shape == expected.shape == (1, bank.features_per_channel, depth, *shape[1:])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
