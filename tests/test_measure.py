from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_llmseg.measure import measure, report, to_csv


@pytest.fixture
def labelled():
    lab = np.zeros((4, 20, 30), np.uint8)
    lab[0:2, 2:6, 2:6] = 1  # object A: 2*4*4 = 32 voxels
    lab[1:4, 10:15, 10:20] = 1  # object B: 3*5*10 = 150 voxels
    lab[:, 0:2, 25:30] = 2  # one object of class 2: 4*2*5 = 40 voxels
    img = np.full(lab.shape, 10.0)
    img[lab == 1] = 100.0
    return lab, img


def test_counts_sizes_and_intensity_in_physical_units(labelled):
    lab, img = labelled
    m1, m2, m3 = measure(lab, {1: "nuclei", 2: "membrane", 3: "giraffe"}, image=img,
                         scale=(2.0, 0.5, 0.5), units=("um", "um", "um"))  # fmt: skip
    assert (m1.voxels, m1.objects, m1.unit) == (182, 2, "um^3")
    assert m1.size == pytest.approx(182 * 0.5)  # voxel volume 2 * 0.5 * 0.5 um^3
    assert m1.median_object_size == pytest.approx(np.median([32, 150]) * 0.5)
    assert m1.mean_intensity == pytest.approx(100.0)
    assert m1.fraction == pytest.approx(182 / lab.size)
    assert (m2.voxels, m2.objects, m2.mean_intensity) == (40, 1, 10.0)
    assert (m3.voxels, m3.objects, m3.mean_intensity) == (0, 0, None)
    text = report([m1, m2, m3], ndim=3)
    assert text.splitlines()[0] == (
        "nuclei: 182 voxels (7.58 % of the volume) = 91 um^3, 2 objects (median 45.5 um^3), "
        "mean intensity 100"
    )
    assert text.splitlines()[2] == "giraffe: 0 voxels (0.00 % of the volume) = 0 um^3, 0 objects"


def test_pixels_without_units_and_zarr_input(labelled, tmp_path):
    lab, _ = labelled
    z = zarr.create_array(
        tmp_path / "l.zarr", shape=lab.shape, chunks=(1, 10, 10), dtype=lab.dtype
    )
    z[...] = lab
    (m,) = measure(z, {1: "nuclei"}, scale=(2.0, 0.5, 0.5))
    assert m.unit == "voxel" and m.size == 182 and m.objects == 2


def test_large_results_skip_object_counts_honestly(labelled):
    lab, _ = labelled
    (m,) = measure(lab, {1: "nuclei"}, max_label_voxels=100)
    assert m.objects is None and m.voxels == 182
    assert report([m]) == (
        "nuclei: 182 voxels (7.58 % of the volume), objects not counted: too large (use "
        "instances=True / --instances)"
    )


def test_csv_has_one_value_per_cell_and_units_in_the_header(labelled, tmp_path):
    import csv

    lab, _ = labelled
    found = measure(lab, {1: "nuclei", 2: "membrane"}, scale=(2.0, 0.5, 0.5), units=("um",) * 3)
    path = to_csv(found, tmp_path / "m.csv")
    rows = path.read_text().splitlines()
    assert rows[0] == (
        "label,prompt,voxels,fraction,size_um3,objects,median_object_size_um3,mean_intensity"
    )
    assert rows[1] == f"1,nuclei,182,{182 / lab.size},91.0,2,45.5,"  # no image: no intensity
    # volumes in mm^3 also get millilitres; areas in m^2 hectares; no units: voxels
    ct = measure(lab, {1: "organ"}, scale=(1.0, 10.0, 10.0), units=("mm",) * 3)
    header, row = to_csv(ct, tmp_path / "ct.csv").read_text().splitlines()
    assert header.split(",")[4:8] == ["size_mm3", "size_mL", "objects",
                                      "median_object_size_mm3"]  # fmt: skip
    assert row.split(",")[4:6] == ["18200.0", "18.2"]
    gis = measure(lab[0], {1: "water"}, scale=(30.0, 30.0), units=("m", "m"))
    with to_csv(gis, tmp_path / "gis.csv").open() as f:
        (water,) = csv.DictReader(f)
    assert float(water["size_m2"]) == 16 * 900 and float(water["size_ha"]) == 16 * 900 / 1e4
    header = to_csv(measure(lab, {1: "x"}), tmp_path / "px.csv").read_text().splitlines()[0]
    assert "size_voxels" in header and "median_object_size_voxels" in header


