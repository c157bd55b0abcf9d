"""The input rules: what training and prediction accept, decided once, with one message each.

The trainer, the predictor, the command line and the napari widget all call
these functions, so they agree on what is valid and word every refusal the
same way.  Rules raise :class:`~.errors.InputError` or
:class:`~.errors.ConfigError` (both :class:`~.errors.UserInputError`); the
``*_problem`` functions return the message instead, for front ends that show
it without raising (the widget's "what is missing" line).

No torch here: the command line checks its input before importing it.
Axis order: images are (Z, Y, X) / (C, Z, Y, X) or 2-D (Y, X) / (C, Y, X);
annotations have the spatial shape, 0 = not painted, 1 = background, 2.. = classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import annotation_counts, check_finite
from .errors import ConfigError, InputError

if TYPE_CHECKING:
    from .checkpoint import SegmentationModel

#: Device names the settings, the command line and the widget accept; ``auto``
#: picks CUDA, then Apple's MPS, then the CPU.
DEVICE_NAMES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def _shape(array: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in array.shape)


# --------------------------------------------------------------------------- devices


def check_device_name(name: str) -> str:
    """``name`` if it is one of :data:`DEVICE_NAMES`; ConfigError otherwise."""
    if name not in DEVICE_NAMES:
        raise ConfigError(f"unknown device {name!r}; use {', '.join(DEVICE_NAMES[:-1])} or {DEVICE_NAMES[-1]}")
    return name


# --------------------------------------------------------------------------- images


def as_channel_first(image: Any, spatial_dims: int | None = None) -> Any:
    """Return ``image`` as (C, *spatial) without copying.

    Args:
        image: (Z, Y, X), (C, Z, Y, X), (Y, X) or (C, Y, X) array-like.
        spatial_dims: 2 or 3 when known (from an annotation); otherwise 2-D
            and 3-D inputs are taken as single-channel.
    """
    shape = _shape(image)
    ndim = len(shape)
    if ndim < 2 or ndim > 4:
        raise InputError(
            f"image has {ndim} dimensions {shape}, but a 3-D volume (Z, Y, X), a 2-D image (Y, X) "
            "or either with a leading channel axis was expected"
        )
    if spatial_dims is None:
        spatial_dims = min(ndim, 3)
    if ndim == spatial_dims:
        return image[np.newaxis]
    if ndim == spatial_dims + 1:
        return image
    raise InputError(
        f"image of shape {shape} does not fit {spatial_dims}-D data: expected {spatial_dims} spatial axes "
        "with an optional leading channel axis"
    )


class _ChannelFirst:
    """(1, *spatial) read-only view of a single-channel array-like (zarr has no ``np.newaxis`` indexing)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = (1, *_shape(array))
        self.ndim = len(self.shape)
        self.dtype = array.dtype

    def __getitem__(self, key: tuple) -> np.ndarray:
        # All channels, then spatial slices: the reads prediction makes.
        return np.asarray(self.array[key[1:]])[np.newaxis]


