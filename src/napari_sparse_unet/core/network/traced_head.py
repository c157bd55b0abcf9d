"""The voxel head's logits as TorchScript, for a traced network (bioimage.io export).

A trace freezes branches on the data, so the traced head searches each value's knot
segment instead of looking it up in :class:`~.voxel_head.KnotTable`'s grid, and
classifies the voxels in a fixed number of pieces so that the graph holds for any
size and only one piece's lookups are alive at a time.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

# Pieces a traced head classifies its voxels in (a fixed count: the graph holds for any size).
TRACED_SECTIONS = 32


@functools.lru_cache(maxsize=1)
def searched_logits() -> Any:
    """A TorchScript function: logits (M, K) of feature columns (F, M) in ``sections`` pieces, one after another.

    The first layer of :meth:`.voxel_head.VoxelHead._first_layer`, each segment found by a search (no branch on the data),
    then the other two.  Scripted, the loop stays a loop in a trace: one piece's lookups are alive at a time.
    """

    def logits(columns: torch.Tensor, knots: torch.Tensor, start: torch.Tensor, change: torch.Tensor, bias: torch.Tensor,
               w2: torch.Tensor, b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor, sections: int = TRACED_SECTIONS) -> torch.Tensor:
        features, segments = knots.shape[0], knots.shape[1] - 1
        inner = knots[:, 1:-1].contiguous()
        lengths = torch.diff(knots, dim=1)
        offsets = torch.arange(0, features * segments, segments, device=columns.device)[:, None]
        parts: list[torch.Tensor] = []
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
