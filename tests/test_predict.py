"""Sliding-window prediction: exactness with pointwise predictors, outputs, memory, TTA, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_sparse_unet.core.prediction import predictor as predictor_module
from napari_sparse_unet.core.prediction import row_features as row_features_module
from napari_sparse_unet.core.prediction import sliding_window as sliding_window_module
from napari_sparse_unet.core.checkpoint import SegmentationModel
from napari_sparse_unet.core.config import ModelConfig, PredictConfig, TrainConfig
from napari_sparse_unet.core.data import Normalization, label_lut
from napari_sparse_unet.core.errors import InputError
from napari_sparse_unet.core.network.model import build_model
from napari_sparse_unet.core.prediction.predict import predict, predict_iter
from napari_sparse_unet.core.prediction.predictor import make_predictor
from napari_sparse_unet.core.prediction.sliding_window import PredictEvent, sliding_window_predict
from napari_sparse_unet.core.prediction.tile_size import choose_tile_size, estimate_tile_bytes


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP hand-offs cost more than the work (100x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(generator) -> list[PredictEvent]:
    return list(generator)


def mixing_predictor(weights: np.ndarray, bias: np.ndarray):
    """A random 1x1 convolution: (N, C, ...) -> (N, K, ...), pointwise, so tiling must not change it."""
    w = torch.from_numpy(weights.astype(np.float32))
    b = torch.from_numpy(bias.astype(np.float32))

    def predictor(x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("kc,nc...->nk...", w, x)
        return y + b.reshape((1, -1) + (1,) * (x.ndim - 2))

    return predictor


def pointwise_reference(image_cf: np.ndarray, weights: np.ndarray, bias: np.ndarray, normalize=None) -> np.ndarray:
    x = normalize(image_cf) if normalize is not None else image_cf.astype(np.float32)
    return np.einsum("kc,c...->k...", weights, x) + bias.reshape((-1,) + (1,) * (x.ndim - 1))


@pytest.mark.parametrize(
    "shape, tile, overlap, batch",
    [
        ((7, 13, 11), (4, 6, 5), 0.5, 1),  # odd shape, many tiles
        ((7, 13, 11), (4, 6, 5), 0.0, 3),  # no overlap, batches crossing slab boundaries
        ((7, 13, 11), (7, 13, 11), 0.25, 1),  # tile == volume
        ((7, 13, 11), (8, 16, 16), 0.25, 2),  # tile > volume: padded, cropped back
        ((5, 3, 17), (2, 8, 8), (0.5, 0.0, 0.25), 2),  # tile > volume on one axis only, per-axis overlap
        ((9, 10), (4, 4), 0.25, 3),  # 2-D
    ],
)
@pytest.mark.parametrize("channels, classes", [(1, 1), (2, 3)])
def test_pointwise_predictor_is_reproduced_exactly(shape, tile, overlap, batch, channels, classes):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(channels, *shape)).astype(np.float32)
    weights, bias = rng.normal(size=(classes, channels)), rng.normal(size=classes)
    probabilities = np.zeros((classes, *shape), np.float32)
    labels = np.zeros(shape, np.uint8)
    events = run(
        sliding_window_predict(
            mixing_predictor(weights, bias),
            image,
            num_classes=classes,
            tile_size=tile,
            overlap=overlap,
            labels_out=labels,
            probabilities_out=probabilities,
            batch_size=batch,
        )
    )
    expected = pointwise_reference(image, weights, bias)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, np.argmax(expected, axis=0))
    assert events[-1].tiles_done == events[-1].tiles_total
    assert len(events) == -(-events[-1].tiles_total // batch)


def test_identity_with_normalisation_and_integer_input():
    image = np.arange(2 * 9 * 10, dtype=np.uint16).reshape(2, 9, 10)
    out = np.zeros((2, 9, 10), np.float32)
    normalize = lambda x: (x.astype(np.float32) - 3.0) / 50.0  # noqa: E731
    run(sliding_window_predict(lambda x: x, image, num_classes=2, tile_size=(4, 4), overlap=0.5, probabilities_out=out, normalize=normalize))
    np.testing.assert_allclose(out, normalize(image), rtol=1e-6)


def one_hot_predictor(x: torch.Tensor) -> torch.Tensor:
    """Class = rounded input value (0..2), as probabilities."""
    index = x[:, 0].round().long().clamp(0, 2)
    return torch.nn.functional.one_hot(index, 3).movedim(-1, 1).float()


def test_labels_go_through_the_lut_into_numpy_and_zarr():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, size=(9, 14, 12))
    image = zarr.create_array(store={}, shape=(1, 9, 14, 12), chunks=(1, 3, 7, 6), dtype="float32")
    image[:] = classes[np.newaxis].astype(np.float32)
    lut = label_lut((1, 2, 5))
    assert lut.tolist() == [0, 2, 5]
    as_numpy = np.zeros(classes.shape, lut.dtype)
    as_zarr = zarr.zeros(shape=classes.shape, chunks=(2, 7, 6), dtype="uint8", store={})
    probabilities = zarr.zeros(shape=(3, *classes.shape), chunks=(3, 2, 7, 6), dtype="float32", store={})
    for out, probs in ((as_numpy, None), (as_zarr, probabilities)):
        run(sliding_window_predict(one_hot_predictor, image, num_classes=3, tile_size=(4, 8, 8), overlap=0.25, labels_out=out, lut=lut, probabilities_out=probs))
    np.testing.assert_array_equal(as_numpy, lut[classes])
    np.testing.assert_array_equal(as_zarr[:], lut[classes])
    np.testing.assert_allclose(probabilities[:].sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probabilities[:], np.moveaxis(np.eye(3)[classes], -1, 0), atol=1e-6)


class RecordingOutput:
    """An array-like that records which rows each write touches."""

    def __init__(self, shape, dtype):
        self.data = np.zeros(shape, dtype)
        self.shape, self.dtype = shape, dtype
        self.writes: list[tuple[int, int]] = []

    def __setitem__(self, key, value):
        rows = key if isinstance(key, slice) else key[1]
        self.writes.append((rows.start, rows.stop))
        self.data[key] = value


def test_result_streams_out_slab_by_slab_with_a_one_tile_deep_buffer(monkeypatch):
    shapes = []

    class Spy(sliding_window_module.SlabStitcher):
        def add(self, start, values):
            shapes.append(self.buffer_shape)
            super().add(start, values)

    monkeypatch.setattr(sliding_window_module, "SlabStitcher", Spy)
    shape, tile = (40, 6, 7), (6, 4, 4)
    image = np.random.default_rng(2).normal(size=(1, *shape)).astype(np.float32)
    labels = RecordingOutput(shape, np.uint8)
    probabilities = RecordingOutput((2, *shape), np.float32)
    run(sliding_window_predict(lambda x: torch.cat([x, -x], 1), image, num_classes=2, tile_size=tile, overlap=0.25,
                     labels_out=labels, probabilities_out=probabilities))
    assert shapes and all(s == (2, tile[0], 6, 7) for s in shapes)  # never the whole depth
    for writes in (labels.writes, probabilities.writes):
        assert len(writes) > 5 and all(stop - start <= tile[0] for start, stop in writes)
        assert [w[0] for w in writes[1:]] == [w[1] for w in writes[:-1]] and writes[-1][1] == 40
    np.testing.assert_allclose(probabilities.data[0], image[0], rtol=1e-6)


def tiny_model(spatial_dims=3, in_channels=1, class_values=(1, 2, 4), norm="batch", seed=0) -> SegmentationModel:
    torch.manual_seed(seed)
    config = ModelConfig(spatial_dims, in_channels, len(class_values), ((2,) * spatial_dims,), base_channels=2, norm=norm)
    return SegmentationModel(
        network=build_model(config).eval(),
        model_config=config,
        train_config=TrainConfig(),
        normalization=Normalization(low=(0.0,) * in_channels, high=(1.0,) * in_channels),
        class_values=class_values,
        patch_size=(4,) * spatial_dims,
    )


def test_predictor_returns_probabilities_without_gradients():
    model = tiny_model()
    x = torch.randn(2, 1, 4, 8, 8)
    y = make_predictor(model)(x)
    assert y.shape == (2, 3, 4, 8, 8) and not y.requires_grad
    torch.testing.assert_close(y.sum(1), torch.ones(2, 4, 8, 8))


def test_predictor_leaves_a_training_network_in_training_mode():
    network = tiny_model().network.train()
    make_predictor(network)(torch.randn(1, 1, 4, 4, 4))
    assert network.training


def symmetric_conv(dims: int) -> torch.nn.Module:
    """A convolution whose kernel is mirror-symmetric along every axis: flip-equivariant."""
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(1, 3, 3, padding=1)
    with torch.no_grad():
        kernel = conv.weight
        for axis in range(2, 2 + dims):
            kernel = kernel + torch.flip(kernel, (axis,))
        conv.weight.copy_(kernel)
    return conv.eval()


def test_tta_with_a_flip_equivariant_network_changes_nothing():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 5, 6, 7)
    net = symmetric_conv(3)
    torch.testing.assert_close(make_predictor(net, tta=True)(x), make_predictor(net, tta=False)(x), rtol=1e-5, atol=1e-6)


def test_tta_output_is_flip_equivariant_for_any_network():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()  # random kernel: not equivariant by itself
    predictor = make_predictor(net, tta=True)
    x = torch.randn(1, 1, 6, 7)
    for axes in ((2,), (3,), (2, 3)):
        torch.testing.assert_close(predictor(torch.flip(x, axes)), torch.flip(predictor(x), axes), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(make_predictor(net)(torch.flip(x, (3,))), torch.flip(make_predictor(net)(x), (3,)))


def test_predict_with_a_model_writes_painted_values():
    model = tiny_model()
    image = np.random.default_rng(3).integers(0, 255, size=(11, 13, 9)).astype(np.uint8)
    events = []
    labels = predict(model, image, PredictConfig(tile_size=(4, 8, 8), device="cpu"), progress=events.append)
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 2, 4}
    assert events and events[-1].tiles_done == events[-1].tiles_total
    # The same through the generator, into zarr, with probabilities.
    out = zarr.zeros(shape=image.shape, chunks=(4, 13, 9), dtype="uint8", store={})
    probabilities = np.zeros((3, *image.shape), np.float32)
    generator = predict_iter(model, image, PredictConfig(tile_size=(4, 8, 8), device="cpu"), labels_out=out,
                             probabilities_out=probabilities)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(generator)
    assert stop.value.value is out
    np.testing.assert_array_equal(out[:], labels)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.output_lut()[probabilities.argmax(0)], labels)


def test_predict_accepts_channel_first_multichannel_2d_and_zarr_input():
    model = tiny_model(spatial_dims=2, in_channels=3, class_values=(1, 3))
    image = np.random.default_rng(4).random((3, 10, 14)).astype(np.float32)
    labels = predict(model, image, PredictConfig(device="cpu"))
    assert labels.shape == (10, 14) and set(np.unique(labels)) <= {0, 3}
    single = tiny_model(spatial_dims=3)
    volume = zarr.create_array(store={}, shape=(6, 10, 12), chunks=(3, 10, 12), dtype="uint8")
    volume[:] = 7
    from_zarr = predict(single, volume, PredictConfig(device="cpu"))
    np.testing.assert_array_equal(from_zarr, predict(single, np.full((1, 6, 10, 12), 7, np.uint8), PredictConfig(device="cpu")))


def test_predict_stops_cleanly_when_the_generator_is_closed():
    model = tiny_model()
    labels = np.zeros((16, 8, 8), np.uint8)
    generator = predict_iter(model, np.ones((16, 8, 8), np.float32), PredictConfig(tile_size=(4, 8, 8), overlap=0, device="cpu"), labels_out=labels)
    first = next(generator)
    assert first.tiles_done == 1 and first.tiles_total == 4
    generator.close()


@pytest.mark.parametrize(
    "image, model_kwargs, fragments",
    [
        (np.zeros((2, 6, 8, 8)), {}, ["(2, 6, 8, 8)", "(Z, Y, X) or (1, Z, Y, X)"]),
        (np.zeros((8, 8)), {}, ["(8, 8)", "3-D"]),
        (np.zeros((6, 8, 8)), {"in_channels": 2}, ["(6, 8, 8)", "(2, Z, Y, X)"]),
        (np.zeros((2, 8, 8)), {"spatial_dims": 2, "in_channels": 3}, ["(2, 8, 8)", "(3, Y, X)"]),
        (np.full((4, 8, 8), np.nan, np.float32), {}, ["NaN"]),
    ],
)
def test_bad_images_raise_input_error_naming_the_shapes(image, model_kwargs, fragments):
    model = tiny_model(**model_kwargs)
    with pytest.raises(InputError) as error:
        predict(model, image, PredictConfig(device="cpu"))
    for fragment in fragments:
        assert fragment in str(error.value)


def test_bad_outputs_and_tile_sizes_raise_input_error():
    model = tiny_model()
    image = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"labels_out has shape \(4, 8\)"):
        predict(model, image, PredictConfig(device="cpu"), labels_out=np.zeros((4, 8), np.uint8))
    with pytest.raises(InputError, match="multiple of"):
        predict(model, image, PredictConfig(tile_size=(3, 8, 8), device="cpu"))


def test_choose_tile_size_fits_the_budget_and_the_volume():
    config = ModelConfig(3, 1, 3, ((2, 2, 2),) * 3, base_channels=16)
    small = choose_tile_size(config, (30, 50, 41), 4096, overlap=12, min_tile=(48, 48, 48))
    assert small == (32, 56, 48)  # the whole volume, rounded up to multiples of 8
    em = choose_tile_size(config, (30, 512, 512), 2048, overlap=12, min_tile=(48, 48, 48))
    assert em[2] == 512 and all(t % 8 == 0 for t in em)  # whole rows of the plane
    assert estimate_tile_bytes(config, em) < 2048 * 2**20
    tight = choose_tile_size(config, (128, 128, 128), 512, overlap=12, min_tile=(48, 48, 48))
    roomy = choose_tile_size(config, (128, 128, 128), 4096, overlap=12, min_tile=(48, 48, 48))
    assert np.prod(tight) < np.prod(roomy) and roomy == (128, 128, 128)
    assert all(t >= 48 for t in tight)
    flat = choose_tile_size(ModelConfig(2, 1, 2, ((2, 2),) * 2), (20, 30), 64)
    assert flat == (20, 32)
    with pytest.warns(RuntimeWarning, match="too small"):
        assert choose_tile_size(config, (64, 2048, 2048), 16, overlap=12, min_tile=(48, 48, 48)) == (48, 48, 48)


def test_a_row_of_big_planes_can_be_stopped_between_its_slabs(monkeypatch):
    # Filtering a row of 512² planes takes seconds: closing the generator there must not wait for the row.
    torch.manual_seed(0)
    config = ModelConfig(3, 1, 2, ((1, 2, 2),), base_channels=2, sigmas=((1.0, 1.0, 1.0),), voxel_head_width=4)
    model = SegmentationModel(
        network=build_model(config).eval(), model_config=config, train_config=TrainConfig(),
        normalization=Normalization(low=(0.0,), high=(1.0,)), class_values=(1, 2), patch_size=(4, 8, 8),
    )
    monkeypatch.setattr(row_features_module, "_FEATURE_VOXELS", 64)  # one plane of 8×8 per slab
    calls = []
    original = predictor_module.Featurizer.__call__
    monkeypatch.setattr(predictor_module.Featurizer, "__call__", lambda self, *args: calls.append(1) or original(self, *args))
    generator = predict_iter(model, np.ones((8, 8, 8), np.float32), PredictConfig(tile_size=(4, 8, 8), overlap=0, device="cpu"))
    first = next(generator)
    generator.close()
    assert first.tiles_done == 0 and len(calls) == 1
    # Run to the end, the same labels as without the pauses.
    monkeypatch.undo()
    image = np.random.default_rng(0).random((8, 8, 8), dtype=np.float32)
    probabilities = [np.zeros((2, 8, 8, 8), np.float32) for _ in range(2)]
    predict(model, image, PredictConfig(tile_size=(4, 8, 8), overlap=0, device="cpu"), probabilities_out=probabilities[0])
    monkeypatch.setattr(row_features_module, "_FEATURE_VOXELS", 64)
    predict(model, image, PredictConfig(tile_size=(4, 8, 8), overlap=0, device="cpu"), probabilities_out=probabilities[1])
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-5)


@pytest.mark.parametrize("spatial_dims, shape, tile", [(3, (10, 40, 24), (4, 12, 12)), (2, (40, 30), (12, 12))])
def test_rows_of_big_planes_are_filtered_in_bands_with_the_same_result(spatial_dims, shape, tile):
    # A row's features span whole planes; where they would exceed the budget the row is cut into
    # bands along the second axis, each read with its own halo: the numbers must not change.
    from napari_sparse_unet.core.prediction.predict import model_window
    from napari_sparse_unet.core.prediction.row_features import RowFeatures

    torch.manual_seed(0)
    config = ModelConfig(spatial_dims, 1, 3, ((2,) * spatial_dims,), base_channels=2, sigmas=((1.0,) * spatial_dims,),
                         context_sigmas=((3.0,) * spatial_dims,), voxel_head_width=4)
    model = SegmentationModel(
        network=build_model(config).eval(), model_config=config, train_config=TrainConfig(),
        normalization=Normalization(low=(0.0,), high=(1.0,)), class_values=(1, 2, 3), patch_size=tile,
    )
    image = np.random.default_rng(1).random((1, *shape), dtype=np.float32)
    settings = model_window(model, PredictConfig(mixed_precision=False, device="cpu"))
    assert RowFeatures(image, settings["featurize"], None, settings["halo"], tile, shape[1:], 1.0).band_length == tile[1]
    results = []
    for feature_bytes in (None, 1.0):  # whole rows; bands one tile long
        probabilities = np.zeros((3, *shape), np.float32)
        run(sliding_window_predict(image_cf=image, tile_size=tile, overlap=0.25, probabilities_out=probabilities,
                                   feature_bytes=feature_bytes, **settings))
        results.append(probabilities)
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)