def model_image_problem(image_shape: Sequence[int], spatial_dims: int, in_channels: int) -> str | None:
    """Why an image of ``image_shape`` cannot go through a model, or None when it can.

    The image is (*spatial) for a single-channel model or (C, *spatial).
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == spatial_dims and in_channels == 1:
        return None
    if len(shape) == spatial_dims + 1 and shape[0] == in_channels:
        return None if min(shape[1:]) >= 1 else f"image of shape {shape} is empty"
    axes = "Z, Y, X" if spatial_dims == 3 else "Y, X"
    if in_channels == 1:
        expected = f"a {spatial_dims}-D {'volume' if spatial_dims == 3 else 'image'} ({axes}) or (1, {axes})"
    else:
        expected = f"({in_channels}, {axes}): {in_channels} channels first, then {spatial_dims} spatial axes"
    if len(shape) == spatial_dims + 1:
        seen = f"{shape[0]} channel(s) of {spatial_dims}-D data"
    elif len(shape) == spatial_dims:
        seen = f"1 channel of {spatial_dims}-D data"
    else:
        seen = f"{len(shape)} axes"
    return f"image of shape {shape} ({seen}) does not fit the model, which expects {expected}"


def image_for_model(image: Any, spatial_dims: int, in_channels: int) -> Any:
    """``image`` as (C, *spatial) for a model of ``spatial_dims`` and ``in_channels``.

    Raises:
        InputError: the image does not fit the model, or holds NaN/Inf.
    """
    problem = model_image_problem(_shape(image), spatial_dims, in_channels)
    if problem:
        raise InputError(problem)
    check_finite(image)
    if len(image.shape) == spatial_dims:
        image = image[np.newaxis] if isinstance(image, np.ndarray) else _ChannelFirst(image)
    return image


# ------------------------------------------------------------ channels from separate images


def channels_problem(names: Sequence[str], shapes: Sequence[Sequence[int]]) -> str | None:
    """Why images (layers or files) named ``names`` cannot be the channels of one input, or None.

    Each must be one single-channel 2-D (Y, X) or 3-D (Z, Y, X) image, all of the
    same shape (co-registered), and none picked twice.
    """
    names, shapes = [str(n) for n in names], [tuple(int(s) for s in shape) for shape in shapes]
    if not names:
        return "no channel picked: pick at least one image"
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"'{twice[0]}' is picked twice as a channel; pick each image once"
    for name, shape in zip(names, shapes):
        if len(shape) not in (2, 3):
            return (
                f"channel '{name}' has shape {shape}, but each channel must be one 2-D (Y, X) or "
                "3-D (Z, Y, X) single-channel image"
            )
    for name, shape in zip(names[1:], shapes[1:]):
        if shape != shapes[0]:
            return (
                f"channel '{name}' has shape {shape} but '{names[0]}' has {shapes[0]}: "
                "channels must be co-registered images of the same shape"
            )
    return None


def stack_channels(arrays: Sequence[Any], names: Sequence[str]) -> np.ndarray:
    """Separate images as one (C, *spatial) array, in the given order; InputError if they do not fit.

    A single image is returned as (1, *spatial) without copying; several are copied into one array.
    """
    problem = channels_problem(names, [_shape(a) for a in arrays])
    if problem:
        raise InputError(problem)
    if len(arrays) == 1:
        return np.asarray(arrays[0])[np.newaxis]
    return np.stack([np.asarray(a) for a in arrays])


def model_channels_problem(model_channels: Sequence[str], given: Sequence[str]) -> str | None:
    """Why images named ``given`` (one per channel) cannot feed a model trained on ``model_channels``, or None."""
    if len(given) == len(model_channels):
        return None
    return (
        f"the model was trained on {len(model_channels)} channel(s) ({', '.join(model_channels)}) but "
        f"{len(given)} image(s) are given ({', '.join(repr(str(g)) for g in given)}): give one image per "
        "channel, in that order"
    )


# ----------------------------------------------------------------------- annotations


def annotation_problem(counts: Mapping[int, int]) -> str | None:
    """What must still be painted before training can start (None when enough is).

    ``counts`` maps painted values (0 excluded) to voxel counts.
    """
    negative = sorted(v for v in counts if v < 0)
    if negative:
        return f"labels must be ≥ 0, found {negative}"
    if not counts:
        return (
            "nothing painted yet (no annotated voxel): paint background (label 1) and at least one class "
            "(label 2 or more) on a few slices"
        )
    if 1 not in counts:
        return (
            f"only classes {sorted(counts)} are painted: paint some background (label 1) too, "
            "so the network learns what is not an object"
        )
    if len(counts) < 2:
        return "only background (label 1) is painted: paint at least one class (label 2 or more) too"
    return None


def check_annotation(counts: Mapping[int, int]) -> None:
    """Raise :class:`InputError` with :func:`annotation_problem`'s message, if any."""
    problem = annotation_problem(counts)
    if problem:
        raise InputError(problem)


def annotation_shape_problem(
    image_spatial_shape: Sequence[int],
    annotation_shape: Sequence[int],
    image_name: str = "the image",
    annotation_name: str = "the annotation",
) -> str | None:
    """Why an annotation does not go with an image (None when the spatial shapes agree)."""
    image_spatial_shape, annotation_shape = tuple(image_spatial_shape), tuple(annotation_shape)
    if image_spatial_shape == annotation_shape:
        return None
    return (
        f"{image_name} has spatial shape {image_spatial_shape} but {annotation_name} has shape "
        f"{annotation_shape}: they must have the same spatial size"
    )


def check_training_pair(image: Any, annotation: Any) -> tuple[Any, np.ndarray, dict[int, int]]:
    """Check one training pair; return (image (C, *spatial), annotation (*spatial), painted counts).

    The annotation is returned as an integer numpy array (the image keeps its
    dtype and is not copied); the counts come from one scan of it.
    """
    _check_labels_array(annotation)
    image_cf = as_channel_first(image, spatial_dims=len(_shape(annotation)))
    annotation, counts = check_annotation_of(annotation, _shape(image_cf)[1:])
    check_finite(image_cf)
    return image_cf, annotation, counts


def _check_labels_array(annotation: Any) -> None:
    ann_shape = _shape(annotation)
    if len(ann_shape) not in (2, 3):
        raise InputError(
            f"annotation has {len(ann_shape)} dimensions {ann_shape}, but a 3-D (Z, Y, X) or 2-D (Y, X) "
            "labels array was expected"
        )
    ann_dtype = np.dtype(annotation.dtype)
    if not (np.issubdtype(ann_dtype, np.integer) or ann_dtype == np.bool_):
        raise InputError(f"annotation has dtype {ann_dtype}; integer labels were expected")


def check_annotation_of(annotation: Any, spatial_shape: Sequence[int]) -> tuple[np.ndarray, dict[int, int]]:
    """Check an annotation of an image with this spatial shape; return (annotation as numpy, painted counts).

    The rules of :func:`check_training_pair` for the annotation alone: a training
    job checks an annotation painted while it runs with them.
    """
    _check_labels_array(annotation)
    problem = annotation_shape_problem(spatial_shape, _shape(annotation))
    if problem:
        raise InputError(problem)
    annotation = np.asarray(annotation)
    counts = annotation_counts(annotation)
    check_annotation(counts)
    return annotation, counts


