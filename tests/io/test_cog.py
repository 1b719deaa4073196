"""GeoTIFF outputs for GIS: Cloud-Optimised, classes named for GDAL and QGIS, no-data marked.

COG validity is checked with GDAL's own validator, ``validate_cloud_optimized_geotiff.py``
(``osgeo_utils.samples``, from Debian's python3-gdal: a different GDAL (3.6) than rasterio's,
run with ``--full-check=yes``): it checks that the file is tiled, that overviews are present
and ordered by decreasing size, that every IFD comes before the image data, and that tile
data is laid out from the smallest overview to full resolution with GDAL's leader/trailer
bytes. A negative control shows it rejecting a tiled GeoTIFF whose overviews were added
afterwards. Category names and the raster attribute table are read back with gdalinfo
(Debian's gdal-bin) as well as from the sidecar itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from napari_llmseg import segment
from napari_llmseg.io.geotiff import label_names_in, label_pam, pam_path, write_geotiff
from napari_llmseg.io.write import write_labels
from tests.conftest import ROOT, threshold_model
from tests.formats_data import LANDSAT, gdalinfo_json, ndwi_model, validate_cog

UTM = CRS.from_epsg(31985)
TRANSFORM = Affine(10.0, 0, 500_000.0, 0, -10.0, 9_000_000.0)
GEOMETRY = {"crs_wkt": UTM.to_wkt(), "transform": list(TRANSFORM)[:6]}


class ReadRecorder:
    """An array that records the size of every read (to show nothing is read whole)."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.largest = 0

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.largest = max(self.largest, out.size)
        return out


