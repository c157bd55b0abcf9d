"""The U-Net of Çiçek et al. (2016), in 3-D and 2-D, and its planning helpers.

Tensors are (N, C, D, H, W) for volumes and (N, C, H, W) for images.  Spatial
tuples are in array order (Z, Y, X) / (Y, X).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .filters import FilterBank
from .voxel_head import VoxelHead


def plan_network(
    spacing: Sequence[float] | None, depth: int, spatial_dims: int = 3
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Down-sampling factors (per level) and convolution sizes (per level and the bottom).

    As nnU-Net does, an axis is down-sampled only while its current spacing is
    less than twice the finest current spacing, so a coarse Z axis waits until
    Y and X have caught up and the receptive field grows roughly isotropically.
    While an axis is that much coarser, convolutions are 1 voxel long along it:
    a 3-voxel kernel would mostly mix far-apart sections, at three times the cost.
    """
    current = [1.0] * spatial_dims if spacing is None else [float(s) for s in spacing]
    if len(current) != spatial_dims or any(not math.isfinite(s) or s <= 0 for s in current):
        raise ValueError(f"spacing must hold {spatial_dims} positive numbers, got {spacing!r}")
    factors, kernels = [], []
    for level in range(depth + 1):
        finest = min(current)
        fine = [s < 2 * finest for s in current]
        kernels.append(tuple(3 if f else 1 for f in fine))
        if level < depth:
            pool = tuple(2 if f else 1 for f in fine)
            current = [s * p for s, p in zip(current, pool)]
            factors.append(pool)
    return tuple(factors), tuple(kernels)


def choose_patch_size(
    volume_shapes: Sequence[Sequence[int]],
    size_multiple: Sequence[int],
    spacing: Sequence[float] | None,
    voxel_budget: int,
) -> tuple[int, ...]:
    """Patch of about ``voxel_budget`` voxels with roughly isotropic physical extent.

    Each axis is a multiple of ``size_multiple`` and no longer than needed to
    cover the largest volume along it; budget freed by short axes goes to the others.
    """
    dims = len(size_multiple)
    spacing = [1.0] * dims if spacing is None else [float(s) for s in spacing]
    limit = [max(int(shape[a]) for shape in volume_shapes) for a in range(dims)]
    limit = [int(math.ceil(l / m) * m) for l, m in zip(limit, size_multiple)]
    free = list(range(dims))
    size = [0.0] * dims
    budget = float(voxel_budget)
    # Give each free axis an extent proportional to 1/spacing; pin axes that hit their limit and repeat.
    while free:
        inverse = [1.0 / spacing[a] for a in free]
        scale = (budget / math.prod(inverse)) ** (1.0 / len(free))
        pinned = [a for a, inv in zip(free, inverse) if scale * inv >= limit[a]]
        if not pinned:
            for a, inv in zip(free, inverse):
                size[a] = scale * inv
            break
        for a in pinned:
            size[a] = limit[a]
            budget /= limit[a]
            free.remove(a)
    patch = []
    for a in range(dims):
        m = size_multiple[a]
        patch.append(int(min(limit[a], max(m, round(size[a] / m) * m))))
    return tuple(patch)


