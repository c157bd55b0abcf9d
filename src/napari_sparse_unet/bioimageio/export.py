"""Export a trained model as a bioimage.io model package (a zip other consumers run).

The package holds TorchScript weights of
:class:`~.network.PackagedNetwork`: the input
normalisation, the mirrored halo the filter bank needs and the U-Net, giving
per-class probabilities, so bioimage.io consumers (bioimageio.core, deepImageJ,
ilastik, ...) run it without this plugin.  It also carries this plugin's own
checkpoint as an attachment, which is what :meth:`SegmentationModel.load`
reads back (``predict --model M.zip``, the widget's Load).

Tensors are (B, C, Z, Y, X) (2-D models: (B, C, Y, X)).  Needs the optional
``bioimageio`` extra (``bioimageio.spec``); everything is validated offline:
every file is local and the description holds no URL.
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from ..core.checkpoint import PACKAGE_CHECKPOINT, SegmentationModel
from ..core.errors import DependencyError, InputError, missing_package
from ..core.files import atomic_file
from .allocator import returning_freed_memory
from .network import TileRules, make_test_input, tile_rules, torchscript_network

AXES = ("z", "y", "x")
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
CITATION = "Çiçek et al. 2016, 3D U-Net: learning dense volumetric segmentation from sparse annotation (MICCAI)"
CITATION_DOI = "10.1007/978-3-319-46723-8_49"


# --------------------------------------------------------------------------- export


def _spec() -> Any:
    try:
        import bioimageio.spec  # noqa: F401
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise DependencyError(
            missing_package("exporting to bioimage.io", "bioimageio.spec", "pip install 'napari-sparse-unet[bioimageio]'")
        ) from None
    return v0_5


def _readme(model: SegmentationModel, name: str, rules: TileRules, names: Sequence[str]) -> str:
    dims = AXES[-model.spatial_dims :]
    classes = "\n".join(f"| {k} | {v} | {n} |" for k, (v, n) in enumerate(zip(model.class_values, names)))
    return f"""# {name}

A {model.spatial_dims}-D U-Net (Çiçek et al. 2016) trained with napari-sparse-unet on a few painted slices.

{model.describe()}

## Input and output

- Input `{INPUT_ID}`: raw intensities, axes (batch, channel, {", ".join(dims)}), float32, {model.in_channels} channel(s).
  The network normalises them itself (the intensity mapping fitted on its training images).
- Output `{OUTPUT_ID}`: per-class probabilities (batch, class, {", ".join(dims)}), the same spatial size as the input.
  The label of a voxel is the class with the highest probability.
- Spatial sizes: at least {rules.minimum}, in steps of {rules.step} ({", ".join(dims)}).
  When tiling, overlap tiles and drop a halo of {rules.halo} voxels per side.
- Voxel spacing at training: {model.spacing or "not recorded (isotropic)"}.

| class index | annotation value | name |
|---|---|---|
{classes}

## Use

In napari-sparse-unet, load this zip like a `.pt` model (widget: Load model) or
`napari-sparse-unet predict --model this.zip --image IMG --out labels.tif`; it reads the
attached `{PACKAGE_CHECKPOINT}` and predicts with overlapping, blended tiles.
Other bioimage.io consumers run the TorchScript weights.

## Validation

