"""The ``predict`` command's block-wise mode: Dask workers over a chunked zarr.

    napari-sparse-unet predict --model M.pt --image big.zarr --out labels.zarr --workers 4
    napari-sparse-unet predict ... --scheduler tcp://scheduler:8786   # an existing cluster
    napari-sparse-unet predict ... --workers 4 --resume               # continue an interrupted run

Nothing heavy is imported until the mode is used.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator

from ..io import volume_format
from .common import UsageError, fmt_shape, positive_int
from .progress import progress_bar

if TYPE_CHECKING:
    from ..core.checkpoint import SegmentationModel
    from ..core.config import PredictConfig


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the block-wise options to the ``predict`` parser."""
    group = parser.add_argument_group(
        "very large volumes (zarr in and out, block by block; needs the 'distributed' extra)"
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, metavar="N",
                       help="predict on a local Dask cluster of N worker processes")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="predict on an existing dask.distributed cluster: its address (tcp://host:8786) "
                       "or scheduler file (.json)")
    group.add_argument("--block-size", type=positive_int, nargs="+", metavar="N",
                       help="block Z Y X each task predicts, a multiple of the output chunks "
                       "(default: chosen to predict the fewest halo voxels)")
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted block-wise run, skipping the blocks it finished")


def requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for the block-wise mode."""
    return bool(args.workers or args.scheduler or args.block_size or args.resume)


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    if args.workers:
        from ..distributed import local_client

        # N workers share the machine's cores, unless --threads says how many each uses.
        with local_client(args.workers, threads_per_worker=1, torch_threads=args.threads) as client:
            yield client
    elif args.scheduler:
        from ..distributed import _import_distributed

        distributed = _import_distributed()
        kwargs = {"scheduler_file": args.scheduler} if args.scheduler.endswith(".json") else {"address": args.scheduler}
        with distributed.Client(**kwargs) as client:
            yield client
    else:
        yield None


def run(args: argparse.Namespace, model: SegmentationModel, config: PredictConfig) -> int:
    """Predict ``args.image`` into ``args.out`` block by block; returns the exit status."""
    for option, value in (("--image", args.image), ("--out", args.out), ("--probabilities", args.probabilities)):
        if value is not None and volume_format(value) != "zarr":
            raise UsageError(f"{option} {value!r}: block-wise prediction (--workers, --scheduler, --block-size, "
                             "--resume) reads and writes .zarr folders only")
    from ..core.prediction.blockwise import BlockPredictor
    from ..distributed import grid_summary, predict_zarr

    block_predictor = BlockPredictor.from_model(model, config)
    start = time.perf_counter()
    bar = progress_bar(1, "predicting", "block", args.quiet)

    def progress(event: Any) -> None:
        bar.total = event.blocks_total
        bar.update(event.blocks_done - bar.n)

    try:
        with _client(args) as client:
            where = "this process" if client is None else f"{len(client.nthreads())} Dask workers"
            result = predict_zarr(
                block_predictor, args.image, args.out, client=client, probabilities=args.probabilities,
                block_shape=tuple(args.block_size) if args.block_size else None, resume=args.resume,
                threads=args.threads, progress=progress,
            )
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: run the same command with --resume to continue where it stopped", file=sys.stderr)
        raise
    bar.close()
    written = f" and {args.probabilities}" if args.probabilities else ""
    resumed = f", {result.blocks_resumed} resumed" if result.blocks_resumed else ""
    print(
        f"wrote {args.out}{written} ({fmt_shape(result.shape)}, {grid_summary(result.shape, result.block_shape)}"
        f"{resumed}, halo {fmt_shape(result.halo)}, {time.perf_counter() - start:.1f} s on {where})"
    )
    return 0

