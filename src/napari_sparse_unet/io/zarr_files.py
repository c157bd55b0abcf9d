"""zarr and OME-Zarr for block-wise prediction: open the input, create resumable outputs.

Inputs are zarr v2 or v3 arrays, a group holding one array, or an OME-Zarr image
(0.4 on zarr v2, 0.5 on zarr v3), of which the full-resolution level is used.
Outputs take the input's zarr format.  For an OME-Zarr input the labels are an
OME-Zarr *labels image* (``image-label`` metadata, one level "0", the input's
axes without the channel axis and its level-0 scale), so napari-ome-zarr and
other viewers open it over the image; otherwise a plain array with a ``spacing``
attribute, as :func:`napari_sparse_unet.io.create_output` writes.

Outputs are built in a fixed folder beside the target, ``.NAME.partial``, which
becomes the target only when every block is written.  Finished blocks are
recorded as empty files in that folder, so an interrupted run can be resumed.

Axis order: (Z, Y, X) or (C, Z, Y, X) arrays, spacing (Z, Y, X).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .volumes import VolumeIOError, _import_optional, _replace_dir, _spacing_tuple

MARKERS = ".napari-sparse-unet-blocks"
PLAN = "plan.json"
# Output chunks when the input's are unknown or unsuitable: ~4 MB of uint8.
DEFAULT_CHUNKS = (64, 256, 256)


@dataclass(frozen=True)
class ZarrInput:
    """An opened input: the array and what the output needs to match it.

    Attributes:
        array: the zarr array, (Z, Y, X) or (C, Z, Y, X) (2-D: (Y, X) or (C, Y, X)).
        spacing: spatial voxel size in array order, or None.
        zarr_format: 2 or 3.
        ome: the OME-Zarr multiscale entry of the input (axes, datasets...) or None.
        ome_version: "0.4" or "0.5" for OME-Zarr input.
    """

    array: Any
    spacing: tuple[float, ...] | None
    zarr_format: int
    ome: dict[str, Any] | None = None
    ome_version: str | None = None


def _ome_attributes(attrs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The OME attributes of a group and their version (0.5 nests them under "ome")."""
    if isinstance(attrs.get("ome"), dict):
        return attrs["ome"], str(attrs["ome"].get("version", "0.5"))
    multiscales = attrs.get("multiscales")
    if multiscales:
        return attrs, str(multiscales[0].get("version", "0.4"))
    return attrs, None


def open_zarr_input(path: str | Path) -> ZarrInput:
    """Open a zarr array, a one-array group or an OME-Zarr image (level 0) for reading."""
    zarr = _import_optional("zarr", "zarr")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: '{path}'")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise VolumeIOError(f"cannot read '{path}' as zarr: {exc}") from exc
    spacing = None
    ome = version = None
    if not hasattr(node, "shape"):
        attrs, version = _ome_attributes(dict(node.attrs))
        if version is not None:
            ome = attrs["multiscales"][0]
            axes = [a["name"] if isinstance(a, dict) else str(a) for a in ome.get("axes", [])]
            if any(a not in ("c", "z", "y", "x") for a in axes):
                raise VolumeIOError(f"OME-Zarr image '{path}' has axes {axes}; only c, z, y, x are supported")
            if "c" in axes and axes.index("c") != 0:
                raise VolumeIOError(f"OME-Zarr image '{path}' has axes {axes}; the channel axis must come first")
            dataset = ome["datasets"][0]
            for transform in dataset.get("coordinateTransformations", []):
                if transform.get("type") == "scale":
                    spacing = transform["scale"]
            node = node[dataset["path"]]
        else:
            names = sorted(name for name, _ in node.arrays())
            if len(names) != 1:
                raise VolumeIOError(f"zarr group '{path}' holds {len(names)} arrays {names}: point to one of them")
            node = node[names[0]]
    if node.attrs.get("spacing") is not None:
        spacing = node.attrs["spacing"]
    spatial = min(3, len(node.shape))
    return ZarrInput(
        array=node,
        spacing=_spacing_tuple(spacing, spatial) if spacing is not None else None,
        zarr_format=int(node.metadata.zarr_format),
        ome=ome,
        ome_version=version,
    )


