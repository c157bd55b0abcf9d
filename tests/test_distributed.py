"""Block-wise prediction on a Dask LocalCluster: same labels as one process, worker death, resume, OME-Zarr.

Every volume is (Z, Y, X).  Blocks compute the whole volume's tiles, so they give the single-process
labels exactly for any predictor: a pointwise (affine) one, one whose output depends on the tile
(instance-norm-like) and reads a halo, and a network.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_sparse_unet import io  # noqa: E402
from napari_sparse_unet.core.prediction.blocks import block_grid  # noqa: E402
from napari_sparse_unet.core.prediction.blockwise import BlockPredictor, predict_lazy  # noqa: E402
from napari_sparse_unet.core.config import PredictConfig  # noqa: E402
from napari_sparse_unet.core.prediction.predict import predict  # noqa: E402
from napari_sparse_unet.core.prediction.sliding_window import sliding_window_predict  # noqa: E402
from napari_sparse_unet.distributed import local_client, predict_zarr  # noqa: E402
from napari_sparse_unet.io.zarr_files import partial_path, write_ome_image  # noqa: E402
from test_predict import one_thread, tiny_model  # noqa: E402,F401 - one torch thread here too (autouse)

SHAPE = (20, 40, 36)
CHUNKS = (5, 10, 12)
TILE = (8, 16, 16)


class Affine:
    """(N, 1, ...) -> (N, 3, ...): a fixed pointwise affine map; with ``die_in`` set, the first call on a
    region of that shape kills its process (a worker dying mid-run), leaving a file so it dies only once."""

    weights = torch.tensor([[1.0], [-1.0], [0.3]])
    bias = torch.tensor([0.0, 0.7, 0.2])

    def __init__(self, die_once: str | None = None, calls: str | None = None) -> None:
        self.die_once = die_once
        self.calls = calls

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls is not None:
            with open(self.calls, "a") as f:
                f.write(f"{os.getpid()}\n")
        if self.die_once is not None and not os.path.exists(self.die_once):
            Path(self.die_once).touch()
            os._exit(1)
        y = torch.einsum("kc,nc...->nk...", self.weights, x)
        return y + self.bias.reshape(1, -1, 1, 1, 1)


class TileDependent:
    """(N, 1, *(tile + 2)) -> (N, 3, *tile): a 3×3×3 mean (it reads a 1-voxel input halo) minus the
    tile's mean, so every voxel's output depends on where the tiles are, as with instance norm."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        smooth = torch.nn.functional.avg_pool3d(x, 3, stride=1)
        centred = smooth - smooth.mean(dim=(2, 3, 4), keepdim=True)
        return torch.cat([centred, -centred, 0.1 * torch.ones_like(centred)], dim=1)


class FailOn:
    """A block predictor wrapper that raises while ``flag`` exists, on blocks whose region starts at ``z``."""

    def __init__(self, inner: BlockPredictor, flag: str, z: int) -> None:
        self.inner, self.flag, self.z = inner, flag, z

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def for_volume(self, shape) -> "FailOn":
        return FailOn(self.inner.for_volume(shape), self.flag, self.z)

    def predict_block(self, image, block, probabilities=False):
        if os.path.exists(self.flag) and block.core[0].start == self.z:
            raise OSError("simulated storage failure")
        return self.inner.predict_block(image, block, probabilities)


@pytest.fixture(scope="module")
def client():
    with local_client(2, memory_limit="1GiB") as c:
        yield c


@pytest.fixture
def volume(tmp_path) -> tuple[np.ndarray, Path]:
    image = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    path = tmp_path / "image.zarr"
    z = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNKS, dtype="float32")
    z[:] = image
    z.attrs["spacing"] = [2.0, 1.0, 1.0]
    return image, path


def reference(image: np.ndarray, with_probabilities: bool = False, predictor=None, input_halo: int = 0):
    labels = np.zeros(image.shape, np.uint8)
    probs = np.zeros((3, *image.shape), np.float32) if with_probabilities else None
    for _ in sliding_window_predict(predictor or Affine(), image[None], num_classes=3, tile_size=TILE, overlap=0.25,
                                    labels_out=labels, probabilities_out=probs, halo=(input_halo,) * 3):
        pass
    return labels, probs


def block_predictor(**kwargs) -> BlockPredictor:
    return BlockPredictor.from_callable(Affine(**kwargs), 3, TILE, overlap=0.25)


