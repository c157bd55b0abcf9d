"""The adapter between napari layers and the headless core.

This package is the only code that touches napari layer objects.  Data flows one way:
layer data and metadata are copied here on the main thread, the core works on the
copies in a worker thread, and the results come back here to become layer data.

Axis order: napari image data is (Z, Y, X) or (Y, X); a multi-channel image is a
4-D (C, Z, Y, X) layer, an RGB(A) (Y, X, 3|4) layer, or a 3-D layer whose first
axis the user marks as channels.  Everything handed to the core is channel-first,
(C, *spatial).  Annotations and predictions have the spatial shape only.

Label convention: annotation 0 = not painted, 1 = background, 2.. = classes;
predictions show background as 0 and each class with its painted value.
"""

from .annotations import (
    AnnotationWatcher,
    add_annotation_layer,
    annotation_copy,
    annotation_rows,
    class_names_of,
    copy_slice_to_annotation,
    dirty_slices_of_paint,
    label_color_hex,
)
from .images import ImageSnapshot, LayerError, channels_snapshot, image_channel_axis, image_snapshot, is_lazy, spatial_shape_of
from .lists import (
    annotation_layers,
    fits_image,
    follow_layer_list,
    guess_annotation,
    image_layer_named,
    image_layers,
    in_viewer,
    named_choices,
    preferred_image,
)
from .predictions import (
    PAINT_OVERLAYS,
    PREDICTION_KEY,
    annotation_if_fits,
    add_prediction_layer,
    ensure_prediction_layer,
    hold_paint_overlays,
    new_prediction_layer,
    show_prediction_layer,
    find_prediction_layer,
    prediction_of,
    show_prediction,
    show_instances,
    show_probabilities,
    show_uncertainty,
    write_preview,
)
from .view import go_to_slice, viewed_slice, visible_box

__all__ = [
    "PAINT_OVERLAYS",
    "PREDICTION_KEY",
    "AnnotationWatcher",
    "ImageSnapshot",
    "LayerError",
    "add_annotation_layer",
    "annotation_if_fits",
    "annotation_copy",
    "annotation_rows",
    "annotation_layers",
    "channels_snapshot",
    "class_names_of",
    "copy_slice_to_annotation",
    "dirty_slices_of_paint",
    "add_prediction_layer",
    "ensure_prediction_layer",
    "hold_paint_overlays",
    "new_prediction_layer",
    "show_prediction_layer",
    "find_prediction_layer",
    "fits_image",
    "go_to_slice",
    "follow_layer_list",
    "guess_annotation",
    "image_channel_axis",
    "image_layer_named",
    "image_layers",
    "image_snapshot",
    "in_viewer",
    "is_lazy",
    "label_color_hex",
    "named_choices",
    "preferred_image",
    "prediction_of",
    "show_prediction",
    "show_instances",
    "show_probabilities",
    "show_uncertainty",
    "spatial_shape_of",
    "viewed_slice",
    "visible_box",
    "write_preview",
]
