"""Predict volumes larger than one machine: one Dask task per block of a chunked zarr.

    >>> from distributed import Client, LocalCluster
    >>> client = Client(LocalCluster(n_workers=4, threads_per_worker=1))
    >>> predict_zarr(model, "big.ome.zarr", "big_labels.ome.zarr", client=client)

Each task reads its block plus a halo from the input zarr, runs the tiled
predictor on it (:class:`.core.prediction.blockwise.BlockPredictor`) and writes only the
block's core to the output, whose chunks the blocks are aligned to: no two
tasks write the same chunk and no data moves between workers.  The model goes
to every worker once, as a worker plugin (which Dask also installs on workers
that join or restart later), not with every task.

Robustness comes from Dask: a task whose worker dies is recomputed elsewhere
(up to ``distributed.scheduler.allowed-failures`` times), and a task that
raises is retried ``retries`` times.  A block is marked finished (an empty file)
only after all its chunks are written, and zarr writes each chunk atomically,
so an interrupted run leaves no half-written chunk behind a "finished" mark;
``resume=True`` skips the marked blocks.

dask and distributed are optional: ``pip install "napari-sparse-unet[distributed]"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io as _io
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .core.prediction.blocks import DEFAULT_MAX_BLOCK_VOXELS, Block, block_grid, choose_block_shape, grid_shape
from .core.errors import InputError
from .io.zarr_files import create_block_output, mark_finished, open_zarr_input, output_chunks

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # reported by _import_distributed() when a cluster is asked for
    WorkerPlugin = object

PLUGIN_NAME = "napari-sparse-unet-predictor"


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        from .io import VolumeIOError

        raise VolumeIOError(
            'predicting with Dask workers needs dask and distributed: pip install "napari-sparse-unet[distributed]"'
        ) from exc
    return distributed


@dataclass(frozen=True)
class BlockResult:
    """What one task reports: its block, seconds spent (wall and CPU of its process), voxels read (with halo) and written."""

    name: str
    seconds: float
    cpu_seconds: float
    voxels_read: int
    voxels_written: int
    worker: str


@dataclass(frozen=True)
class BlockProgress:
    """Progress of the whole job: blocks finished (including resumed ones) of the total."""

    blocks_done: int
    blocks_total: int
    elapsed: float
    last: BlockResult | None = None


class PredictorPlugin(WorkerPlugin):
    """Worker plugin holding the :class:`BlockPredictor`: pickled to each worker once.

    ``threads`` is torch's thread count in the worker's tasks (Dask's nannies
    start workers with OMP_NUM_THREADS=1).  It is set in each task, because an
    OpenMP thread count set in one thread does not reach the task threads.
    """

    name = PLUGIN_NAME

    def __init__(self, block_predictor: Any, threads: int | None = None) -> None:
        self.block_predictor = block_predictor
        self.threads = threads


def _worker_predictor() -> Any:
    from distributed import get_worker

    plugin = get_worker().plugins[PLUGIN_NAME]
    if plugin.threads:
        import torch

        torch.set_num_threads(int(plugin.threads))
    return plugin.block_predictor


def run_block(
    block: Block,
    image: Any,
    labels_out: Any,
    probabilities_out: Any = None,
    markers: str | None = None,
    block_predictor: Any = None,
) -> BlockResult:
    """Predict ``block`` of ``image`` and write its core; the task each worker runs.

    ``block_predictor`` defaults to the one the worker plugin installed.
    """
    start, cpu = time.perf_counter(), time.process_time()
    predictor = block_predictor if block_predictor is not None else _worker_predictor()
    labels, probs = predictor.predict_block(image, block, probabilities_out is not None)
    labels_out[block.core] = labels
    if probs is not None:
        probabilities_out[(slice(None), *block.core)] = probs
    if markers is not None:
        mark_finished(markers, block.name)
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = f"pid {os.getpid()}"
    return BlockResult(
        block.name, time.perf_counter() - start, time.process_time() - cpu, int(np.prod(block.read_shape)), int(np.prod(block.core_shape)), worker
    )


def predict_blocks(
    block_predictor: Any,
    image: Any,
    labels_out: Any,
    blocks: Sequence[Block],
    *,
    client: Any = None,
    probabilities_out: Any = None,
    markers: str | Path | None = None,
    skip: set[str] = frozenset(),
    threads: int | None = None,
    retries: int = 2,
    progress: Callable[[BlockProgress], None] | None = None,
) -> list[BlockResult]:
    """Predict ``blocks`` of ``image`` into ``labels_out`` (and ``probabilities_out``).

    Args:
        block_predictor: a :class:`.core.prediction.blockwise.BlockPredictor`.
        image: (*spatial) or (C, *spatial) array the workers can read (a zarr array).
        labels_out: spatial-shape array the workers can write, chunks aligned to the blocks.
        blocks: from :func:`.core.prediction.blocks.block_grid`.
        client: a ``distributed.Client``; None runs the blocks one by one in this process.
        markers: folder where each finished block leaves a mark (see :mod:`.io.zarr_files`).
        skip: names of blocks already finished (resume).
        threads: torch threads per worker (default: what the worker has).
        retries: extra attempts for a task that raises.
        progress: called after each finished block.

    Returns the results of the blocks computed now, in order of completion.
    """
    todo = [b for b in blocks if b.name not in skip]
    total = len(blocks)
    done = total - len(todo)
    started = time.perf_counter()
    marker_path = str(markers) if markers is not None else None
    results: list[BlockResult] = []
    if progress is not None:
        progress(BlockProgress(done, total, 0.0))
    if client is None:
        for block in todo:
            results.append(run_block(block, image, labels_out, probabilities_out, marker_path, block_predictor))
            done += 1
            if progress is not None:
                progress(BlockProgress(done, total, time.perf_counter() - started, results[-1]))
        return results
    distributed = _import_distributed()
    plugin = PredictorPlugin(block_predictor, threads)
    run = uuid.uuid4().hex[:8]
    client.register_plugin(plugin, name=PLUGIN_NAME)
    try:
        futures = client.map(
            run_block, todo, image=image, labels_out=labels_out, probabilities_out=probabilities_out,
            markers=marker_path, retries=retries, pure=False, key=[f"predict-block-{b.name}-{run}" for b in todo],
        )
        try:
            for future in distributed.as_completed(futures):
                results.append(future.result())
                done += 1
                if progress is not None:
                    progress(BlockProgress(done, total, time.perf_counter() - started, results[-1]))
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        try:
            client.unregister_worker_plugin(PLUGIN_NAME)
        except Exception:  # the cluster may be gone (Ctrl-C, lost scheduler): nothing left to clean
            pass
    return results


def model_token(block_predictor: Any) -> str:
    """A short hash of the model's weights and settings (a resumed run must use the same)."""
    digest = hashlib.sha256()
    model = block_predictor.model
    if model is not None and hasattr(model, "to_payload"):
        import torch

        buffer = _io.BytesIO()
        payload = model.to_payload()
        payload.pop("history", None)
        torch.save(payload, buffer)
        digest.update(buffer.getvalue())
        digest.update(repr(dataclasses.asdict(block_predictor.config)).encode())
    else:
        digest.update(repr((block_predictor.predictor, block_predictor.tile_size, block_predictor.overlap)).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ZarrPrediction:
    """Summary of :func:`predict_zarr`."""

    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    chunks: tuple[int, ...]
    halo: tuple[int, ...]
    blocks_total: int
    blocks_resumed: int
    results: tuple[BlockResult, ...]
    seconds: float


def predict_zarr(
    block_predictor: Any,
    image: str | Path,
    out: str | Path,
    *,
    client: Any = None,
    probabilities: str | Path | None = None,
    block_shape: Sequence[int] | None = None,
    max_block_voxels: int | None = None,
    resume: bool = False,
    threads: int | None = None,
    retries: int = 2,
    progress: Callable[[BlockProgress], None] | None = None,
) -> ZarrPrediction:
    """Predict the zarr / OME-Zarr volume at ``image`` into ``out`` block by block.

    The output takes the input's zarr format; an OME-Zarr input gives an
    OME-Zarr labels image with its scale.  It is built in ``.NAME.partial``
    beside ``out`` and moved into place when complete; ``resume=True`` continues
    an interrupted run with the same settings.

    Args:
        block_predictor: a :class:`.core.prediction.blockwise.BlockPredictor` (``BlockPredictor.from_model(model, config)``).
        client: a ``distributed.Client`` (LocalCluster, dask-jobqueue, Kubernetes...); None runs here.
        block_shape: spatial core shape of the blocks, a multiple of the output chunks
            (default: chosen to read the fewest voxels, see :func:`.core.prediction.blocks.choose_block_shape`).
        max_block_voxels: bound on the chosen block's voxels.
    """
    started = time.perf_counter()
    source = open_zarr_input(image)
    array = source.array
    dims = block_predictor.spatial_dims
    if array.ndim not in (dims, dims + 1):
        raise InputError(f"image of shape {tuple(array.shape)} is neither {dims}-D nor channel-first {dims + 1}-D")
    spatial = tuple(int(s) for s in array.shape[-dims:])
    block_predictor = block_predictor.for_volume(spatial)
    workers = len(client.nthreads()) if client is not None else 1
    block_shape, chunks = _block_layout(block_predictor, spatial, output_chunks(array, spatial), block_shape, max_block_voxels, workers)
    blocks = block_grid(spatial, block_shape, block_predictor.halo)
    plan = {
        "shape": spatial,
        "block_shape": block_shape,
        "chunks": chunks,
        "halo": block_predictor.halo,
        "dtype": str(block_predictor.lut.dtype),
        "model": model_token(block_predictor),
        "probabilities": probabilities is not None,
    }
    output = create_block_output(
        out, source, spatial, block_predictor.lut.dtype, chunks, plan,
        probabilities=probabilities, num_classes=block_predictor.num_classes, resume=resume,
    )
    results = predict_blocks(
        block_predictor, array, output.labels, blocks, client=client, probabilities_out=output.probabilities,
        markers=output.markers, skip=output.resumed, threads=threads, retries=retries, progress=progress,
    )
    missing = {b.name for b in blocks} - output.finished()
    if missing:  # a bug, not bad input: every task returned but marks are missing
        raise RuntimeError(f"{len(missing)} blocks have no completion mark, e.g. {sorted(missing)[:3]}")
    output.commit()
    return ZarrPrediction(
        shape=spatial,
        block_shape=block_shape,
        chunks=chunks,
        halo=tuple(block_predictor.halo),
        blocks_total=len(blocks),
        blocks_resumed=len(output.resumed),
        results=tuple(results),
        seconds=time.perf_counter() - started,
    )


def _block_layout(
    block_predictor: Any,
    spatial: tuple[int, ...],
    chunks: tuple[int, ...],
    block_shape: Sequence[int] | None,
    max_block_voxels: int | None,
    workers: int,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(block shape, output chunks): the blocks given or chosen, the chunks shrunk to divide them."""
    if block_shape is None:
        block_shape = choose_block_shape(
            spatial, chunks, block_predictor.halo, max_block_voxels or DEFAULT_MAX_BLOCK_VOXELS, min_blocks=workers,
            work=block_predictor.work,
        )
    block_shape = tuple(int(b) for b in block_shape)
    if len(block_shape) != len(spatial) or any(b < 1 for b in block_shape):
        raise InputError(f"block size {block_shape} must have {len(spatial)} positive values")
    # Blocks are whole chunks: shrink the chunks to divide the blocks where they do not.
    return block_shape, tuple(int(np.gcd(c, b)) if b < s else c for c, b, s in zip(chunks, block_shape, spatial))


@contextlib.contextmanager
def local_client(
    workers: int, threads_per_worker: int = 1, memory_limit: str | int | None = "auto", torch_threads: int | None = None
) -> Iterator[Any]:
    """A ``distributed.Client`` on a new LocalCluster of ``workers`` processes; both close on exit.

    Each task's torch (OpenMP, MKL) uses ``torch_threads`` threads, by default this
    machine's cores shared among the workers' task threads, so nothing is oversubscribed.
    """
    import dask

    distributed = _import_distributed()
    threads = torch_threads or max(1, available_cores() // (int(workers) * int(threads_per_worker)))
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which turns off glibc's adaptive
    # mmap threshold: every large tensor is then a fresh mmap and page-faults anew; and with
    # one OpenMP thread, whatever the cores.
    environ = {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()}
    environ.update({name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    settings = {
        "distributed.nanny.pre-spawn-environ": environ,
        # The statistical profiler samples every task thread's stack each 10 ms: ~6 % of a block's CPU time.
        "distributed.worker.profile.enabled": False,
    }
    with dask.config.set(settings), _environ(environ, unset=("MALLOC_TRIM_THRESHOLD_",)), distributed.LocalCluster(
        n_workers=int(workers), threads_per_worker=int(threads_per_worker), processes=True,
        memory_limit=memory_limit, dashboard_address=None,
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _environ(values: dict[str, str], unset: Sequence[str] = ()) -> Iterator[None]:
    """``os.environ`` with ``values`` set and ``unset`` removed, restored on exit: nannies take a
    variable from the environment over their settings, and write theirs into it."""
    saved = {name: os.environ.get(name) for name in (*values, *unset)}
    os.environ.update(values)
    for name in unset:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def available_cores() -> int:
    """CPU cores this process may run on (its affinity: a batch job's share, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def grid_summary(shape: Sequence[int], block_shape: Sequence[int]) -> str:
    """E.g. "4 blocks (1×2×2) of 256×512×512"."""
    grid = grid_shape(shape, block_shape)
    return f"{int(np.prod(grid))} blocks ({'×'.join(map(str, grid))}) of {'×'.join(map(str, block_shape))}"
