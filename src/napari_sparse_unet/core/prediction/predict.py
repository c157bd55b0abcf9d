"""Sliding-window prediction of whole volumes, streamed out slab by slab.

Axis order: images are channel-first, (C, Z, Y, X) or (C, Y, X); tensors are
(N, C, *tile); labels have the spatial shape only.

Tiles need not match the training patch (:func:`.tile_size.choose_tile_size`
picks them); :mod:`.sliding_window` predicts and blends them.  Overlap is
measured in voxels of the *training* patch (``PredictConfig.overlap`` × ``patch_size``), the context the
network was trained with, so bigger tiles do not mean more redundant voxels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np

from ..config import PredictConfig
from ..data import model_lut
from ..device import resolve_device
from ..errors import InputError
from ..generators import run_to_end
from .predictor import make_featurizer, make_predictor
from ..rules import check_network_size, image_for_model
from .sliding_window import PredictEvent, SlabHook, sliding_window_predict
from .tile_size import choose_tile_size, row_feature_bytes
from .tiling import overlap_voxels

if TYPE_CHECKING:
    from ..checkpoint import SegmentationModel


def plan_prediction(model: SegmentationModel, spatial_shape: Sequence[int], config: PredictConfig) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(tile shape, overlap as a fraction of the tile per axis) for ``model`` on ``spatial_shape``.

    Neighbouring tiles share ``config.overlap`` × the training patch in voxels
    (what MONAI's usual setting, window = training patch, shares), so the
    overlap does not grow with the tile.  Tiles are at least the training
    patch (clipped to the volume) unless ``config.tile_size`` is given.
    """
    shape = tuple(int(s) for s in spatial_shape)
    patch = tuple(int(p) for p in getattr(model, "patch_size", None) or model.model_config.size_multiple())
    halo = [overlap_voxels(p, config.overlap) for p in patch]
    if config.tile_size is not None:
        tile = check_network_size("tile_size", config.tile_size, model.model_config.size_multiple())
    else:
        tile = choose_tile_size(
            model.model_config,
            shape,
            config.memory_budget_mb,
            overlap=halo,
            min_tile=patch,
            batch_size=config.batch_size,
        )
    # Never ask for more overlap than the tile can give (tile_starts needs < 1).
    fractions = tuple(min(h, t - 1) / t for h, t in zip(halo, tile))
    return tile, fractions


def predict_iter(
    model: SegmentationModel,
    image: Any,
    config: PredictConfig = PredictConfig(),
    labels_out: Any = None,
    probabilities_out: Any = None,
    slab_hooks: Sequence[SlabHook] = (),
) -> Generator[PredictEvent, None, Any]:
    """Predict a whole image with a ``SegmentationModel``; a generator for GUI workers.

    Args:
        model: a ``SegmentationModel``.
        image: (Z, Y, X) / (C, Z, Y, X) for a 3-D model, (Y, X) / (C, Y, X)
            for a 2-D one, numpy or array-like, any numeric dtype.
        labels_out: array-like of the spatial shape (numpy, zarr); allocated
            (numpy, ``model.output_lut()`` dtype) when None.  Background is 0,
            every class the value painted for it.
        probabilities_out: optional (K, *spatial) float32 array-like.
        slab_hooks: :data:`SlabHook` callables given each finished slab's
            probabilities (uncertainty, one class's probability).

    Yields :class:`PredictEvent` after each batch of tiles (closing the
    generator there cancels) and returns ``labels_out``.
    """
    image_cf = image_for_model(image, int(model.spatial_dims), int(model.in_channels))
    spatial = tuple(int(s) for s in image_cf.shape[1:])
    lut = model_lut(model)
    if labels_out is None:
        labels_out = np.zeros(spatial, dtype=lut.dtype)
    elif tuple(labels_out.shape) != spatial:
        raise InputError(f"labels_out has shape {tuple(labels_out.shape)} but the image's spatial shape is {spatial}")
    if probabilities_out is not None and tuple(probabilities_out.shape) != (model.num_classes, *spatial):
        raise InputError(
            f"probabilities_out has shape {tuple(probabilities_out.shape)}, expected {(model.num_classes, *spatial)}"
        )
    tile, overlap = plan_prediction(model, spatial, config)
    yield from sliding_window_predict(
        image_cf=image_cf, tile_size=tile, overlap=overlap, labels_out=labels_out, probabilities_out=probabilities_out,
        slab_hooks=slab_hooks, feature_bytes=row_feature_bytes(config.memory_budget_mb), **model_window(model, config),
    )
    return labels_out


def model_window(model: SegmentationModel, config: PredictConfig) -> dict[str, Any]:
    """:func:`sliding_window_predict`'s settings for ``model`` (all but the image, tiling and outputs)."""
    device = resolve_device(config.device)
    featurize = make_featurizer(model, device, config.mixed_precision)
    return {
        "predictor": make_predictor(model, device, config.mixed_precision, config.tta, on_features=featurize is not None),
        "featurize": featurize,
        "num_classes": model.num_classes,
        "lut": model_lut(model),
        "normalize": model.normalization.apply,
        "batch_size": config.batch_size,
        "device": device,
        "halo": model.model_config.input_halo,
    }


def predict(
    model: SegmentationModel,
    image: Any,
    config: PredictConfig = PredictConfig(),
    *,
    labels_out: Any = None,
    probabilities_out: Any = None,
    progress: Callable[[PredictEvent], None] | None = None,
) -> Any:
    """Blocking :func:`predict_iter`: returns the labels (spatial shape), calling ``progress`` per batch."""
    events = predict_iter(model, image, config, labels_out=labels_out, probabilities_out=probabilities_out)
    return run_to_end(events, progress)
