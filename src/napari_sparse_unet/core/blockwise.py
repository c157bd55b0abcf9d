"""Predict one block (its core plus a halo) with the existing tiled predictor.

A :class:`BlockPredictor` is what a Dask worker keeps in memory: a model (or,
in tests, a predictor callable) with its prediction settings.  Called on the
image region a block reads, it runs the sliding-window prediction of
:mod:`.predict` over that region and returns its labels (and probabilities),
of which the caller keeps the block's core.  It is the same function the
single-process :func:`.predict.predict` applies to the whole volume, so a
pointwise predictor gives exactly the same labels; a network differs only
where the tiles' context differs.

Axis order: regions are channel-first (C, Z, Y, X) (2-D: (C, Y, X)); labels
and the halo are spatial.  :func:`predict_lazy` turns a dask array into a lazy
dask array of labels (napari can show it without computing the whole volume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .blocks import Block, block_grid, choose_block_shape
from .config import PredictConfig
from .data import label_lut
from .tiling import overlap_voxels


def model_halo(model: Any, overlap: float) -> tuple[int, ...]:
    """Halo of a block for ``model``: the voxels neighbouring tiles share, ``overlap`` × its training patch,
    plus the context its filter bank reads beyond a tile (so a block's border voxels get the features
    of the whole volume, not of a mirrored block edge)."""
    patch = tuple(int(p) for p in getattr(model, "patch_size", None) or model.model_config.size_multiple())
    filters = model.model_config.input_halo
    return tuple(overlap_voxels(p, overlap) + f for p, f in zip(patch, filters))


@dataclass
class BlockPredictor:
    """Prediction of image regions with a ``SegmentationModel``, or with a predictor callable.

    Build it with :meth:`from_model` or :meth:`from_callable`.  It pickles
    (Dask sends it to each worker once) and keeps no state between calls.

    Attributes:
        num_classes: K, the predictor's classes.
        lut: class index -> output label value.
        halo: voxels read beyond each block's core on every side.
        spatial_dims: 3 for volumes, 2 for images.
    """

    num_classes: int
    lut: np.ndarray
    halo: tuple[int, ...]
    spatial_dims: int
    model: Any = None
    config: PredictConfig = PredictConfig()
    predictor: Callable[..., Any] | None = None
    tile_size: tuple[int, ...] | None = None
    overlap: float = 0.25
    normalize: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_model(cls, model: Any, config: PredictConfig = PredictConfig(), halo: Sequence[int] | None = None) -> "BlockPredictor":
        """Regions predicted as :func:`.predict.predict` does with ``model`` and ``config``."""
        return cls(
            num_classes=int(model.num_classes),
            lut=model.output_lut() if hasattr(model, "output_lut") else label_lut(model.class_values),
            halo=tuple(int(h) for h in halo) if halo is not None else model_halo(model, config.overlap),
            spatial_dims=int(model.spatial_dims),
            model=model,
            config=config,
        )

    @classmethod
    def from_callable(
        cls,
        predictor: Callable[..., Any],
        num_classes: int,
        tile_size: Sequence[int],
        *,
        overlap: float = 0.25,
        halo: Sequence[int] | int = 0,
        lut: np.ndarray | None = None,
        normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> "BlockPredictor":
        """Regions predicted as :func:`.predict.sliding_window_predict` does with ``predictor`` (tests, custom networks)."""
        tile = tuple(int(t) for t in tile_size)
        return cls(
            num_classes=int(num_classes),
            lut=lut if lut is not None else np.arange(num_classes, dtype=np.uint8 if num_classes <= 256 else np.uint16),
            halo=(int(halo),) * len(tile) if isinstance(halo, int) else tuple(int(h) for h in halo),
            spatial_dims=len(tile),
            predictor=predictor,
            tile_size=tile,
            overlap=float(overlap),
            normalize=normalize,
        )

    def channel_first(self, region: np.ndarray) -> np.ndarray:
        """(C, *spatial) view of a region read as (*spatial) or (C, *spatial)."""
        region = np.asarray(region)
        return region[np.newaxis] if region.ndim == self.spatial_dims else region

    def __call__(self, region: np.ndarray, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (spatial shape, ``lut`` dtype) and optionally (K, *spatial) float32 probabilities of ``region``."""
        from .predict import sliding_window_predict, predict

        region_cf = self.channel_first(region)
        spatial = region_cf.shape[1:]
        labels = np.zeros(spatial, dtype=self.lut.dtype)
        probs = np.zeros((self.num_classes, *spatial), np.float32) if probabilities else None
        if self.model is not None:
            predict(self.model, region_cf, self.config, labels_out=labels, probabilities_out=probs)
        else:
            assert self.predictor is not None and self.tile_size is not None
            for _ in sliding_window_predict(
                self.predictor, region_cf, num_classes=self.num_classes, tile_size=self.tile_size,
                overlap=self.overlap, labels_out=labels, lut=self.lut, probabilities_out=probs, normalize=self.normalize,
            ):
                pass
        return labels, probs

    def predict_block(self, image: Any, block: Block, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Read ``block``'s region of ``image`` ((C,) *spatial array-like), predict it, return its core."""
        region = np.asarray(image[(Ellipsis, *block.read)])
        labels, probs = self(region, probabilities)
        return labels[block.crop], (probs[(slice(None), *block.crop)] if probs is not None else None)


def predict_lazy(
    block_predictor: BlockPredictor,
    image: Any,
    block_shape: Sequence[int] | None = None,
    max_block_voxels: int = 16 * 2**20,
) -> Any:
    """A lazy dask array of labels for ``image``, predicted block by block as it is read.

    Args:
        block_predictor: see :class:`BlockPredictor`.
        image: (*spatial) or (C, *spatial) dask array (or anything ``dask.array.asarray`` takes).
        block_shape: spatial core shape of each block (default: chosen from the image's
            chunks, at most ``max_block_voxels``).

    Returns a dask array of the spatial shape whose chunks are the blocks; computing
    a chunk reads the block and its halo (``dask.array.overlap``, no padding at the
    volume's border) and predicts it.  The labels are those of the block-wise
    distributed prediction with the same blocks.
    """
    import dask.array as da

    image = da.asarray(image)
    dims = block_predictor.spatial_dims
    if image.ndim not in (dims, dims + 1):
        raise ValueError(f"image of shape {image.shape} is neither {dims}-D nor channel-first {dims + 1}-D")
    image_cf = image[np.newaxis] if image.ndim == dims else image
    spatial = tuple(int(s) for s in image_cf.shape[1:])
    if block_shape is None:
        chunks = tuple(int(c[0]) for c in image_cf.chunks[1:])
        block_shape = choose_block_shape(spatial, chunks, block_predictor.halo, max_block_voxels)
    block_shape = tuple(int(b) for b in block_shape)
    halo = tuple(min(h, b) for h, b in zip(block_predictor.halo, block_shape))  # dask needs depth <= chunk
    grid = {b.index: b for b in block_grid(spatial, block_shape, halo)}
    image_cf = image_cf.rechunk((image_cf.shape[0], *block_shape))
    depth = {0: 0, **{i + 1: h for i, h in enumerate(halo)}}
    padded = da.overlap.overlap(image_cf, depth=depth, boundary="none")

    def run(region: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is None:  # dask's meta probe
            return np.zeros((0,) * dims, block_predictor.lut.dtype)
        index = tuple(block_info[0]["chunk-location"][1:])
        block = grid[index]
        assert tuple(region.shape[1:]) == block.read_shape, (region.shape, block)
        return block_predictor(region)[0][block.crop]

    core_chunks = tuple(tuple(min(b, s - a) for a in range(0, s, b)) for s, b in zip(spatial, block_shape))
    return da.map_blocks(run, padded, chunks=core_chunks, drop_axis=0, dtype=block_predictor.lut.dtype, meta=np.zeros((0,) * dims, block_predictor.lut.dtype))


def block_bytes(block: Block, channels: int, itemsize: int) -> int:
    """Bytes a block reads (input, with its halo)."""
    return int(channels) * math.prod(block.read_shape) * int(itemsize)
