"""A per-voxel classifier on the filter features, trained on every painted voxel.

A random forest learns from all the painted voxels at once; a U-Net step sees
the few painted planes of two patches.  The voxel head closes that gap: a small
MLP on each voxel's filter features (raw, smoothed, gradient magnitude, LoG and
Hessian eigenvalues at several scales), next to the U-Net.  Training draws a large batch of painted
voxels every step for it (thousands of voxels for the price of a few
milliseconds), so within seconds the model is as good as a per-voxel
classifier, while the U-Net learns the context that one voxel's features
cannot tell.  Prediction multiplies the two experts' probabilities.

Feature rows are (M, F) float32, F = C · ``FilterBank.features_per_channel``,
channel-major as :class:`~.filters.FilterBank` gives them; maps are (N, F, *spatial).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import has_float64
from .filters import FilterBank, filter_slab
from .traced import searched_logits

# Voxels classified at a time in prediction: their table indices and weights are (4 + 8)·F bytes each.
CHUNK_ROWS = 1 << 14
# Knot tables of recently used heads, by a digest of their weights; with its bfloat16 lookup
# a table holds 8 bytes for each of 65536 values per feature (17 MB for 33 features).
KNOT_TABLES_KEPT = 2
_KNOT_TABLES: dict[str, "KnotTable"] = {}


class VoxelHead(nn.Module):
    """MLP on piecewise-linear encoded features, applied voxel by voxel: F -> F·B -> hidden -> hidden -> K.

    Each feature is encoded by its position in ``bins`` quantile bins of the
    painted voxels (bin ``b`` reads 0 below it, 1 above it, the fraction within:
    Gorishniy et al. 2022, "On embeddings for numerical features in tabular deep
    learning").  A plain MLP on standardised features fell 0.04-0.07 Dice short
    of the same features in a random forest (brain MRI); the encoding lets it
    cut a feature at learned thresholds as a tree does.  The bin edges are fixed
    once from the painted voxels (buffers, saved with the model), so a voxel's
    logits never depend on the patch or tile it sits in.
    """

    def __init__(self, features: int, hidden: int, classes: int, bins: int = 16) -> None:
        super().__init__()
        self.features, self.bins = features, bins
        # Edges (B, F): lower edge of each bin and its width; set by fit_bins.
        self.register_buffer("lower", torch.linspace(-2.0, 2.0, bins + 1)[:-1, None].repeat(1, features))
        self.register_buffer("width", torch.full((bins, features), 4.0 / bins))
        self.mlp = nn.Sequential(
            nn.Linear(features * bins, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """(M, F) feature rows -> (M, B·F) encodings in [0, 1]."""
        encoded = ((rows.unsqueeze(1) - self.lower) / self.width).clamp(0.0, 1.0)
        return encoded.reshape(rows.shape[0], -1)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits (M, K) of feature rows (M, F)."""
        return self.mlp(self.encode(rows))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, *spatial) of feature maps (N, F, *spatial).

        Training (and tracing) take the encoding's path; inference reads the first
        layer from :meth:`knot_table` instead, the same numbers without the B× expansion.
        """
        if self.training:
            rows = maps.movedim(1, -1)
            return self.rows(rows.reshape(-1, self.features)).reshape(*rows.shape[:-1], -1).movedim(-1, 1)
        n, spatial = maps.shape[0], maps.shape[2:]
        columns = maps.transpose(0, 1).reshape(self.features, -1)  # (F, N·S), a view for N = 1
        rest = self.mlp[2:]  # the first linear layer and its ReLU are _first_layer
        if torch.jit.is_tracing():
            # A graph for any size (bioimage.io export): pieces in a scripted loop, each
            # searched, not looked up in the grid (whose branch on the data a trace would freeze).
            table = self.knot_table()
            hidden, out = rest[0], rest[2]
            logits = searched_logits()(
                columns.float(), table.knots, table.start, table.change, table.bias,
                hidden.weight, hidden.bias, out.weight, out.bias,
            )
            return logits.reshape(n, *spatial, -1).movedim(-1, 1)
        with torch.autocast(maps.device.type, enabled=False):  # the table lookups need one dtype (float32)
            table = self._cached_knot_table()
            logits = torch.cat([rest(self._first_layer(chunk, table)) for chunk in columns.split(CHUNK_ROWS, 1)])
        return logits.reshape(n, *spatial, -1).movedim(-1, 1)

    def _cached_knot_table(self) -> "KnotTable":
        """:meth:`knot_table`, rebuilt only when a weight or bin edge changed.

        Keyed by content, not identity: prediction works on a copy of the model, and a
        copy of an unchanged head finds the table (and its bfloat16 lookup) built before.
        """
        key = hashlib.sha1(str(self.lower.device).encode())
        for t in (self.lower, self.width, self.mlp[0].weight, self.mlp[0].bias):
            key.update(t.detach().float().cpu().numpy().tobytes())
        digest = key.hexdigest()
        table = _KNOT_TABLES.pop(digest, None) or self.knot_table()
        _KNOT_TABLES[digest] = table  # most recently used last
        while len(_KNOT_TABLES) > KNOT_TABLES_KEPT:
            _KNOT_TABLES.pop(next(iter(_KNOT_TABLES)))
        return table

    def knot_table(self) -> "KnotTable":
        """The first layer as a piecewise-linear function of each feature, tabulated per segment.

        Without the bias, the first layer is a sum over features of ``sum_b W_fb e_fb(x)``,
        and each encoding ``e_fb`` is linear between its bin's two edges, so the sum is
        linear between consecutive knots (every bin's lower and upper edge, J = 2B per feature).
        """
        lower, width = self.lower.float(), self.width.float()  # (B, F)
        knots = torch.cat([lower, lower + width]).T.sort(1).values.contiguous()  # (F, J)
        encoded = ((knots.T[:, None, :] - lower) / width).clamp(0.0, 1.0)  # (J, B, F)
        weight = self.mlp[0].weight.float().reshape(-1, self.bins, self.features)  # (H, B, F): encode's order
        at_knots = torch.einsum("jbf,hbf->fjh", encoded, weight)  # (F, J, H)
        hidden = at_knots.shape[-1]
        return KnotTable(
            knots=knots,
            start=at_knots[:, :-1].reshape(-1, hidden).contiguous(),
            change=torch.diff(at_knots, dim=1).reshape(-1, hidden).contiguous(),
            bias=self.mlp[0].bias.float(),
            **_segment_grid(knots),
        )

    def _first_layer(self, columns: torch.Tensor, table: "KnotTable") -> torch.Tensor:
        """First-layer activations (M, H) of feature columns (F, M): per feature, its segment's row interpolated.

        Below the first knot every encoding is 0 and above the last every one is 1, so a
        value clamped to the knots' range gives the same layer output.
        """
        # (M, F), voxel-major: embedding_bag takes one bag (the F rows of a voxel) per row.
        if columns.dtype == torch.bfloat16:
            row, fraction = table.bfloat16_rows(columns.T.contiguous())
        else:
            x = torch.empty(columns.shape[::-1], dtype=torch.float32, device=columns.device).copy_(columns.T)
            row, fraction = table.rows(x.clamp_(min=table.low, max=table.high))
        # Sum over the features of the segment's start value plus the fraction of its change.
        out = F.embedding_bag(row, table.start, mode="sum")
        out += F.embedding_bag(row, table.change, per_sample_weights=fraction, mode="sum")
        out += table.bias
        return torch.relu_(out)


    @torch.no_grad()
    def fit_bins(self, rows: np.ndarray, classes: np.ndarray | None = None) -> None:
        """Bin edges at the quantiles of the painted voxels' feature rows (M, F), each class (M,) weighing the same.

        With the quantiles of all painted voxels, a class painted on few voxels
        (a tumour's necrosis, beside a brain of background) got few cuts in the
        range where it differs; and a volume with much zero padding (skull-stripped
        MRI) spent half its bins on ties at 0.  Class-balanced quantiles: brain MRI
        0.704 -> 0.738 mean foreground Dice (the voxel head alone, k = 5 along z).
        """
        values = np.asarray(rows, dtype=np.float32)
        levels = np.linspace(0.0, 1.0, self.bins + 1)
        if classes is None:
            edges = np.quantile(values, levels, axis=0)
        else:
            edges = balanced_quantiles(values, np.asarray(classes), levels)
        edges = edges.astype(np.float32)  # (B + 1, F)
        self.lower.copy_(torch.from_numpy(edges[:-1]))
        # A feature constant over a bin (ties) gets a step there rather than a division by 0.
        self.width.copy_(torch.from_numpy(np.maximum(edges[1:] - edges[:-1], 1e-6)))


# Cells per feature of the grid that finds a value's segment without a search.
GRID_CELLS = 1024


@dataclass(frozen=True)
class KnotTable:
    """:meth:`VoxelHead.knot_table`: knots (F, J) ascending; per segment (F·(J - 1), H) the first
    layer's value at its start and the change to its end, and the layer's bias (H,); and a uniform grid
    of G cells over each feature's knot range, found from a value ``x`` as ``u = x·scale + shift``
    (both (1, F)), giving per cell (F·(G + 1),: the first for u = 0) the table row of every value
    in it (-1 where a knot is near) and the segment's fraction as ``slope·u + intercept``."""

    knots: torch.Tensor
    start: torch.Tensor
    change: torch.Tensor
    bias: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    cell_row: torch.Tensor
    cell_slope: torch.Tensor
    cell_intercept: torch.Tensor

    @property
    def low(self) -> torch.Tensor:
        return self.knots[:, 0]

    @property
    def high(self) -> torch.Tensor:
        return self.knots[:, -1]

    def rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table row (M, F) int64 and fraction of its segment (M, F) of values (M, F) within the knots' range.

        A cell without a knot near it gives both directly; values in the other cells
        (a few per cent; ties such as zero padding land there) are searched.
        """
        features = self.knots.shape[0]
        cells = self.cell_row.numel() // features
        u = torch.addcmul(self.shift, x, self.scale)
        # Cell 0 holds the values at the lowest knot (u = 0: many, e.g. zero gradients), cell c >= 1 those in (c - 1, c].
        cell = torch.ceil(u).long().clamp_(0, cells - 1)
        cell += torch.arange(0, features * cells, cells, device=x.device)
        row = self.cell_row[cell]
        fraction = torch.addcmul(self.cell_intercept[cell], self.cell_slope[cell], u).clamp_(0.0, 1.0)
        near = row < 0
        if bool(near.any()):
            which, feature = near.nonzero(as_tuple=True)
            row[which, feature], fraction[which, feature] = self._search(x[which, feature], feature)
        return row, fraction

    def bfloat16_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rows` of bfloat16 values (M, F), any value: looked up by their 16 bits, the same numbers."""
        features = x.shape[1]
        index = x.view(torch.int16).to(torch.int64)
        index += torch.arange(32768, 65536 * features, 65536, device=x.device)
        rows, fractions = self._bfloat16_table
        return rows.take(index), fractions.take(index)

    @functools.cached_property
    def _bfloat16_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and fraction (F·65536,) of every bfloat16 value of every feature, by its bits as int16 + 32768."""
        features = self.knots.shape[0]
        device = self.knots.device
        values = torch.arange(-32768, 32768, dtype=torch.int32, device=device).to(torch.int16).view(torch.bfloat16).float()
        values = values.expand(features, -1)
        # Most bfloat16 values lie beyond the knots, where the layer is that of the nearest end: search the rest.
        everyone = torch.arange(features, device=device)
        rows, fractions = (t[:, None].repeat(1, 65536) for t in self._search(self.knots[:, 0], everyone))
        high = values >= self.knots[:, -1:]
        rows[high], fractions[high] = (t[:, None].expand(-1, 65536)[high] for t in self._search(self.knots[:, -1], everyone))
        inside = (values > self.knots[:, :1]) & ~high
        which, _ = inside.nonzero(as_tuple=True)
        rows[inside], fractions[inside] = self._search(values[inside], which)
        fractions[values.isnan()] = math.nan  # a NaN feature gives NaN logits, as the float32 path does
        return rows.reshape(-1).int(), fractions.reshape(-1)  # int32: half the bytes to gather

    def _search(self, value: torch.Tensor, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and fraction of values (n,) of features (n,) within the knots' range, by binary search
        (in float64: on the CPU where the device has none, Apple's MPS)."""
        device, knots = value.device, self.knots
        if not has_float64(device):
            knots, value, feature = knots.cpu(), value.cpu(), feature.cpu()
        features, segments = knots.shape[0], knots.shape[1] - 1
        inner = knots[:, 1:-1]
        # One search over every feature's inner knots, each feature shifted past the one before.
        span = float((knots[:, -1] - knots[:, 0]).abs().max()) + float(knots.abs().max()) + 1.0
        offset = torch.arange(features, dtype=torch.float64, device=value.device) * (4 * span)
        keys = (inner.double() + offset[:, None]).reshape(-1)
        found = torch.searchsorted(keys, value.double() + offset[feature], right=True) - feature * inner.shape[1]
        found.clamp_(0, segments - 1)  # NaN is searched past the end: any row, its fraction stays NaN
        length = knots[feature, found + 1] - knots[feature, found]
        part = torch.where(length > 0, (value - knots[feature, found]) / length.clamp_min(1e-30), torch.zeros_like(value))
        return (found + feature * segments).to(device), part.clamp_(0.0, 1.0).to(device)


def _segment_grid(knots: torch.Tensor) -> dict[str, torch.Tensor]:
    """The grid of :class:`KnotTable`: a cell is marked -1 when an inner knot lies in it or within 1 % of a cell of it,
    so a value rounded into a neighbouring cell is never given the wrong segment.  Worked out in float64 on
    the CPU (once per model: Apple's MPS has no float64), returned on ``knots``' device."""
    device, knots = knots.device, knots.cpu()
    features, segments = knots.shape[0], knots.shape[1] - 1
    low, high = knots[:, :1].double(), knots[:, -1:].double()
    span = (high - low).clamp_min(1e-30)
    cells_per_unit = GRID_CELLS / span  # (F, 1)
    edges = low + span * torch.arange(GRID_CELLS + 1, dtype=torch.float64) / GRID_CELLS  # (F, G + 1)
    inner = knots[:, 1:-1].double()
    margin = 0.01 * span / GRID_CELLS
    # Inner knots at or below each cell's left edge, and whether any lies near the cell.
    below = (inner[:, None, :] <= edges[:, :-1, None] - margin[:, :, None]).sum(-1)  # (F, G): the cell's segment
    near = (inner[:, None, :] > edges[:, :-1, None] - margin[:, :, None]) & (inner[:, None, :] < edges[:, 1:, None] + margin[:, :, None])
    near = near.any(-1)
    # Cell 0: exactly the lowest knot, in the segment after every inner knot equal to it (fraction 0 there).
    below = torch.cat([(inner <= low).sum(1, keepdim=True), below], 1)
    near = torch.cat([torch.zeros_like(near[:, :1]), near], 1)
    # The fraction along segment s of x = low + u / cells_per_unit: (x - k_s) / length_s, linear in u.
    k = knots.double()
    length = torch.diff(k, dim=1)
    inverse = torch.where(length > 0, 1.0 / length.clamp_min(1e-30), torch.zeros_like(length))  # (F, J - 1)
    slope = (inverse / cells_per_unit).gather(1, below)
    intercept = ((low - k[:, :-1]) * inverse).gather(1, below)
    row = torch.where(near, torch.full_like(below, -1), below + torch.arange(features)[:, None] * segments)
    grid = {
        "scale": cells_per_unit.float().T.contiguous(),
        "shift": (-low * cells_per_unit).float().T.contiguous(),
        "cell_row": row.reshape(-1).contiguous(),
        "cell_slope": slope.float().reshape(-1).contiguous(),
        "cell_intercept": intercept.float().reshape(-1).contiguous(),
    }
    return {name: tensor.to(device) for name, tensor in grid.items()}


def balanced_quantiles(values: np.ndarray, classes: np.ndarray, levels: np.ndarray, max_rows: int = 1 << 18) -> np.ndarray:
    """(len(levels), F) quantiles of the rows (M, F) where every class's rows weigh the same in total.

    Rows beyond ``max_rows`` are subsampled evenly first (a quantile needs no more).
    """
    if len(values) > max_rows:
        keep = np.linspace(0, len(values) - 1, max_rows).astype(np.int64)
        values, classes = values[keep], classes[keep]
    _, index, counts = np.unique(classes, return_inverse=True, return_counts=True)
    weight = 1.0 / counts[index]
    order = np.argsort(values, axis=0, kind="stable")  # (M, F)
    cumulative = np.cumsum(weight[order], axis=0)
    cumulative /= cumulative[-1]
    edges = np.empty((len(levels), values.shape[1]), dtype=values.dtype)
    for column in range(values.shape[1]):
        at = np.searchsorted(cumulative[:, column], levels).clip(0, len(values) - 1)
        edges[:, column] = values[order[at, column], column]
    edges[0], edges[-1] = values.min(axis=0), values.max(axis=0)
    return edges


def painted_feature_rows(
    images: Sequence[Any],
    targets: Sequence[np.ndarray],
    bank: FilterBank | None,
    normalize: Any,
    max_rows: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Features (M, F) float32 and class indices (M,) int64 of the painted voxels.

    Args:
        images: per volume, its precomputed features (F, *spatial) when ``bank`` is
            None, else the raw (C, *spatial) image, filtered here slab by slab.
        targets: per volume, class index per voxel, -1 where not painted.
        bank: the filter bank for raw images; None for precomputed features.
        normalize: raw (C, *spatial) -> normalised float32, used with ``bank``.
        max_rows: at most this many voxels are kept, drawn uniformly (memory: 4·F bytes each).
    """
    rows, labels = [], []
    for image, target in zip(images, targets):
        painted_planes = np.flatnonzero((target >= 0).reshape(target.shape[0], -1).any(axis=1))
        for start, stop in _runs(painted_planes):
            if bank is None:
                block = np.asarray(image[:, start:stop], dtype=np.float32)
            else:
                block = filter_slab(bank, image, start, stop, normalize)
            where = target[start:stop] >= 0
            rows.append(block[:, where].T)
            labels.append(target[start:stop][where].astype(np.int64))
    features = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
    classes = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(classes) > max_rows:
        keep = np.sort(rng.choice(len(classes), max_rows, replace=False))
        features, classes = features[keep], classes[keep]
    return np.ascontiguousarray(features, dtype=np.float32), classes


def _runs(indices: np.ndarray, max_length: int = 16) -> list[tuple[int, int]]:
    """Consecutive runs of sorted indices as [start, stop) ranges, at most ``max_length`` long."""
    runs: list[tuple[int, int]] = []
    for i in indices.tolist():
        if runs and runs[-1][1] == i and i - runs[-1][0] < max_length:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