def painted_values(counts: Sequence[Mapping[int, int]]) -> tuple[int, ...]:
    """Sorted values painted in any of the annotations (by their counts); checked, so 1 comes first."""
    total: dict[int, int] = {}
    for one in counts:
        for value, count in one.items():
            total[value] = total.get(value, 0) + count
    check_annotation(total)
    return tuple(sorted(total))


def finetune_problem(model: SegmentationModel, image_cf_shape: Sequence[int], values: Sequence[int]) -> str | None:
    """Why ``model`` cannot be fine-tuned on a (C, *spatial) image painted with ``values`` (None if it can)."""
    dims, channels = len(image_cf_shape) - 1, int(image_cf_shape[0])
    if model.spatial_dims != dims or model.in_channels != channels:
        return (
            f"the model is for {model.spatial_dims}-D images with {model.in_channels} channel(s), "
            f"but the image is {dims}-D with {channels} channel(s)"
        )
    return unknown_labels_problem(values, model.class_values)


def unknown_labels_problem(values: Sequence[int], known: Sequence[int]) -> str | None:
    """Why painted ``values`` cannot train a model of the ``known`` label values (None if they can)."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        return (
            f"the annotation uses labels {unknown} that the model does not know (its labels are "
            f"{list(known)}); train a new model to add classes"
        )
    return None


# ---------------------------------------------------------------- sizes and spacing


def parse_patch_size(text: str, spatial_dims: int) -> tuple[int, ...] | None:
    """'auto' / '' -> None (chosen from the data); '48' -> isotropic; '16, 64, 64', '16x64x64' or '16 64 64' -> a tuple."""
    text = text.strip().lower()
    if text in ("", "auto"):
        return None
    parts = [p for p in text.replace("×", ",").replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"patch size {text!r} is not 'auto' or whole numbers like 32,64,64") from None
    if len(values) == 1:
        values = values * spatial_dims
    if len(values) != spatial_dims or min(values) < 1:
        raise ConfigError(f"patch size {text!r} needs {spatial_dims} positive numbers for {spatial_dims}-D images")
    return values


def check_network_size(name: str, size: Sequence[int], multiple: Sequence[int]) -> tuple[int, ...]:
    """``size`` (a training patch or a prediction tile) if the network can take it; InputError otherwise."""
    size, multiple = tuple(int(s) for s in size), tuple(int(m) for m in multiple)
    if len(size) != len(multiple) or any(s % m for s, m in zip(size, multiple)):
        raise InputError(
            f"{name} {size} must have {len(multiple)} values, each a multiple of {multiple} "
            "(the network down-samples by these factors)"
        )
    return size


def check_spacing(spacing: Sequence[float] | None, spatial_dims: int) -> tuple[float, ...] | None:
    """``spacing`` as floats, one positive finite number per spatial axis (None stays None)."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if len(values) != spatial_dims or any(not math.isfinite(s) or s <= 0 for s in values):
        raise InputError(f"spacing {values} must hold {spatial_dims} positive numbers, one per spatial axis")
    return values


# ------------------------------------------------------------ instances, uncertainty


def check_instance_settings(
    method: str, methods: Sequence[str], landscape: str, landscapes: Sequence[str], min_size: int, seed_depth: float | None
) -> None:
    """ConfigError unless the instance method, landscape, minimum size and seed depth can work."""
    if method not in methods:
        raise ConfigError(f"unknown instance method {method!r}; use {' or '.join(methods)}")
    if landscape not in landscapes:
        raise ConfigError(f"unknown watershed landscape {landscape!r}; use {' or '.join(landscapes)}")
    if int(min_size) != min_size or min_size < 0:
        raise ConfigError(f"minimum instance size must be a whole number of voxels >= 0, got {min_size}")
    if seed_depth is not None and not (seed_depth > 0 and math.isfinite(seed_depth)):
        raise ConfigError(f"seed depth must be a positive number, got {seed_depth}")


def check_instance_class(class_value: int, class_values: Sequence[int]) -> int:
    """Index of ``class_value`` among the model's ``class_values`` (1 = background first).

    Raises:
        InputError: the model has no such class, or it is the background.
    """
    classes = [int(v) for v in class_values]
    foreground = ", ".join(str(v) for v in classes[1:]) or "none"
    if class_value == 1 or class_value == 0:
        raise InputError(f"instances of class {class_value}: that is the background; choose a class value ({foreground})")
    if class_value not in classes:
        raise InputError(f"instances of class {class_value}: the model has no such class; its classes are {foreground}")
    return classes.index(class_value)


def check_uncertainty_measure(measure: str, measures: Sequence[str]) -> str:
    """``measure`` if it is one of ``measures``; ConfigError otherwise."""
    if measure not in measures:
        raise ConfigError(f"unknown uncertainty measure {measure!r}; use {' or '.join(measures)}")
    return measure
