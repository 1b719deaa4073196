"""GeoTIFF band selection and nodata on Dask workers, and a GeoTIFF output of a cluster run."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import smooth_model
from tests.distributed.test_distributed import single_thread_reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_workers_read_the_selected_bands_and_skip_nodata(client, tmp_path):
    rng = np.random.default_rng(5)
    bands = rng.uniform(1, 2, size=(3, 150, 190)).astype(np.float32)
    bands[0] *= -1  # band 1 differs in sign from band 3: reading the wrong band shows
    bands[:, 20:50, 30:90] = -9999.0
    src = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "height": 150, "width": 190, "count": 3, "dtype": "float32",
               "crs": "EPSG:31985", "transform": Affine(30, 0, 5e5, 0, -30, 9e6),
               "nodata": -9999.0}  # fmt: skip
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(bands)
    ref = single_thread_reference(src, tmp_path / "ref.tif", smooth_model, bands="3,1")
    dist = single_thread_reference(
        src, tmp_path / "dist.tif", smooth_model, bands="3,1", scheduler=client
    )
    names = ["dist.tif", "dist.tif.aux.xml", "dist_report.html"]
    assert dist.files == [tmp_path / n for n in names]
    with rasterio.open(tmp_path / "ref.tif") as a, rasterio.open(tmp_path / "dist.tif") as b:
        assert b.crs == a.crs and b.transform == a.transform == profile["transform"]
        la, lb = a.read(1), b.read(1)
    np.testing.assert_array_equal(la, lb)
    with_data = np.ones(lb.shape, bool)
    with_data[20:50, 30:90] = False
    assert (lb[20:50, 30:90] == 255).all() and (lb[with_data] != 255).all()
    assert lb[with_data].any()
    assert not np.asarray(dist.labels)[20:50, 30:90].any()  # the store keeps background there
    np.testing.assert_array_equal(np.asarray(dist.probabilities), np.asarray(ref.probabilities))


def test_workers_read_stacked_band_files(client, tmp_path):
    rng = np.random.default_rng(6)
    bands = rng.uniform(1, 2, size=(2, 150, 190)).astype(np.float32)
    bands[0] *= -1
    profile = {"driver": "GTiff", "height": 150, "width": 190, "count": 1, "dtype": "float32",
               "crs": "EPSG:31985", "transform": Affine(30, 0, 5e5, 0, -30, 9e6)}  # fmt: skip
    files = [tmp_path / "B3.tif", tmp_path / "B1.tif"]
    for path, band in zip(files, bands[::-1], strict=True):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(band, 1)
    ref = single_thread_reference(files, tmp_path / "ref.zarr", smooth_model)
    dist = single_thread_reference(files, tmp_path / "dist.zarr", smooth_model, scheduler=client)
    assert dist.complete and ref.complete
    np.testing.assert_array_equal(np.asarray(dist.labels), np.asarray(ref.labels))
    np.testing.assert_array_equal(np.asarray(dist.probabilities), np.asarray(ref.probabilities))
