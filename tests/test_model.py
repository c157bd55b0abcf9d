"""U-Net shapes, anisotropic planning and patch choice."""

import pytest
import torch

from napari_sparse_unet.core.config import ConfigError, ModelConfig
from napari_sparse_unet.core.network.model import build_model, choose_patch_size, plan_network


@pytest.mark.parametrize(
    "dims, factors, shape",
    [
        (3, ((2, 2, 2),) * 2, (8, 12, 16)),
        (3, ((1, 2, 2), (1, 2, 2), (2, 2, 2)), (6, 16, 24)),
        (2, ((2, 2),) * 3, (24, 40)),
    ],
)
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_output_has_input_shape_and_k_channels(dims, factors, shape, norm):
    config = ModelConfig(spatial_dims=dims, in_channels=2, num_classes=4, pool_factors=factors, base_channels=2, norm=norm)
    net = build_model(config).eval()
    out = net(torch.randn(2, 2, *shape))
    assert out.shape == (2, 4, *shape)


def test_channels_double_before_each_downsampling():
    net = build_model(ModelConfig(3, 1, 2, ((2, 2, 2),) * 2, base_channels=4))
    widths = [enc[3].out_channels for enc in net.encoders]
    assert widths == [8, 16]
    assert net.bottom[3].out_channels == 32
    assert net.head.out_channels == 2


def test_size_multiple():
    config = ModelConfig(3, 1, 2, ((1, 2, 2), (1, 2, 2), (2, 2, 2)))
    assert config.size_multiple() == (2, 8, 8)


def test_bad_model_config_is_rejected():
    with pytest.raises(ConfigError, match="pool_factors"):
        ModelConfig(3, 1, 2, ((3, 2, 2),))
    with pytest.raises(ConfigError, match="num_classes"):
        ModelConfig(3, 1, 1, ((2, 2, 2),))


def plan_pool_factors(spacing, depth, spatial_dims=3):
    return plan_network(spacing, depth, spatial_dims)[0]


def test_isotropic_planning_pools_every_axis():
    assert plan_pool_factors(None, 3) == ((2, 2, 2),) * 3
    assert plan_pool_factors((1.0, 1.0), 2, spatial_dims=2) == ((2, 2),) * 2


def test_anisotropic_planning_waits_for_fine_axes():
    # EM: 50 nm sections, 4 nm pixels; Z is never pooled within 3 levels (ratio stays >= 2).
    assert plan_pool_factors((50, 4, 4), 3) == ((1, 2, 2),) * 3
    # 3x anisotropic: pool Y/X once (ratio 1.5), then all axes.
    assert plan_pool_factors((3.0, 1.0, 1.0), 3) == ((1, 2, 2), (2, 2, 2), (2, 2, 2))


def test_patch_size_multiples_limits_and_anisotropy():
    patch = choose_patch_size([(30, 512, 512)], (1, 8, 8), (50, 4, 4), 48**3)
    assert patch[0] <= 30 and patch[1] % 8 == 0 and patch[2] % 8 == 0
    assert patch[1] == patch[2] and patch[1] > 4 * patch[0]  # physically rounder than a cube of voxels
    iso = choose_patch_size([(200, 200, 200)], (8, 8, 8), None, 48**3)
    assert iso == (48, 48, 48)
    # A thin volume gives its budget to the other axes.
    thin = choose_patch_size([(8, 300, 300)], (8, 8, 8), None, 48**3)
    assert thin[0] == 8 and thin[1] > 48
    # A small volume is covered (rounded up to the multiple), never more.
    small = choose_patch_size([(10, 20, 20)], (8, 8, 8), None, 64**3)
    assert small == (16, 24, 24)


def test_anisotropic_levels_use_in_plane_kernels():
    factors, kernels = plan_network((50, 4, 4), 3)
    assert kernels == ((1, 3, 3),) * 3 + ((3, 3, 3),)  # Z catches up (50 vs 32 nm) only at the bottom
    factors, kernels = plan_network((3.0, 1.0, 1.0), 2)
    assert kernels == ((1, 3, 3), (3, 3, 3), (3, 3, 3))
    config = ModelConfig(3, 1, 2, factors, base_channels=2, conv_kernels=kernels)
    net = build_model(config).eval()
    assert net.encoders[0][0].kernel_size == (1, 3, 3)
    assert net(torch.randn(1, 1, 4, 8, 8)).shape == (1, 2, 4, 8, 8)
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_folding_batch_norms_keeps_the_networks_function() -> None:
    import copy

    from napari_sparse_unet.core.config import ModelConfig
    from napari_sparse_unet.core.network.model import build_model, fold_batch_norms

    config = ModelConfig(3, 1, 3, ((1, 2, 2), (2, 2, 2)), base_channels=4, conv_kernels=((1, 1, 1), (1, 3, 3), (3, 3, 3)),
                         sigmas=((0.0, 1.0, 1.0),), voxel_head_width=8)
    network = build_model(config)
    torch.manual_seed(0)
    for module in network.modules():  # statistics and affine parameters far from the identity
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            if module.affine:
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.normal_()
    torch.nn.init.normal_(network.head.weight)
    network.eval()
    features = torch.randn(1, network.filters.features_per_channel, 4, 16, 16)
    with torch.no_grad():
        expected = network.classify(features)
        folded = fold_batch_norms(copy.deepcopy(network))
        got = folded.classify(features)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_folding_keeps_every_tensor_on_the_network_s_device():
    """Instance norms leave the first convolution without a bias; the one folding makes must be on its device
    (a CPU tensor beside a CUDA network stopped prediction).  The meta device fails the same way, without a GPU."""
    from napari_sparse_unet.core.network.model import fold_batch_norms

    config = ModelConfig(3, 1, 3, ((2, 2, 2),), base_channels=4, norm="instance", conv_kernels=((1, 1, 1), (3, 3, 3)),
                         sigmas=((1.0, 1.0, 1.0),))
    network = build_model(config).eval().to("meta")
    assert network.encoders[0][0].bias is None
    assert {t.device.type for t in fold_batch_norms(network).parameters()} == {"meta"}
