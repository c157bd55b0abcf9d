"""Predict one block of a volume exactly as one process predicting the whole volume would.

A :class:`BlockPredictor` is what a Dask worker keeps in memory: a model (or,
in tests, a predictor callable) with its prediction settings.  Planned for a
volume (:meth:`BlockPredictor.for_volume`), it knows the tiles the
single-process :func:`.predict.predict` would use on the whole volume; a block
computes those of them that cover its core, reading them (and the network's
input halo) from the region it was given, and blends them as that run does.
So a block's labels equal the single-process labels for any network, tiling
or normalisation: only tiles straddling a block border are computed twice.

Axis order: regions are channel-first (C, Z, Y, X) (2-D: (C, Y, X)) or have
no channel axis; labels, origins and the halo are spatial.
:func:`predict_lazy` turns a dask array into a lazy dask array of labels
(napari can show it without computing the whole volume).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .blocks import Block, block_grid, choose_block_shape, grid_shape
from ..config import PredictConfig
from ..data import model_lut
from ..generators import run_to_end
from .tiling import per_axis_values, tile_starts

if TYPE_CHECKING:
    from ..checkpoint import SegmentationModel


@dataclass
class BlockPredictor:
    """Prediction of a volume's blocks with a ``SegmentationModel``, or with a predictor callable.

    Build it with :meth:`from_model` or :meth:`from_callable`, then plan it
    for the volume with :meth:`for_volume`.  It pickles (Dask sends it to each
    worker once) and keeps no state between calls.

    Attributes:
        num_classes: K, the predictor's classes.
        lut: class index -> output label value.
        spatial_dims: 3 for volumes, 2 for images.
        input_halo: input voxels the predictor reads beyond each tile side.
        tile_size, overlap: the volume's tiling (a model's is planned by :meth:`for_volume`).
        volume_shape: spatial shape of the volume planned for, None before.
    """

    num_classes: int
    lut: np.ndarray
    spatial_dims: int
    input_halo: tuple[int, ...]
    model: Any = None
    config: PredictConfig = PredictConfig()
    predictor: Callable[..., Any] | None = None
    tile_size: tuple[int, ...] | None = None
    overlap: float | tuple[float, ...] = 0.25
    normalize: Callable[[np.ndarray], np.ndarray] | None = None
    volume_shape: tuple[int, ...] | None = None

    @classmethod
    def from_model(cls, model: SegmentationModel, config: PredictConfig = PredictConfig()) -> "BlockPredictor":
        """Blocks predicted as :func:`.predict.predict` predicts the whole volume with ``model`` and ``config``."""
        return cls(
            num_classes=int(model.num_classes),
            lut=model_lut(model),
            spatial_dims=int(model.spatial_dims),
            input_halo=tuple(int(h) for h in model.model_config.input_halo),
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
        input_halo: Sequence[int] | int = 0,
        lut: np.ndarray | None = None,
        normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> "BlockPredictor":
        """Blocks predicted as :func:`.sliding_window.sliding_window_predict` predicts the whole volume with ``predictor``."""
        tile = tuple(int(t) for t in tile_size)
        return cls(
            num_classes=int(num_classes),
            lut=lut if lut is not None else np.arange(num_classes, dtype=np.uint8 if num_classes <= 256 else np.uint16),
            spatial_dims=len(tile),
            input_halo=(int(input_halo),) * len(tile) if isinstance(input_halo, int) else tuple(int(h) for h in input_halo),
            predictor=predictor,
            tile_size=tile,
            overlap=float(overlap),
            normalize=normalize,
        )

    def for_volume(self, shape: Sequence[int]) -> "BlockPredictor":
        """This predictor planned for a volume of spatial ``shape``: a model's tiles are those
        :func:`.predict.plan_prediction` chooses for the whole volume."""
        shape = tuple(int(s) for s in shape)
        if self.model is None:
            return dataclasses.replace(self, volume_shape=shape)
        from .predict import plan_prediction

        tile, overlap = plan_prediction(self.model, shape, self.config)
        return dataclasses.replace(self, tile_size=tuple(tile), overlap=tuple(overlap), volume_shape=shape)

    def _tiling(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
        if self.volume_shape is None or self.tile_size is None:
            raise RuntimeError("plan the block predictor for the volume first: for_volume(shape)")
        return self.volume_shape, self.tile_size, per_axis_values(self.overlap, self.spatial_dims, "overlap")

    @property
    def halo(self) -> tuple[int, ...]:
        """Voxels a block reads beyond its core on each side: the tiles covering the core reach
        up to a tile less one voxel beyond it, and read the input halo beyond that."""
        shape, tile, _ = self._tiling()
        return tuple(min(t - 1 + h, s) for t, h, s in zip(tile, self.input_halo, shape))

    def _axis_tiles(self, axis: int, start: int, stop: int) -> list[int]:
        """Starts of the volume's tiles along ``axis`` that cover voxels of [start, stop)."""
        shape, tile, overlap = self._tiling()
        return [a for a in tile_starts(shape[axis], tile[axis], overlap[axis]) if a < stop and a + tile[axis] > start]

    def work(self, block_shape: Sequence[int]) -> int:
        """Voxels of tiles all blocks of ``block_shape`` compute together (a tile straddling a
        border counts for each block); :func:`.blocks.choose_block_shape`'s cost."""
        shape, tile, _ = self._tiling()
        total = 1
        for axis, (size, block, t) in enumerate(zip(shape, block_shape, tile)):
            total *= sum(
                min(starts[-1] + t, size) - starts[0]
                for starts in (self._axis_tiles(axis, a, min(a + int(block), size)) for a in range(0, size, int(block)))
            )
        return total

    def predict_region(
        self, region: np.ndarray, origin: Sequence[int], core: Sequence[slice], probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (``core``'s shape, ``lut`` dtype) and optionally (K, ...) float32 probabilities of
        ``core``, from ``region``: the volume read from corner ``origin``, holding ``core`` and its halo."""
        region_cf = np.asarray(region)
        if region_cf.ndim == self.spatial_dims:
            region_cf = region_cf[np.newaxis]
        starts = [self._axis_tiles(axis, c.start, c.stop) for axis, c in enumerate(core)]
        tiles = [tuple(a - o for a, o in zip(corner, origin)) for corner in itertools.product(*starts)]
        box = tuple(min(s[-1] + t, n) - s[0] for s, t, n in zip(starts, self.tile_size, self.volume_shape))
        labels = np.zeros(box, dtype=self.lut.dtype)
        probs = np.zeros((self.num_classes, *box), np.float32) if probabilities else None
        if self.model is not None:
            from .predict import model_window
            from ..rules import image_for_model

            region_cf = image_for_model(region_cf, self.spatial_dims, int(self.model.in_channels))
            settings = model_window(self.model, self.config)
        else:
            settings = {"predictor": self.predictor, "num_classes": self.num_classes, "lut": self.lut,
                        "normalize": self.normalize, "halo": self.input_halo}
        from .sliding_window import sliding_window_predict

        run_to_end(sliding_window_predict(
            image_cf=region_cf, tile_size=self.tile_size, overlap=self.overlap, labels_out=labels,
            probabilities_out=probs, tiles=tiles, **settings,
        ))
        crop = tuple(slice(c.start - s[0], c.stop - s[0]) for c, s in zip(core, starts))
        return labels[crop], (probs[(slice(None), *crop)] if probs is not None else None)

    def predict_block(self, image: Any, block: Block, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Read ``block``'s region of ``image`` ((C,) *spatial array-like), predict its core."""
        region = np.asarray(image[(Ellipsis, *block.read)])
        return self.predict_region(region, [r.start for r in block.read], block.core, probabilities)


def predict_lazy(
    block_predictor: BlockPredictor,
    image: Any,
    block_shape: Sequence[int] | None = None,
    max_block_voxels: int = 16 * 2**20,
) -> Any:
    """A lazy dask array of labels for ``image``, predicted block by block as it is read.

    Args:
        block_predictor: see :class:`BlockPredictor` (planned here for ``image``).
        image: (*spatial) or (C, *spatial) dask array (or anything ``dask.array.asarray`` takes).
        block_shape: spatial core shape of each block (default: chosen from the image's
            chunks, at most ``max_block_voxels``).

    Returns a dask array of the spatial shape whose chunks are the blocks; computing
    a chunk reads the block and its halo from ``image`` and predicts it: the labels
    are those of one process predicting the whole image.
    """
    import uuid

    import dask
    import dask.array as da

    image = da.asarray(image)
    dims = block_predictor.spatial_dims
    if image.ndim not in (dims, dims + 1):
        raise ValueError(f"image of shape {image.shape} is neither {dims}-D nor channel-first {dims + 1}-D")
    spatial = tuple(int(s) for s in image.shape[-dims:])
    planned = block_predictor.for_volume(spatial)
    if block_shape is None:
        chunks = tuple(int(c[0]) for c in image.chunks[-dims:])
        block_shape = choose_block_shape(spatial, chunks, planned.halo, max_block_voxels, work=planned.work)
    blocks = block_grid(spatial, tuple(int(b) for b in block_shape), planned.halo)
    predict = dask.delayed(_labels_of, pure=False)
    run = uuid.uuid4().hex[:8]
    pieces = np.empty(grid_shape(spatial, block_shape), dtype=object)
    for block in blocks:
        task = predict(planned, image[(Ellipsis, *block.read)], block, dask_key_name=f"predict-{run}-{block.name}")
        pieces[block.index] = da.from_delayed(task, block.core_shape, dtype=planned.lut.dtype)
    return da.block(pieces.tolist())


def _labels_of(block_predictor: BlockPredictor, region: np.ndarray, block: Block) -> np.ndarray:
    return block_predictor.predict_region(region, [r.start for r in block.read], block.core)[0]