def output_chunks(source: Any, spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """Spatial chunks for the outputs: the input's where they are a sensible size, else ~4 MB slabs."""
    dims = len(spatial_shape)
    chunks = tuple(int(c) for c in getattr(source, "chunks", ())[-dims:]) if hasattr(source, "chunks") else ()
    voxels = int(np.prod(chunks)) if len(chunks) == dims else 0
    if not 2**16 <= voxels <= 2**24:  # 64 K .. 16 M voxels per chunk
        chunks = DEFAULT_CHUNKS[-dims:]
    return tuple(min(int(c), int(s)) for c, s in zip(chunks, spatial_shape))


def partial_path(target: str | Path) -> Path:
    """The fixed folder beside ``target`` where its output is built (and resumed)."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


@dataclass
class BlockOutput:
    """Labels (and probabilities) being written block by block into ``.NAME.partial`` folders.

    Attributes:
        labels: the writable labels array, (Z, Y, X).
        probabilities: optional writable (K, Z, Y, X) float32 array.
        markers: folder of "<block>.done" files, one per finished block.
        resumed: names of the blocks already finished when it was opened.
    """

    target: Path
    labels: Any
    probabilities: Any = None
    probabilities_target: Path | None = None
    markers: Path = Path()
    resumed: set[str] = field(default_factory=set)

    def finished(self) -> set[str]:
        return {p.name[: -len(".done")] for p in self.markers.glob("*.done")}

    def commit(self) -> None:
        """Move the finished outputs into place (replacing what was there)."""
        shutil.rmtree(self.markers)
        if self.probabilities_target is not None:
            _replace_dir(partial_path(self.probabilities_target), self.probabilities_target)
        _replace_dir(partial_path(self.target), self.target)


def mark_finished(markers: str | Path, name: str) -> None:
    """Record block ``name`` as complete (after all its chunks are written)."""
    (Path(markers) / f"{name}.done").touch()


def create_block_output(
    target: str | Path,
    source: ZarrInput,
    spatial_shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    plan: dict[str, Any],
    *,
    probabilities: str | Path | None = None,
    num_classes: int = 0,
    resume: bool = False,
) -> BlockOutput:
    """Create (or, with ``resume``, reopen) the partial outputs for a block-wise prediction.

    ``plan`` (shapes, blocks, model...) is saved with the markers; resuming with a
    different plan would mix two predictions, so it is refused.
    """
    zarr = _import_optional("zarr", "zarr")
    target = Path(target)
    folder = partial_path(target)
    markers = folder / MARKERS
    plan = json.loads(json.dumps(plan))  # tuples -> lists, as read back
    prob_folder = partial_path(probabilities) if probabilities is not None else None
    if resume and (markers / PLAN).is_file() and (prob_folder is None or prob_folder.is_dir()):
        saved = json.loads((markers / PLAN).read_text(encoding="utf-8"))
        if saved != plan:
            changed = sorted(k for k in set(saved) | set(plan) if saved.get(k) != plan.get(k))
            raise VolumeIOError(
                f"cannot resume '{target}': the unfinished run in '{folder}' used other settings ({', '.join(changed)}); "
                "run without --resume to start again"
            )
        labels = zarr.open_array(str(_labels_path(folder, source)), mode="r+")
        probs = zarr.open_array(str(prob_folder), mode="r+") if prob_folder is not None else None
        output = BlockOutput(target, labels, probs, Path(probabilities) if probabilities else None, markers)
        output.resumed = output.finished()
        return output
    for stale in (folder, prob_folder):
        if stale is not None and stale.exists():
            shutil.rmtree(stale)
    spatial_shape = tuple(int(s) for s in spatial_shape)
    labels = _create_labels(folder, source, spatial_shape, np.dtype(dtype), tuple(chunks))
    probs = None
    if prob_folder is not None:
        probs = zarr.open_array(
            str(prob_folder), mode="w", shape=(int(num_classes), *spatial_shape), dtype="float32",
            chunks=(int(num_classes), *chunks), fill_value=0, zarr_format=source.zarr_format,
        )
        if source.spacing is not None:
            probs.attrs["spacing"] = list(source.spacing)
    markers.mkdir()
    (markers / PLAN).write_text(json.dumps(plan, indent=1), encoding="utf-8")
    return BlockOutput(target, labels, probs, Path(probabilities) if probabilities else None, markers)


def _labels_path(folder: Path, source: ZarrInput) -> Path:
    return folder / "0" if source.ome is not None else folder


def _create_labels(folder: Path, source: ZarrInput, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...]) -> Any:
    zarr = _import_optional("zarr", "zarr")
    kwargs: dict[str, Any] = {"shape": shape, "dtype": dtype, "chunks": chunks, "fill_value": 0, "zarr_format": source.zarr_format}
    if source.ome is None:
        labels = zarr.open_array(str(folder), mode="w", **kwargs)
        if source.spacing is not None:
            labels.attrs["spacing"] = list(source.spacing)
        return labels
    multiscale = _labels_multiscale(source.ome, len(shape))
    group = zarr.open_group(str(folder), mode="w", zarr_format=source.zarr_format)
    image_label = {"version": source.ome_version, "source": {"image": "../"}}
    if source.zarr_format == 3:
        axis_names = [a["name"] for a in multiscale["axes"]]
        group.attrs["ome"] = {"version": source.ome_version, "multiscales": [multiscale], "image-label": image_label}
        return group.create_array("0", dimension_names=axis_names, **{k: v for k, v in kwargs.items() if k != "zarr_format"})
    group.attrs["multiscales"] = [{"version": source.ome_version, **multiscale}]
    group.attrs["image-label"] = image_label
    return group.create_array("0", **{k: v for k, v in kwargs.items() if k != "zarr_format"})


def _labels_multiscale(ome: dict[str, Any], dims: int) -> dict[str, Any]:
    """The input's multiscale entry for a one-level labels image: spatial axes, level-0 transforms."""
    axes = list(ome.get("axes") or [{"name": n, "type": "space"} for n in "zyx"[-dims:]])
    axes = [a if isinstance(a, dict) else {"name": str(a), "type": "space"} for a in axes]
    keep = [i for i, a in enumerate(axes) if a["name"] != "c"][-dims:]

    def spatial(transforms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for t in transforms:
            values = t.get("scale", t.get("translation"))
            if values is None:
                continue  # a "path" transform cannot be carried over
            key = "scale" if "scale" in t else "translation"
            out.append({"type": t["type"], key: [values[i] for i in keep]})
        return out

    entry: dict[str, Any] = {
        "name": "labels",
        "axes": [axes[i] for i in keep],
        "datasets": [{"path": "0", "coordinateTransformations": spatial(ome["datasets"][0].get("coordinateTransformations", []))}],
    }
    if ome.get("coordinateTransformations"):
        entry["coordinateTransformations"] = spatial(ome["coordinateTransformations"])
    return entry


def write_ome_image(
    path: str | Path,
    array: Any,
    *,
    spacing: Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    zarr_format: int = 3,
) -> Any:
    """Write ``array`` ((Z, Y, X) or (C, Z, Y, X)) as a one-level OME-Zarr image (0.5 on v3, 0.4 on v2).

    For test fixtures and benchmarks; the array is copied chunk by chunk along the first spatial axis.
    """
    zarr = _import_optional("zarr", "zarr")
    shape = tuple(int(s) for s in array.shape)
    names = ["c", "z", "y", "x"][-len(shape):] if len(shape) == 4 else ["z", "y", "x"][-len(shape):]
    axes = [{"name": n, "type": "channel" if n == "c" else "space"} for n in names]
    scale = [1.0] * (len(shape) - len(spacing or ())) + [float(s) for s in spacing or ()]
    if len(scale) != len(shape):
        scale = [1.0] * len(shape)
    multiscale = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    if zarr_format == 3:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    out = group.create_array(
        "0", shape=shape, dtype=array.dtype, chunks=tuple(chunks) if chunks else shape, fill_value=0,
        **({"dimension_names": names} if zarr_format == 3 else {}),
    )
    step = out.chunks[-3] if len(shape) >= 3 else shape[0]
    for start in range(0, shape[-3] if len(shape) >= 3 else shape[0], step):
        index = (Ellipsis, slice(start, start + step), slice(None), slice(None)) if len(shape) >= 3 else slice(start, start + step)
        out[index] = np.asarray(array[index])
    return group