def majority_labels(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0-2 whose every 2 x 2 block holds three pixels of one label (its mode) and,
    top left, one of another: -> (labels, mode of each block)."""
    rng = np.random.default_rng(7)
    mode = rng.integers(0, 3, (height // 2, width // 2)).astype(np.uint8)
    labels = np.repeat(np.repeat(mode, 2, axis=0), 2, axis=1)
    labels[0::2, 0::2] = (mode + 1) % 3
    return labels, mode


def test_labels_are_a_valid_cog_with_mode_overviews_read_in_windows(tmp_path):
    labels, mode = majority_labels(1100, 1300)
    store = zarr.open_array(tmp_path / "l.zarr", mode="w", shape=labels.shape, chunks=(512, 512),
                            dtype=np.uint8, zarr_format=3)  # fmt: skip
    store[...] = labels
    invalid = np.zeros(labels.shape, bool)
    invalid[100:300, 200:500] = True  # no input data, on whole 2 x 2 blocks
    data = ReadRecorder(store)
    out = write_labels(tmp_path / "l.tif", data, label_names={1: "water", 2: "forest"},
                       geometry=GEOMETRY, invalid=invalid)  # fmt: skip
    assert data.largest == 1024 * 1024  # windows of 1024 x 1024, never the whole array
    valid, report = validate_cog(out)
    assert valid, report
    assert f"{out} is a valid cloud optimized GeoTIFF" in report
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.block_shapes == [(512, 512)] and ds.overviews(1) == [2, 4]
        assert ds.nodata == 255 and ds.crs == UTM and ds.transform == TRANSFORM
        np.testing.assert_array_equal(ds.read(1), np.where(invalid, 255, labels))
    with rasterio.open(out, overview_level=0) as half:
        level1 = half.read(1)
    # the first overview is the mode of each 2 x 2 block: exact label values, the majority
    # (not the top-left pixel, which nearest-neighbour would take), 255 where no data
    expected = np.where(invalid[::2, ::2], 255, mode)
    np.testing.assert_array_equal(level1, expected)
    assert (level1 != labels[::2, ::2])[~invalid[::2, ::2]].all()
    with rasterio.open(out, overview_level=1) as quarter:
        assert set(np.unique(quarter.read(1))) <= {0, 1, 2, 255}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif", "l.tif.aux.xml", "l.zarr"]


def test_the_validator_rejects_a_tiff_whose_overviews_come_after(tmp_path):
    path = tmp_path / "not_cog.tif"
    profile = {"driver": "GTiff", "height": 1100, "width": 1300, "count": 1, "dtype": "uint8",
               "tiled": True, "blockxsize": 256, "blockysize": 256, "crs": UTM,
               "transform": TRANSFORM}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(majority_labels(1100, 1300)[0], 1)
        ds.build_overviews([2, 4], Resampling.nearest)
    valid, report = validate_cog(path)
    assert not valid and "is NOT a valid cloud optimized GeoTIFF" in report
    assert "should be after the one of the overview" in report


@pytest.fixture
def scene_without_data(tmp_path, rng):
    """A float32 GeoTIFF with nodata -9999 in a corner and a stripe, NaN in a square (no
    nodata value says so: the engine treats non-finite pixels alike) -> (path, bad)."""
    img = rng.uniform(0, 1, size=(96, 120)).astype(np.float32)
    bad = np.zeros(img.shape, bool)
    bad[:30, :40] = True
    bad[60:64, :] = True
    img[bad] = -9999.0
    img[70:80, 90:100] = np.nan
    bad[70:80, 90:100] = True
    path = tmp_path / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=96,
        width=120,
        count=1,
        dtype="float32",
        crs=UTM,
        transform=TRANSFORM,
        nodata=-9999.0,
    ) as ds:
        ds.write(img, 1)
    return path, bad


def test_no_data_is_255_distinct_from_background_and_nan_in_probabilities(
    tmp_path, scene_without_data
):
    path, bad = scene_without_data
    out = tmp_path / "bright.tif"
    res = segment(path, "bright", model=threshold_model, roi_size=32, out=out, probabilities=True)
    store_labels = np.asarray(res.labels)
    assert not store_labels[bad].any()  # the working store keeps 0 there, as before
    assert (store_labels[~bad] == 1).any() and (store_labels[~bad] == 0).any()
    with rasterio.open(out) as ds:
        labels = ds.read(1)
        assert ds.nodata == 255 and ds.read_masks(1)[bad].max() == 0
    np.testing.assert_array_equal(labels, np.where(bad, 255, store_labels))
    assert set(np.unique(labels[~bad])) == {0, 1}  # background stays 0, data or not
    with rasterio.open(tmp_path / "bright_probabilities.tif") as ds:
        assert np.isnan(ds.nodata)
        prob = ds.read(1)
    assert np.isnan(prob[bad]).all() and not np.isnan(prob[~bad]).any()
    np.testing.assert_array_equal(prob[~bad], np.asarray(res.probabilities[0])[~bad])


def test_pixels_outside_a_mask_are_no_data_too(tmp_path, rng):
    path = tmp_path / "masked.tif"
    valid = np.full((64, 80), 255, np.uint8)
    valid[40:, 50:] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            height=64,
            width=80,
            count=3,
            dtype="uint8",
            crs=UTM,
            transform=TRANSFORM,
        ) as ds:
            ds.write(rng.integers(1, 200, size=(3, 64, 80)).astype(np.uint8))
            ds.write_mask(valid)
    everything = lambda x, p: x[:, :1] * 0 + 5.0  # noqa: E731
    segment(path, "x", model=everything, roi_size=32, out=tmp_path / "x.tif")
    with rasterio.open(tmp_path / "x.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), np.where(valid > 0, 1, 255))


def test_class_names_reach_gdalinfo_and_the_attribute_table(tmp_path):
    labels = np.zeros((40, 50), np.uint8)
    labels[5:15, 5:25] = 1
    labels[20:30, 10:40] = 2
    out = write_labels(tmp_path / "c.tif", labels, label_names={1: "water", 2: "vegetation"},
                       geometry=GEOMETRY)  # fmt: skip
    info = gdalinfo_json(out)
    band = info["bands"][0]
    assert band["categories"] == ["background", "water", "vegetation"]
    assert band["noDataValue"] == 255 and band["description"] == "labels"
    rat = info.get("rat") or band.get("rat")
    assert rat["tableType"] == "thematic"
    assert [f["name"] for f in rat["fieldDefn"]] == ["value", "class", "red", "green", "blue",
                                                     "alpha"]  # fmt: skip
    assert [f["usage"] for f in rat["fieldDefn"]] == [5, 2, 6, 7, 8, 9]  # MinMax, Name, RGBA
    assert [r["f"] for r in rat["row"]] == [
        [0, "background", 0, 0, 0, 0],  # transparent in QGIS >= 3.30 (styled from the RAT)
        [1, "water", 230, 159, 0, 255],
        [2, "vegetation", 86, 180, 233, 255],
        [255, "no data", 0, 0, 0, 0],
    ]
    # the sidecar is plain GDAL PAM XML, and the TIFF keeps our own tags for napari
    root = ET.parse(pam_path(out)).getroot()
    assert [c.text for c in root.iter("Category")] == ["background", "water", "vegetation"]
    with rasterio.open(out) as ds:
        assert ds.tags()["LABEL_1"] == "water" and ds.tags()["LABEL_2"] == "vegetation"
        assert ds.colormap(1)[2][:3] == (86, 180, 233)
    assert label_names_in(out) == {1: "water", 2: "vegetation"}


def test_names_are_escaped_and_sparse_values_get_empty_categories():
    xml = label_pam({0: ("background", (0, 0, 0, 0)), 3: ("<reeds & rushes>", (1, 2, 3, 255))})
    root = ET.fromstring(xml)
    categories = [c.text or "" for c in root.iter("Category")]
    assert categories == ["background", "", "", "<reeds & rushes>"]
    assert "&lt;reeds &amp; rushes&gt;" in xml


def test_segment_writes_a_cog_of_the_landsat_tile(tmp_path):
    res = segment(LANDSAT, "water", model=ndwi_model, out=tmp_path / "w.tif", probabilities=True)
    for path in (tmp_path / "w.tif", tmp_path / "w_probabilities.tif"):
        valid, report = validate_cog(path)
        assert valid, report
    names = ["w.tif", "w.tif.aux.xml", "w_probabilities.tif", "w_report.html"]
    assert res.files == [tmp_path / n for n in names]
    assert gdalinfo_json(tmp_path / "w.tif")["bands"][0]["categories"] == ["background", "water"]


def test_a_stale_sidecar_is_never_overwritten_silently(tmp_path):
    labels = np.ones((20, 20), np.uint8)
    sidecar = tmp_path / "w.tif.aux.xml"
    sidecar.write_text("<PAMDataset/>")
    with pytest.raises(FileExistsError, match=r"output '.*w.tif.aux.xml' already exists; pass "
                       r"overwrite=True"):  # fmt: skip
        write_labels(tmp_path / "w.tif", labels, label_names={1: "w"}, geometry=GEOMETRY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.tif.aux.xml"]
    # a run refuses before it starts, leaving no working store
    with pytest.raises(FileExistsError, match=r"output '.*w.tif.aux.xml' already exists"):
        segment(LANDSAT, "water", model=ndwi_model, out=tmp_path / "w.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.tif.aux.xml"]
    assert sidecar.read_text() == "<PAMDataset/>"
    write_labels(tmp_path / "w.tif", labels, label_names={1: "w"}, geometry=GEOMETRY,
                 overwrite=True)  # fmt: skip
    assert "<Category>w</Category>" in sidecar.read_text()
    # a plain TIFF (no georeferencing) written over it drops the sidecar, which would
    # otherwise describe the new file to GDAL
    write_labels(tmp_path / "w.tif", labels, label_names={1: "w"}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.tif"]
    # probabilities have no classes: a GeoTIFF without a sidecar
    write_geotiff(tmp_path / "p.tif", np.zeros((2, 20, 20), np.float32), overwrite=False,
                  **GEOMETRY)  # fmt: skip
    assert not (tmp_path / "p.tif.aux.xml").exists()


def test_invalid_needs_a_geotiff_and_a_free_nodata_value(tmp_path):
    labels = np.ones((20, 20), np.uint8)
    invalid = np.zeros((20, 20), bool)
    invalid[:5] = True
    message = r"invalid= marks pixels without input data in a GeoTIFF's nodata value; '.*l.zarr'"
    with pytest.raises(ValueError, match=message + " is not a 2D GeoTIFF output"):
        write_labels(tmp_path / "l.zarr", labels, label_names={1: "w"}, invalid=invalid)
    with pytest.raises(ValueError, match="is not a 2D GeoTIFF output"):
        write_labels(tmp_path / "plain.tif", labels, label_names={1: "w"}, invalid=invalid)
    names = {i: f"class {i}" for i in range(1, 256)}
    with pytest.raises(ValueError, match=r"cannot mark pixels without data in '.*full.tif': its "
                       r"labels \(uint8\) use every value up to 255, the no-data value 255 "
                       r"included; write a wider label type"):  # fmt: skip
        write_labels(tmp_path / "full.tif", labels, label_names=names, geometry=GEOMETRY,
                     invalid=invalid)  # fmt: skip
    out = write_labels(tmp_path / "full.tif", labels, label_names=names, geometry=GEOMETRY)
    with rasterio.open(out) as ds:
        assert ds.nodata is None  # 255 is a class here, not "no data"
    assert "no data" not in pam_path(out).read_text()
    wide = write_labels(tmp_path / "wide.tif", labels.astype(np.uint16), label_names=names,
                        geometry=GEOMETRY, invalid=invalid)  # fmt: skip
    with rasterio.open(wide) as ds:
        assert ds.nodata == 65535 and (ds.read(1)[:5] == 65535).all()
    with pytest.raises(ValueError, match=r"invalid has shape \(3, 3\), expected the raster's "
                       r"\(20, 20\)"):  # fmt: skip
        write_geotiff(tmp_path / "x.tif", labels, nodata=255, invalid=np.zeros((3, 3), bool),
                      **GEOMETRY)  # fmt: skip
    with pytest.raises(ValueError, match="overview_resampling must be one of mode, nearest, "
                       "average, got 'cubic'"):  # fmt: skip
        write_geotiff(tmp_path / "x.tif", labels, overview_resampling="cubic", **GEOMETRY)
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.slow
def test_memory_stays_bounded_for_a_result_larger_than_it(tmp_path):
    """A 144 MiB label array (12288 x 12288 uint8 in zarr) becomes a COG while the process
    grows by less than the array: the copy reads 1024 x 1024 windows, and GDAL's cache is
    capped at 128 MB while it builds the overviews."""
    script = textwrap.dedent(
        """
        import resource, sys
        import numpy as np, zarr
        from napari_llmseg.io.write import write_labels
        n = 12288
        z = zarr.open_array(sys.argv[1] + "/l.zarr", mode="w", shape=(n, n), chunks=(512, 512),
                            dtype=np.uint8, zarr_format=3)
        for y in range(0, n, 2048):
            rows = np.arange(y, y + 2048)[:, None]
            z[y:y + 2048] = ((rows + np.arange(n)[None, :]) // 97 % 3).astype(np.uint8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        write_labels(sys.argv[1] + "/l.tif", z, label_names={1: "a", 2: "b"},
                     geometry={"crs_wkt": None, "transform": [10, 0, 0, 0, -10, 0]})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    grown_mib = float(done.stdout.strip().splitlines()[-1])
    assert grown_mib < 100, f"grew by {grown_mib:.0f} MiB writing a 144 MiB array"
    with rasterio.open(tmp_path / "l.tif") as ds:
        assert ds.overviews(1) == [2, 4, 8, 16, 32]
        assert ds.read(1, window=((0, 2), (95, 98))).tolist() == [[0, 0, 1], [0, 1, 1]]