class PlanewiseConv3d(nn.Conv3d):
    """A 3-D convolution computed on the CPU as a sum of 2-D convolutions, one per Z tap.

    Same weights and result as :class:`torch.nn.Conv3d` (checkpoints are
    interchangeable).  Why: oneDNN's 3-D convolution backward pass is 10-25x
    slower than its 2-D one on CPUs without AVX-512 (benchmarks/RESULTS.md),
    which made training steps take seconds.  Other devices use the plain 3-D
    convolution.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            input.device.type != "cpu"
            or self.groups != 1
            or self.stride != (1, 1, 1)
            or self.dilation != (1, 1, 1)
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
        ):
            return super()._conv_forward(input, weight, bias)
        n, c, d, h, w = input.shape
        kz, pz = weight.shape[2], self.padding[0]
        if pz:
            input = F.pad(input, (0, 0, 0, 0, pz, pz))
        depth = d + 2 * pz - kz + 1
        planes = input.transpose(1, 2)  # (N, D, C, H, W): Z taps become shifts along D
        out = None
        for dz in range(kz):
            x = planes[:, dz : dz + depth].reshape(n * depth, c, h, w)
            y = F.conv2d(x, weight[:, :, dz], bias if dz == 0 else None, 1, self.padding[1:])
            out = y if out is None else out + y
        assert out is not None
        return out.reshape(n, depth, *out.shape[1:]).transpose(1, 2)


def _layers(spatial_dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module], type[nn.Module], type[nn.Module]]:
    if spatial_dims == 3:
        return PlanewiseConv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.InstanceNorm3d, nn.BatchNorm3d
    return nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.InstanceNorm2d, nn.BatchNorm2d


class _DoubleConv(nn.Sequential):
    """Two 3×3×3 convolutions (or ``kernel``), each followed by normalisation and ReLU."""

    def __init__(self, spatial_dims: int, norm: str, in_ch: int, mid_ch: int, out_ch: int, kernel: Sequence[int] | None = None) -> None:
        conv, _, _, instance, batch = _layers(spatial_dims)

        def normalisation(channels: int) -> nn.Module:
            return instance(channels, affine=True) if norm == "instance" else batch(channels)

        kernel = tuple(kernel) if kernel is not None else (3,) * spatial_dims
        padding = tuple(k // 2 for k in kernel)
        super().__init__(
            conv(in_ch, mid_ch, kernel, padding=padding, bias=False),
            normalisation(mid_ch),
            nn.ReLU(inplace=True),
            conv(mid_ch, out_ch, kernel, padding=padding, bias=False),
            normalisation(out_ch),
            nn.ReLU(inplace=True),
        )


class TwoExpertNetwork(nn.Module):
    """Two experts on one filter bank: (N, C_in, *spatial) -> logits (N, K, *spatial).

    A fixed Gaussian filter bank (optional) feeds a 3-D (or 2-D) U-Net and a per-voxel
    classifier (:class:`.voxel_head.VoxelHead`, optional); the model's probabilities are
    the normalised product of theirs, and the U-Net's last layer starts at zero, so at
    first they are the voxel head's.  The U-Net, as in Çiçek et al., doubles its channels before
    down-sampling (level ``i`` runs ``b·2^i`` then ``b·2^(i+1)`` channels),
    the synthesis path up-samples with transposed convolutions and
    concatenates the skip connection, and a 1×1×1 convolution gives the logits.
    The spatial size must be a multiple of ``config.size_multiple()``.
    With a filter bank (``config.sigmas``) the input is larger than the
    output by :attr:`input_halo` on each side.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dims, norm = config.spatial_dims, config.norm
        kernels = config.conv_kernels
        conv, up_conv, pool, _, batch_norm = _layers(dims)
        self.filters: FilterBank | None = None
        in_ch = config.in_channels
        if config.sigmas:
            self.filters = config.filter_bank()
            in_ch *= self.filters.features_per_channel
            # Running statistics, not per-patch ones: a voxel's features are scaled alike in every patch and tile.
            self.input_norm = batch_norm(in_ch, affine=False)
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        skip_channels = []
        widths = config.level_widths()
        for level, factors in enumerate(config.pool_factors):
            mid_ch, out_ch = widths[level]
            self.encoders.append(_DoubleConv(dims, norm, in_ch, mid_ch, out_ch, kernels[level]))
            self.pools.append(pool(kernel_size=factors, stride=factors))
            skip_channels.append(out_ch)
            in_ch = out_ch
        depth = config.depth
        self.bottom = _DoubleConv(dims, norm, in_ch, *widths[depth], kernels[depth])
        in_ch = widths[depth][1]
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            factors = config.pool_factors[level]
            skip = skip_channels[level]
            self.ups.append(up_conv(in_ch, skip, kernel_size=factors, stride=factors))
            self.decoders.append(_DoubleConv(dims, norm, 2 * skip, skip, skip, kernels[level]))
            in_ch = skip
        self.head = conv(in_ch, config.num_classes, 1)
        if config.voxel_head_width:
            # Logits start at zero: the product of the two experts' probabilities then equals
            # the voxel head's until the U-Net has learned something, so the model does not
            # get worse when the U-Net joins the trained voxel head.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.voxel_head: VoxelHead | None = None
        if config.voxel_head_width:
            assert self.filters is not None  # ModelConfig checks it
            features = config.in_channels * self.filters.features_per_channel
            self.voxel_head = VoxelHead(features, config.voxel_head_width, config.num_classes)

    @property
    def input_halo(self) -> tuple[int, ...]:
        """Input voxels beyond the output per side and axis: (N, C, *(out + 2·halo)) -> (N, K, *out)."""
        return self.config.input_halo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filters is not None:
            x = self.filters(x)
        return self.classify(x)

    def classify(self, x: torch.Tensor, voxel: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the filter bank's features (N, C·F, *s) -> (N, K, *s); from the image if there is no bank.

        ``voxel``: the voxel head's logits (N, K, *s) of these features when already computed
        (they do not depend on the tile, so prediction computes them once per row of tiles).
        """
        unet, voxel = self.experts(x, voxel)
        if voxel is None:
            return unet
        # Two experts, each trained on its own loss (the U-Net on patches, the voxel head on
        # batches of painted voxels), combined as the product of their probabilities.  Adding
        # the U-Net to the voxel head's logits instead (a residual) left it learning only where
        # the voxel head erred on painted voxels, few once it fitted them (benchmarks/RESULTS.md).
        return torch.log_softmax(unet.float(), 1) + torch.log_softmax(voxel.float(), 1)

    def experts(self, x: torch.Tensor, voxel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The U-Net's logits and the voxel head's (None while training or without one), each (N, K, *s).

        ``x`` and ``voxel`` are what :meth:`classify` takes.  Benchmarks score the two apart.
        """
        if self.voxel_head is not None and not self.training and voxel is None:
            # Before the U-Net: its largest maps then need not share memory with the features.
            voxel = self.voxel_head(x)
        if self.filters is not None:
            x = self.input_norm(x)
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        logits = self.head(x)
        if self.voxel_head is None or self.training:
            return logits, None
        return logits, voxel


@torch.no_grad()
def fold_batch_norms(network: TwoExpertNetwork) -> TwoExpertNetwork:
    """``network`` (in eval mode) with its batch normalisations folded into the convolutions beside them.

    A batch norm with running statistics is an affine map per channel: after a
    convolution it scales the weights and shifts the bias; on the filter features
    before a 1×1×1 first convolution it scales that convolution's input weights.
    Same function, fewer passes over the largest maps.  For prediction only: the
    folded network no longer trains like the original.
    """
    assert not network.training
    for block in [*network.encoders, network.bottom, *network.decoders]:
        for i, layer in enumerate(block):
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                conv = block[i - 1]
                scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
                shift = layer.bias - layer.running_mean * scale
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                conv.weight.mul_(scale.reshape(-1, *[1] * (conv.weight.ndim - 1)))
                conv.bias = nn.Parameter(bias * scale + shift)
                block[i] = nn.Identity()
    first = network.encoders[0][0]
    norm = getattr(network, "input_norm", None)
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and all(k == 1 for k in first.kernel_size):
        inverse = 1.0 / torch.sqrt(norm.running_var + norm.eps)  # affine=False: (x - mean) / std
        weight = first.weight * inverse.reshape(1, -1, *[1] * (first.weight.ndim - 2))
        bias = first.bias if first.bias is not None else weight.new_zeros(first.out_channels)
        first.bias = nn.Parameter(bias - (weight.flatten(2).sum(2) * norm.running_mean).sum(1))
        first.weight.copy_(weight)
        network.input_norm = nn.Identity()
    return network


def build_model(config: ModelConfig) -> TwoExpertNetwork:
    """A freshly initialised U-Net for ``config``."""
    return TwoExpertNetwork(config)
