"""GeoTIFF and NIfTI open in a real napari viewer with their physical geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch

from napari_llmseg import segment
from napari_llmseg._reader import get_geotiff_reader, get_nifti_reader
from tests.conftest import SAMPLE
from tests.formats_data import LANDSAT, MRI_T1, ndwi_model, need

pytestmark = pytest.mark.gui


def test_readers_claim_only_their_files(tmp_path):
    assert get_geotiff_reader(str(LANDSAT)) is not None
    assert get_geotiff_reader(str(SAMPLE)) is None  # a plain TIFF is left to napari
    assert get_geotiff_reader([str(LANDSAT), str(LANDSAT)]) is None
    assert get_nifti_reader(str(need(MRI_T1, "mricron-data"))) is not None
    assert get_nifti_reader(str(tmp_path / "missing.nii.gz")) is None
    from tests.io.test_bands import write_vrt

    vrt = write_vrt(tmp_path / "rgb.vrt", [3, 2, 1])
    assert get_geotiff_reader(str(vrt)) is not None  # GDAL virtual rasters open through us
    assert get_geotiff_reader(str(tmp_path / "missing.vrt")) is None


def test_a_vrt_opens_as_an_rgb_image(make_napari_viewer, tmp_path):
    from tests.io.test_bands import write_vrt

    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(write_vrt(tmp_path / "rgb.vrt", [3, 2, 1])),
                           plugin="napari-llmseg")  # fmt: skip
    assert layer.name == "rgb" and layer.rgb and layer.data.shape == (352, 349, 3)
    with rasterio.open(LANDSAT) as ds:
        np.testing.assert_array_equal(np.asarray(layer.data)[..., 0], ds.read(3))


def test_geotiff_opens_with_scale_translate_and_crs(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(str(LANDSAT), plugin="napari-llmseg")
    assert [lyr.name for lyr in layers] == [f"landsat7_etm band {i}" for i in range(1, 7)]
    band2 = viewer.layers["landsat7_etm band 2"]
    with rasterio.open(LANDSAT) as ds:
        t, crs = ds.transform, ds.crs
        np.testing.assert_array_equal(np.asarray(band2.data), ds.read(2))
    assert tuple(band2.scale) == pytest.approx((abs(t.e), t.a))
    assert tuple(band2.translate) == pytest.approx((-(t.f + t.e / 2), t.c + t.a / 2))
    assert tuple(str(u) for u in band2.units) == ("meter", "meter")
    assert band2.metadata["napari_llmseg_source"]["crs_wkt"] == crs.to_wkt()
    # pixel (10, 20)'s centre is at world (minus northing, easting) in napari
    world = band2.data_to_world((10, 20))
    assert world[1] == pytest.approx(t.c + 20.5 * t.a) and -world[0] == pytest.approx(
        t.f + 10.5 * t.e
    )


def test_labels_geotiff_written_by_us_opens_as_labels(make_napari_viewer, tmp_path):
    segment(LANDSAT, "water", model=ndwi_model, out=tmp_path / "water.tif")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "water.tif"), plugin="napari-llmseg")
    assert layer._type_string == "labels"
    assert list(layer.features["prompt"]) == ["background", "water", "no data"]
    assert list(layer.features["index"]) == [0, 1, 255]
    alpha = np.asarray(layer.colormap.map(np.array([0, 1, 255])))[:, 3]
    assert alpha.tolist() == [0, 1, 0]  # background and no data transparent, water shown
    with rasterio.open(tmp_path / "water.tif") as ds:
        np.testing.assert_array_equal(np.asarray(layer.data), ds.read(1))
    # it lies on top of the scene it came from, as does a zarr result store
    (band1, *_) = viewer.open(str(LANDSAT), plugin="napari-llmseg")
    assert tuple(layer.scale) == tuple(band1.scale)
    assert tuple(layer.translate) == tuple(band1.translate)
    viewer.open(str(tmp_path / "water.tif.zarr"), plugin="napari-llmseg")
    store_labels = viewer.layers["water.tif labels"]
    assert tuple(store_labels.scale) == tuple(band1.scale)
    assert tuple(store_labels.translate) == tuple(band1.translate)


def test_nifti_opens_with_spacing_and_origin(make_napari_viewer, tmp_path):
    t1 = need(MRI_T1, "mricron-data")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(t1), plugin="napari-llmseg")
    img = nib.load(t1)
    assert layer.name == "ch2" and layer.data.shape == (181, 217, 181)
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)
    assert tuple(layer.translate) == (-71.0, -125.0, -90.0)
    assert tuple(str(u) for u in layer.units) == ("millimeter",) * 3
    assert np.array_equal(np.asarray(layer.metadata["napari_llmseg_source"]["affine"]), img.affine)
    np.testing.assert_array_equal(
        np.asarray(layer.data[90]), np.asarray(img.dataobj[:, :, 90]).transpose()
    )
    # World coordinates of a voxel are the affine's, (k, j, i) order.
    assert tuple(layer.data_to_world((90, 100, 80))) == pytest.approx(
        tuple((img.affine @ [80, 100, 90, 1])[:3][::-1])
    )


def test_nifti_labels_written_by_us_open_as_labels(make_napari_viewer, tmp_path):
    vol = np.zeros((3, 20, 24), np.float32)
    vol[:, 5:15, 4:10] = 1.0
    from tests.formats_data import write_nifti_volume

    write_nifti_volume(tmp_path / "in.nii.gz", vol, (2.0, 0.5, 0.5), origin=(10.0, 20.0, 30.0))

    def model(x, prompts):  # "soft tissue" where bright, "bone" where dark
        return (x[:, :1] - 0.5).repeat(1, 2, 1, 1) * torch.tensor([10.0, -10.0])[:, None, None]

    segment(tmp_path / "in.nii.gz", ["soft tissue", "bone"], model=model, roi_size=32,
            out=tmp_path / "lab.nii.gz")  # fmt: skip
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "lab.nii.gz"), plugin="napari-llmseg")
    assert layer._type_string == "labels"
    assert list(layer.features["prompt"]) == ["background", "soft tissue", "bone"]
    assert tuple(layer.scale) == (2.0, 0.5, 0.5)
    assert tuple(layer.translate) == (30.0, 20.0, 10.0)
    data = np.asarray(layer.data)
    assert (data[:, 5:15, 4:10] == 1).all() and (data[:, :5] == 2).all()
