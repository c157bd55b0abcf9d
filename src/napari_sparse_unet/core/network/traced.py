"""TorchScript pieces of a traced network (bioimage.io export): the filter bank's convolutions and the voxel head's logits.

Scripted functions keep their loops inside a trace, so each works in pieces of a few
MB whose count follows the input's size (the graph holds for any size).

A trace freezes branches on the data, so the traced head searches each value's knot
segment instead of looking it up in :class:`~.voxel_head.KnotTable`'s grid, and
classifies the voxels in pieces of PIECE_VOXELS, a loop that a trace keeps (the
graph holds for any size) with only one piece's lookups alive at a time.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

# Largest work buffer of a traced convolution's piece, floats (2 MB).
TRACED_WORK_FLOATS = 1 << 19
# Voxels a traced head classifies at a time: each piece's lookups (about 1 MB) are recycled for the next.
PIECE_VOXELS = 4096


@functools.lru_cache(maxsize=1)
def searched_logits() -> Any:
    """A TorchScript function: logits (M, K) of feature columns (F, M) in pieces of ``piece`` voxels, one after another.

    The first layer of :meth:`.voxel_head.VoxelHead._first_layer`, each segment found by a search (no branch on the data),
    then the other two.  Scripted, the loop stays a loop in a trace: one piece's lookups are alive at a time.
    """

    def logits(columns: torch.Tensor, knots: torch.Tensor, start: torch.Tensor, change: torch.Tensor, bias: torch.Tensor,
               w2: torch.Tensor, b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor, piece: int = PIECE_VOXELS) -> torch.Tensor:
        features, segments = knots.shape[0], knots.shape[1] - 1
        inner = knots[:, 1:-1].contiguous()
        lengths = torch.diff(knots, dim=1)
        offsets = torch.arange(0, features * segments, segments, device=columns.device)[:, None]
        parts: list[torch.Tensor] = []
        sections = max(1, (columns.shape[1] + piece - 1) // piece)
        for part in columns.tensor_split(sections, 1):
            x = torch.maximum(torch.minimum(part, knots[:, -1:]), knots[:, :1]).contiguous()
            found = torch.searchsorted(inner, x, right=True).clamp_(0, segments - 1)
            length = lengths.gather(1, found)
            fraction = torch.where(length > 0, (x - knots[:, :-1].gather(1, found)) / length.clamp_min(1e-30), torch.zeros_like(x))
            row = (found + offsets).T.contiguous()
            h = F.embedding_bag(row, start, mode="sum")
            h = h + F.embedding_bag(row, change, per_sample_weights=fraction.clamp_(0.0, 1.0).T.contiguous(), mode="sum")
            h = torch.relu(F.linear(torch.relu(h + bias), w2, b2))
            parts.append(F.linear(h, w3, b3))
        return torch.cat(parts)

    return torch.jit.script(logits)


@functools.lru_cache(maxsize=1)
def sectioned_conv1d() -> Any:
    """A TorchScript function: ``conv1d(rows, weight)`` of rows (M, 1, n) in pieces of at most ``work`` floats of work buffer.

    A long kernel's work buffer is its length × its input; pieces of a few MB are
    recycled by the allocator from one piece to the next.  Scripted, the loop and
    its count stay dynamic in a trace, so the graph holds for any size.
    """

    def conv(rows: torch.Tensor, weight: torch.Tensor, work: int = TRACED_WORK_FLOATS) -> torch.Tensor:
        sections = max(1, (rows.shape[0] * rows.shape[2] * weight.shape[2] + work - 1) // work)
        return torch.cat([F.conv1d(part, weight) for part in rows.tensor_split(sections, 0)])

    return torch.jit.script(conv)