def test_two_workers_give_exactly_the_single_process_labels(client, volume, tmp_path):
    image, path = volume
    events = []
    result = predict_zarr(
        block_predictor(), path, tmp_path / "labels.zarr", client=client, block_shape=(10, 20, 24),
        probabilities=tmp_path / "probabilities.zarr", progress=events.append,
    )
    labels, probs = reference(image, with_probabilities=True)
    out, spacing = io.read_volume_with_spacing(tmp_path / "labels.zarr")
    np.testing.assert_array_equal(out, labels)
    assert spacing == (2.0, 1.0, 1.0)
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "probabilities.zarr"))[:], probs, rtol=1e-6, atol=1e-6)
    assert result.blocks_total == 8 and len(result.results) == 8
    assert len({r.worker for r in result.results}) == 2, "both workers took blocks"
    assert [e.blocks_done for e in events] == list(range(9)) and events[-1].blocks_total == 8
    # Chunks are aligned to the blocks and nothing is left beside the output.
    assert all(b % c == 0 for b, c in zip(result.block_shape, zarr.open_array(str(tmp_path / "labels.zarr")).chunks))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.zarr", "labels.zarr", "probabilities.zarr"]


def test_a_worker_that_dies_mid_run_has_its_blocks_recomputed(client, volume, tmp_path):
    image, path = volume
    died, calls = tmp_path / "died", tmp_path / "calls"
    predict_zarr(block_predictor(die_once=str(died), calls=str(calls)), path, tmp_path / "labels.zarr", client=client,
                 block_shape=(10, 20, 24))
    assert died.exists()
    pids = calls.read_text().split()
    assert len(set(pids)) >= 2 and len(pids) > 8  # the dead worker's tile is run again elsewhere
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"))[:], reference(image)[0])


def test_resume_skips_finished_blocks_and_a_failed_run_leaves_no_output(volume, tmp_path):
    image, path = volume
    out, flag, calls = tmp_path / "labels.zarr", tmp_path / "fail", tmp_path / "calls"
    flag.touch()
    predictor = FailOn(block_predictor(calls=str(calls)), str(flag), z=10)
    with pytest.raises(OSError, match="simulated"):
        predict_zarr(predictor, path, out, block_shape=(10, 20, 24))
    assert not out.exists() and partial_path(out).is_dir()
    finished = sorted(p.name for p in (partial_path(out) / ".napari-sparse-unet-blocks").glob("*.done"))
    assert finished == ["0_0_0.done", "0_0_1.done", "0_1_0.done", "0_1_1.done"]
    flag.unlink()
    calls.unlink()
    events = []
    result = predict_zarr(predictor, path, out, block_shape=(10, 20, 24), resume=True, progress=events.append)
    assert result.blocks_resumed == 4 and len(result.results) == 4 and events[0].blocks_done == 4
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], reference(image)[0])
    assert not partial_path(out).exists()
    # Other settings cannot resume a run; without --resume an unfinished run starts again.
    flag.touch()
    with pytest.raises(OSError):
        predict_zarr(predictor, path, tmp_path / "again.zarr", block_shape=(10, 20, 24))
    with pytest.raises(io.VolumeIOError, match="block_shape"):
        predict_zarr(predictor, path, tmp_path / "again.zarr", block_shape=(5, 20, 24), resume=True)
    flag.unlink()
    predict_zarr(predictor, path, tmp_path / "again.zarr", block_shape=(5, 20, 24))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "again.zarr"))[:], reference(image)[0])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_input_gives_an_ome_zarr_labels_image_with_its_scale(tmp_path, zarr_format):
    image = np.random.default_rng(2).random((1, *SHAPE)).astype(np.float32)
    path = tmp_path / "image.ome.zarr"
    write_ome_image(path, image, spacing=(2.0, 0.5, 0.5), chunks=(1, *CHUNKS), zarr_format=zarr_format)
    out = tmp_path / "labels.ome.zarr"
    predict_zarr(block_predictor(), path, out, block_shape=(10, 20, 24))
    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == zarr_format
    attrs = dict(group.attrs)
    ome = attrs["ome"] if zarr_format == 3 else attrs
    assert ome["multiscales"][0]["version" if zarr_format == 2 else "name"]
    assert "image-label" in ome
    multiscale = ome["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert multiscale["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]
    labels, spacing = io.read_volume_with_spacing(out)
    assert spacing == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(labels, reference(image[0])[0])


def test_blocks_of_a_tile_dependent_predictor_with_an_input_halo_equal_one_process(client, volume, tmp_path):
    image, path = volume
    predictor = BlockPredictor.from_callable(TileDependent(), 3, TILE, overlap=0.25, input_halo=1)
    assert predictor.for_volume(SHAPE).halo == (8, 16, 16)  # a tile less one voxel, plus the input halo
    result = predict_zarr(predictor, path, tmp_path / "labels.zarr", client=client, block_shape=(10, 20, 12),
                          probabilities=tmp_path / "probabilities.zarr")
    labels, probs = reference(image, True, TileDependent(), input_halo=1)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"))[:], labels)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "probabilities.zarr"))[:], probs)
    assert result.blocks_total == 12 and len({r.worker for r in result.results}) == 2
    # Re-tiling each block instead (its own tile grid) would not give the same labels.
    block = BlockPredictor.from_callable(TileDependent(), 3, TILE, overlap=0.25, input_halo=1).for_volume((10, 20, 12))
    alone = block.predict_region(image[:10, :20, :12], (0, 0, 0), (slice(0, 10), slice(0, 20), slice(0, 12)))[0]
    assert not np.array_equal(alone, labels[:10, :20, :12])


