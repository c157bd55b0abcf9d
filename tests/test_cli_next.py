"""The predict command's instance and uncertainty outputs, end to end on a tiny trained model."""

from __future__ import annotations

import numpy as np
import tifffile

from test_cli import assert_one_line_error, run, trained  # noqa: F401  (trained is a fixture)


def test_predict_writes_instances_uncertainty_and_ranking(trained, tmp_path, capsys):  # noqa: F811
    out = {name: tmp_path / f"{name}.tif" for name in ("labels", "instances", "uncertainty")}
    csv = tmp_path / "next.csv"
    code, stdout, err = run(
        ["predict", "--model", trained["model"], "--image", trained["image"], "--out", out["labels"],
         "--instances", 2, "--min-size", 3, "--instance-method", "components", "--instances-out", out["instances"],
         "--uncertainty-out", out["uncertainty"], "--uncertainty", "margin", "--labels", trained["labels"],
         "--ranking-out", csv, "--device", "cpu", "--threads", "1", "-q"],
        capsys,
    )
    assert code == 0, err
    labels, instances = tifffile.imread(out["labels"]), tifffile.imread(out["instances"])
    unsure = tifffile.imread(out["uncertainty"])
    assert instances.dtype == np.int32 and unsure.dtype == np.uint8 and instances.shape == labels.shape
    # Instances cover exactly the class-2 voxels of objects of >= 3 voxels.
    assert np.all(labels[instances > 0] == 2)
    assert f"{int(instances.max())} instances of class 2" in stdout
    rows = csv.read_text().splitlines()
    painted = set(np.flatnonzero((tifffile.imread(trained["labels"]) > 0).any(axis=(1, 2))).tolist())
    ranked = [int(line.split(",")[2]) for line in rows[1:]]
    assert rows[0] == "rank,axis,index,mean_uncertainty" and painted and not painted & set(ranked)
    assert sorted(ranked + sorted(painted)) == list(range(labels.shape[0]))
    means = [unsure[z].mean() for z in ranked]
    assert means == sorted(means, reverse=True)
    assert f"least sure z slices, mean margin (painted slices left out): z={ranked[0]}" in stdout


def test_predict_refuses_bad_instance_options_before_writing(trained, tmp_path, capsys):  # noqa: F811
    base = ["predict", "--model", trained["model"], "--image", trained["image"], "--out", tmp_path / "o.tif", "-q"]
    code, _, err = run([*base, "--instances", 7, "--instances-out", tmp_path / "i.tif"], capsys)
    assert_one_line_error(code, err, "instances of class 7", "no such class")
    code, _, err = run([*base, "--instances", 2], capsys)
    assert_one_line_error(code, err, "--instances-out")
    code, _, err = run([*base, "--ranking-out", tmp_path / "r.csv"], capsys)
    assert_one_line_error(code, err, "--uncertainty-out")
    code, _, err = run([*base, "--uncertainty-out", tmp_path / "o.tif"], capsys)
    assert_one_line_error(code, err, "same file as --out")
    assert not any(tmp_path.iterdir())