def test_object_csv_splits_the_centroid_into_axes(labelled, tmp_path):
    from skimage.measure import label as sk_label

    from napari_llmseg.measure import measure_objects

    lab, img = labelled
    inst = sk_label(lab, connectivity=1).astype(np.uint32)
    classes = {1: "membrane", 2: "nuclei", 3: "nuclei"}
    objs = measure_objects(inst, classes, image=img, scale=(2.0, 0.5, 0.5), units=("um",) * 3)
    rows = to_csv(objs, tmp_path / "o.csv").read_text().splitlines()
    assert rows[0] == (
        "id,prompt,voxels,size_um3,centroid_z_um,centroid_y_um,centroid_x_um,mean_intensity"
    )
    assert rows[2] == "2,nuclei,32,16.0,1.0,1.75,1.75,100.0"
    assert "(" not in "".join(rows)  # no tuples in cells
    flat = measure_objects(inst[0], {1: "membrane", 2: "nuclei"})
    header = to_csv(flat, tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "id,prompt,voxels,size_px,centroid_y_px,centroid_x_px,mean_intensity"


def test_csv_refuses_mixed_units(labelled, tmp_path):
    lab, _ = labelled
    a = measure(lab, {1: "a"}, scale=(1.0, 1.0, 1.0), units=("um",) * 3)
    b = measure(lab, {1: "b"})
    with pytest.raises(ValueError, match=r"measurements in different units \(um\^3, voxel\) "):
        to_csv(a + b, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_objects_measured_per_id_with_centroids(labelled):
    from skimage.measure import label as sk_label

    from napari_llmseg.measure import measure_objects

    lab, img = labelled
    inst = sk_label(lab, connectivity=1).astype(np.uint32)
    classes = {1: "membrane", 2: "nuclei", 3: "nuclei"}  # ids in raster order
    assert inst.max() == 3
    objs = measure_objects(inst, classes, image=img, scale=(2.0, 0.5, 0.5), units=("um",) * 3)
    assert [o.voxels for o in objs] == [40, 32, 150]
    assert objs[1].size == pytest.approx(32 * 0.5) and objs[1].unit == "um^3"
    assert objs[1].centroid == pytest.approx((0.5 * 2.0, 3.5 * 0.5, 3.5 * 0.5))
    assert objs[0].mean_intensity == pytest.approx(10.0)
    assert objs[2].mean_intensity == pytest.approx(100.0)
    per_class = measure(
        lab, {1: "nuclei", 2: "membrane"}, objects=objs, scale=(2.0, 0.5, 0.5), units=("um",) * 3
    )
    assert [m.objects for m in per_class] == [2, 1]


@pytest.mark.parametrize(
    ("size", "unit", "text"),
    [
        (1_737_193.0, "mm^3", "1,737 mL"),  # CT/MRI volumes in millilitres
        (2.0, "mm^3", "2 mm^3"),  # small objects stay in mm^3
        (14_704_200.0, "m^2", "1,470 ha (14.7 km^2)"),  # GIS areas in hectares and km^2
        (2_440.0, "m^2", "0.244 ha"),
        (500.0, "m^2", "500 m^2"),
        (45.5, "um^3", "45.5 um^3"),
        (0.00012, "um^2", "0.00012 um^2"),  # never scientific notation
    ],
)
def test_sizes_in_the_units_users_read(size, unit, text):
    from napari_llmseg.measure import format_size

    assert format_size(size, unit) == text


def test_counts_given_are_not_read_again(labelled):
    lab, img = labelled

    class Unreadable:
        shape, dtype = lab.shape, lab.dtype

        def __getitem__(self, key):
            raise AssertionError("read")

    (m,) = measure(Unreadable(), {1: "nuclei"}, counts={1: 182}, max_label_voxels=0,
                   scale=(2.0, 0.5, 0.5), units=("um",) * 3)  # fmt: skip
    assert (m.voxels, m.size, m.objects) == (182, 91.0, None)
    (m,) = measure(lab, {1: "nuclei"}, counts={1: 999}, image=img)  # an image: read and count
    assert m.voxels == 182 and m.mean_intensity == 100.0