def test_lazy_labels_of_a_dask_array_match_the_block_wise_run(volume, tmp_path):
    da = pytest.importorskip("dask.array")
    image, path = volume
    lazy = predict_lazy(block_predictor(), da.from_zarr(str(path)), block_shape=(10, 20, 24))
    assert lazy.shape == SHAPE and lazy.chunksize == (10, 20, 24)
    np.testing.assert_array_equal(lazy[12:14].compute(), reference(image)[0][12:14])
    np.testing.assert_array_equal(np.asarray(lazy), reference(image)[0])


def test_a_model_on_the_cluster_equals_the_same_blocks_here_and_agrees_with_one_process(client, tmp_path):
    model = tiny_model()
    config = PredictConfig(device="cpu")
    image = (np.random.default_rng(5).random((16, 32, 32)) * 255).astype(np.uint8)
    path = tmp_path / "image.zarr"
    zarr.create_array(str(path), shape=image.shape, chunks=(8, 16, 16), dtype="uint8")[:] = image
    predictor = BlockPredictor.from_model(model, config)
    predict_zarr(predictor, path, tmp_path / "cluster.zarr", client=client, block_shape=(8, 16, 16))
    predict_zarr(predictor, path, tmp_path / "here.zarr", block_shape=(8, 16, 16))
    cluster = zarr.open_array(str(tmp_path / "cluster.zarr"))[:]
    np.testing.assert_array_equal(cluster, zarr.open_array(str(tmp_path / "here.zarr"))[:])
    single = predict(model, image, config)
    assert set(np.unique(cluster)) <= {0, 2, 4}
    np.testing.assert_array_equal(cluster, single)
    assert not partial_path(tmp_path / "cluster.zarr").exists()


def test_command_line_predicts_with_local_workers_and_resumes(tmp_path, capsys):
    from napari_sparse_unet.cli import main

    model_path = tmp_path / "model.pt"
    tiny_model().save(model_path)
    image = (np.random.default_rng(6).random((16, 32, 32)) * 255).astype(np.uint8)
    zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, chunks=(8, 16, 16), dtype="uint8")[:] = image
    common = ["predict", "--model", model_path, "--image", tmp_path / "image.zarr", "--device", "cpu", "-q"]
    assert main([str(a) for a in common + ["--out", tmp_path / "one.zarr"]]) == 0
    code = main([str(a) for a in common + ["--out", tmp_path / "two.zarr", "--workers", "2", "--block-size", "8", "16", "16"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "8 blocks (2×2×2) of 8×16×16" in out and "2 Dask workers" in out
    one, two = (zarr.open_array(str(tmp_path / f"{n}.zarr"))[:] for n in ("one", "two"))
    np.testing.assert_array_equal(one, two)
    # In this process, resuming a run that finished before changes nothing and starts afresh.
    code = main([str(a) for a in common + ["--out", tmp_path / "here.zarr", "--block-size", "8", "16", "16", "--resume"]])
    assert code == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "here.zarr"))[:], two)
    capsys.readouterr()
    code = main([str(a) for a in common + ["--out", tmp_path / "x.tif", "--workers", "2"]])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: --out") and ".zarr folders only" in err and len(err.splitlines()) == 1


def test_command_line_predicts_on_an_existing_cluster_by_address_or_scheduler_file(client, tmp_path, capsys):
    from napari_sparse_unet.cli import main

    model_path = tmp_path / "model.pt"
    model = tiny_model()
    model.save(model_path)
    image = (np.random.default_rng(7).random((16, 32, 32)) * 255).astype(np.uint8)
    zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, chunks=(8, 16, 16), dtype="uint8")[:] = image
    here = tmp_path / "here.zarr"
    predict_zarr(BlockPredictor.from_model(model, PredictConfig(device="cpu")), tmp_path / "image.zarr", here, block_shape=(8, 16, 16))
    expected = zarr.open_array(str(here))[:]
    scheduler_file = tmp_path / "scheduler.json"
    client.write_scheduler_file(str(scheduler_file))
    common = ["predict", "--model", model_path, "--image", tmp_path / "image.zarr", "--device", "cpu", "-q",
              "--block-size", "8", "16", "16"]
    for name, where in (("address", client.scheduler.address), ("file", scheduler_file)):
        code = main([str(a) for a in common + ["--out", tmp_path / f"{name}.zarr", "--scheduler", where]])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "8 blocks (2×2×2) of 8×16×16" in out and "on 2 Dask workers" in out
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"{name}.zarr"))[:], expected)
    # The command's client has gone; the cluster it used is still there.
    assert len(client.nthreads()) == 2 and client.submit(int, "3").result() == 3