The test input is a crop of the image given at export; the test output is this network's
output on it. Trained on sparse annotations: check its predictions on volumes like yours
(for example Dice against a few fully painted slices) before relying on it.
"""


def _cover(path: Path, test_in: np.ndarray, test_out: np.ndarray) -> None:
    """A PNG: the middle plane of the test input (grey) beside its arg-max classes (colours)."""
    import imageio.v3 as iio

    plane = tuple(s // 2 for s in test_in.shape[2:-2])
    grey = test_in[(0, 0, *plane)]
    lo, hi = np.percentile(grey, (0.5, 99.5))
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    classes = np.argmax(test_out[(0, slice(None), *plane)], axis=0)
    palette = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                        [145, 30, 180], [70, 240, 240], [240, 50, 230]], np.uint8)
    left = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    right = palette[classes % len(palette)]
    image = np.concatenate([left, right], axis=1)
    repeat = max(1, 256 // image.shape[0])  # consumers show covers at about 256 pixels high
    iio.imwrite(path, np.repeat(np.repeat(image, repeat, axis=0), repeat, axis=1))


def _tensor(kind: Any, tensor_id: str, description: str, axes: list[Any], files: dict[str, Path], role: str, **fields: Any) -> Any:
    """An input or output tensor description with its test (``.npy``) and sample (``.tif``) files."""
    spec = _spec()
    return kind(
        id=spec.TensorId(tensor_id),
        description=description,
        axes=axes,
        test_tensor=spec.FileDescr(source=files[f"test_{role}.npy"]),
        sample_tensor=spec.FileDescr(source=files[f"sample_{role}.tif"]),
        **fields,
    )


def build_description(
    model: SegmentationModel,
    folder: Path,
    image: Any,
    *,
    name: str,
    authors: Sequence[str],
    license: str,
) -> Any:
    """Write the package's files into ``folder`` and return its ``ModelDescr`` (bioimage.io format 0.5)."""
    spec = _spec()
    rules = tile_rules(model)
    test_in = make_test_input(model, image, rules)
    scripted = torchscript_network(model, torch.from_numpy(test_in))
    with torch.no_grad():
        test_out = scripted(torch.from_numpy(test_in)).numpy()
    names = ("test_input.npy", "test_output.npy", "sample_input.tif", "sample_output.tif", "weights.torchscript.pt", "README.md", "cover.png")
    files = {key: folder / key for key in names}
    np.save(files["test_input.npy"], test_in)
    np.save(files["test_output.npy"], test_out)
    # Sample tensors are for people and viewers (model zoo pages, FAIR metadata): the same arrays as TIFF,
    # the probabilities as percent in uint8 (a quarter of the size; the .npy above is the exact one).
    tifffile.imwrite(files["sample_input.tif"], test_in)
    tifffile.imwrite(files["sample_output.tif"], np.round(test_out * 100).astype(np.uint8))
    scripted.save(str(files["weights.torchscript.pt"]))
    model.save(folder / PACKAGE_CHECKPOINT)
    class_names = list(model.class_names) or [f"class_{v}" for v in model.class_values]
    files["README.md"].write_text(_readme(model, name, rules, class_names), encoding="utf-8")
    _cover(files["cover.png"], test_in, test_out)

    in_axes, out_axes = _axes(spec, model, rules, class_names)
    try:
        return spec.ModelDescr(
            name=name,
            description=f"{model.spatial_dims}-D U-Net for semantic segmentation of {', '.join(class_names[1:])}, trained on sparse annotations with napari-sparse-unet",
            authors=[spec.Author(name=a) for a in authors],
            cite=[spec.CiteEntry(text=CITATION, doi=spec.Doi(CITATION_DOI))],
            license=license,
            documentation=spec.FileDescr(source=files["README.md"]),
            covers=[spec.FileDescr(source=files["cover.png"])],
            tags=[f"{model.spatial_dims}d", "unet", "semantic-segmentation", "napari-sparse-unet", "pytorch"],
            inputs=[
                _tensor(
                    spec.InputTensorDescr, INPUT_ID, "raw intensities; the network applies its own normalisation", in_axes,
                    files, "input", data=spec.IntervalOrRatioDataDescr(type="float32"),
                    # Mirrored as this plugin mirrors tiles at the volume border.  The mode is given explicitly:
                    # left at its default, bioimageio.spec 0.5.14 writes `pad: {}`, which reads back as constant 0.
                    pad=spec.ReflectPadding(mode="reflect"),
                    preprocessing=[spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))],
                )
            ],
            outputs=[
                _tensor(
                    spec.OutputTensorDescr, OUTPUT_ID, "class probabilities (softmax); the label is the arg-max class", out_axes,
                    files, "output", data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                )
            ],
            weights=spec.WeightsDescr(
                torchscript=spec.TorchscriptWeightsDescr(
                    source=files["weights.torchscript.pt"], pytorch_version=spec.Version(torch.__version__.split("+")[0])
                )
            ),
            attachments=[spec.FileDescr(source=folder / PACKAGE_CHECKPOINT)],
            config={
                "napari-sparse-unet": {
                    "checkpoint": PACKAGE_CHECKPOINT,
                    "version": model.version,
                    "class_values": [int(v) for v in model.class_values],
                    "class_names": class_names,
                    "spacing": None if model.spacing is None else list(model.spacing),
                    "patch_size": list(model.patch_size),
                }
            },
        )
    except ValueError as error:  # pydantic's ValidationError: it names the fields
        raise InputError(f"the bioimage.io description is not valid: {_pydantic_problems(error)}") from None


