"""The widget's instances and "where to paint next" groups, in a real napari viewer (virtual display)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widget import configure_tiny, trained, viewer_widget, wait_idle  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.gui


def test_instances_layer_and_ranked_slices_move_the_view(trained, qtbot):  # noqa: F811
    viewer, widget = trained
    annotation_before = viewer.layers["annotation"].data.copy()
    assert widget.instances.class_combo.findData(2) >= 0  # the model's classes are listed
    widget.instances.instances_check.setChecked(True)
    widget.instances.class_combo.setCurrentIndex(widget.instances.class_combo.findData(2))
    widget.instances.method_combo.setCurrentText("connected components")
    widget.instances.min_size_spin.setValue(0)
    widget.next_slice.uncertainty_check.setChecked(True)
    assert widget.predict()
    wait_idle(qtbot, widget)

    prediction = np.asarray(widget.viewer.layers["prediction"].data)
    instances = viewer.layers["instances image"]
    assert instances.data.dtype == np.int32 and tuple(instances.scale) == (2.0, 1.0, 1.0)
    assert np.array_equal(instances.data > 0, prediction == 2)
    assert f"{instances.data.max()} instances into 'instances image'" in widget.progress.status_label.text()
    uncertainty = viewer.layers["uncertainty image"]
    assert uncertainty.data.dtype == np.uint8 and uncertainty.data.shape == prediction.shape
    assert np.array_equal(viewer.layers["annotation"].data, annotation_before)  # the user's layer is untouched

    items = widget.next_slice.ranking_list
    assert widget.next_slice.ranking_list.isVisibleTo(widget) and items.count() > 0
    ranked = [items.item(i).data(0x0100)[1] for i in range(items.count())]  # Qt.UserRole
    assert not {4, 7} & set(ranked)  # the painted slices are not proposed
    means = [uncertainty.data[z].mean() for z in ranked]
    assert means == sorted(means, reverse=True)
    viewer.dims.set_point(0, 4.0)  # world z of slice 0 (translate 4, scale 2)
    target = items.item(0)
    items.itemClicked.emit(target)
    assert viewer.dims.point[0] == pytest.approx(4.0 + 2.0 * ranked[0])


def test_instances_of_a_class_the_model_lacks_are_refused(trained):  # noqa: F811
    viewer, widget = trained
    widget.instances.instances_check.setChecked(True)
    widget.instances.class_combo.clear()
    widget.instances.class_combo.addItem("9: nothing", 9)
    assert not widget.predict()
    assert "instances image" not in viewer.layers