def _axes(spec: Any, model: SegmentationModel, rules: Any, class_names: list[str]) -> tuple[list[Any], list[Any]]:
    """The input's and output's axes: batch, channel, then the spatial axes with the tile rules and spacing."""
    dims = AXES[-model.spatial_dims :]
    spacing = model.spacing or (1.0,) * model.spatial_dims
    in_axes: list[Any] = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[f"channel{c}" for c in range(model.in_channels)])]
    out_axes: list[Any] = [spec.BatchAxis(), spec.ChannelAxis(channel_names=class_names)]
    for axis, lo, step, halo, scale in zip(dims, rules.minimum, rules.step, rules.halo, spacing):
        in_axes.append(spec.SpaceInputAxis(id=spec.AxisId(axis), size=spec.ParameterizedSize(min=lo, step=step), scale=scale))
        size = spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(axis))
        out_axes.append(spec.SpaceOutputAxisWithHalo(id=spec.AxisId(axis), size=size, halo=halo, scale=scale))
    return in_axes, out_axes


def validate_package(path: str | os.PathLike[str]) -> Any:
    """bioimageio.spec's validation of a package (format and local files, offline); returns its ``ValidationSummary``.

    ``perform_io_checks`` stays on: it hashes the local files and loads the test
    tensors to check them against the axes.  Nothing is downloaded because the
    description names no URL.  The best status without running the weights is
    ``"valid-format"``; :func:`run_consumer_test` gives ``"passed"``.
    """
    _spec()
    from bioimageio.spec import load_description

    return load_description(Path(path), perform_io_checks=True).validation_summary


def consumer_available() -> bool:
    """Whether bioimageio.core (the reference consumer) is installed."""
    return importlib.util.find_spec("bioimageio.core") is not None


def _require_consumer() -> None:
    if not consumer_available():
        raise DependencyError(missing_package("testing a bioimage.io package", "bioimageio.core", "pip install bioimageio.core"))


def run_consumer_test(path: str | os.PathLike[str]) -> Any:
    """bioimageio.core's model test: validates, runs the test input and compares with the test output."""
    _require_consumer()
    from bioimageio.core import test_model

    return test_model(Path(path), weight_format="torchscript", devices=["cpu"])


def _pydantic_problems(error: ValueError) -> str:
    """The first few field errors of a pydantic ``ValidationError``, each cut short, in one line."""
    details = error.errors()[:3] if hasattr(error, "errors") else []
    problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in details] or [str(error)]
    return "; ".join(p if len(p) <= 160 else p[:157] + "..." for p in problems)


def _problems(summary: Any) -> str:
    """The first few errors of a validation summary, in one line."""
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    return "; ".join(errors[:3]) or str(summary.status)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"


def export_model(
    model: SegmentationModel | str | os.PathLike[str],
    out: str | os.PathLike[str],
    image: Any,
    *,
    name: str | None = None,
    authors: Sequence[str] = (),
    license: str = "CC-BY-4.0",
    run_test: bool | None = None,
) -> Any:
    """Write ``model`` as a validated bioimage.io package at ``out`` (a ``.zip``); returns the validation summary.

    Args:
        model: a ``SegmentationModel`` or the path of a saved model.
        image: (Z, Y, X) / (C, Z, Y, X) raw image (e.g. a training image); its centre
            becomes the package's test input.
        name: the model's name, at least 5 characters (default: ``out``'s stem).
        authors: names of the people who trained it (default: the login name).
        license: SPDX identifier of the weights' license.
        run_test: also run bioimageio.core's model test (status ``"passed"``);
            None: when bioimageio.core is installed.

    Nothing is left at ``out`` unless the package validates (and passes the test).
    """
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError(f"bioimage.io package {str(out)!r} must end in .zip")
    if not out.parent.is_dir():
        raise InputError(f"bioimage.io package {str(out)!r}: folder {str(out.parent)!r} does not exist")
    if run_test:
        _require_consumer()
    spec = _spec()
    from bioimageio.spec import save_bioimageio_package

    try:
        spec.LicenseId(license)
    except ValueError:
        raise InputError(f"license {license!r} is not an SPDX license identifier (e.g. CC-BY-4.0, MIT, BSD-3-Clause)") from None
    if not isinstance(model, SegmentationModel):
        model = SegmentationModel.load(model)
    run_test = consumer_available() if run_test is None else run_test
    authors = list(authors) or [_login_name()]
    name = name or (out.stem if len(out.stem) >= 5 else f"sparse U-Net {out.stem}")  # the spec wants 5 characters
    # Tracing and testing the network free large blocks between long-lived ones: give them back.
    with returning_freed_memory(), tempfile.TemporaryDirectory(prefix="bioimageio-") as temp:
        descr = build_description(model, Path(temp), image, name=name, authors=authors, license=license)
        with atomic_file(out) as staged:
            save_bioimageio_package(descr, output_path=staged)
            summary = run_consumer_test(staged) if run_test else validate_package(staged)
            if summary.status not in ("passed", "valid-format"):
                raise InputError(f"the exported package does not validate: {_problems(summary)}")
    return summary
