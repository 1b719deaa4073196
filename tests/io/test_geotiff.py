"""GeoTIFF input and output through rasterio, on the real Landsat-7 tile and small rasters."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS

from napari_llmseg import open_image, segment
from napari_llmseg.engine.normalize import compute_stats
from napari_llmseg.io._files import atomic_path
from napari_llmseg.io._optional import MissingExtraError
from napari_llmseg.io.geotiff import RasterioArray, RasterioValidMask, write_geotiff
from napari_llmseg.io.source import ImageSource
from tests.conftest import threshold_model
from tests.formats_data import LANDSAT, LANDSAT_DESCRIPTIONS, ndwi_mask, ndwi_model

UTM = CRS.from_epsg(31985)


@pytest.fixture(scope="module")
def landsat_bands() -> np.ndarray:
    with rasterio.open(LANDSAT) as ds:
        return np.moveaxis(ds.read(), 0, -1)  # (Y, X, 6)


@pytest.fixture
def described(tmp_path, landsat_bands):
    """The Landsat tile re-written with band descriptions."""
    path = tmp_path / "described.tif"
    with rasterio.open(LANDSAT) as src:
        profile = src.profile
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.moveaxis(landsat_bands, -1, 0))
        for i, d in enumerate(LANDSAT_DESCRIPTIONS, 1):
            ds.set_band_description(i, d)
    return path


def write_raster(path, data, *, crs=UTM, transform=None, nodata=None, **extra):
    data = data if data.ndim == 3 else data[None]
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "transform": transform or Affine(10.0, 0, 500_000.0, 0, -10.0, 9_000_000.0),
        **extra,
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def test_landsat_opens_lazily_with_its_georeferencing(landsat_bands):
    s = open_image(LANDSAT)
    assert isinstance(s.array, RasterioArray)  # windowed reads, nothing loaded
    assert s.spatial_shape == (352, 349) and s.n_channels == 6 and s.dtype == np.uint8
    with rasterio.open(LANDSAT) as ds:
        assert s.metadata["crs_wkt"] == ds.crs.to_wkt()
        assert s.metadata["transform"] == list(ds.transform)[:6]
    assert CRS.from_wkt(s.metadata["crs_wkt"]) == UTM
    assert s.metadata["scale"] == pytest.approx([28.5, 28.5])
    assert s.metadata["units"] == ["m", "m"]
    assert s.metadata["band_indexes"] == [1, 2, 3, 4, 5, 6]
    assert s.metadata["format"] == "geotiff" and s.nodata is None and s.mask is None
    region = (slice(100, 180), slice(7, 300))
    np.testing.assert_array_equal(s.read(region), landsat_bands[region])
    # napari translate: centre of pixel (0, 0), Y as minus the northing
    a, _, c, _, e, f = s.metadata["transform"]
    assert s.metadata["translate"] == pytest.approx([-(f + e / 2), c + a / 2])


def test_rasterio_array_indexing_matches_numpy(landsat_bands):
    a = open_image(LANDSAT).array
    keys = [
        (slice(10, 50), slice(3, 90)),
        (5,),
        (slice(None, None, 3), slice(1, None, 7), 2),
        (slice(-5, None), -1),
        (..., 0),
        (slice(100, 50),),
        (7, slice(2, 9), slice(1, 4)),
    ]
    for key in keys:
        np.testing.assert_array_equal(a[key], landsat_bands[key], err_msg=str(key))
    with pytest.raises(IndexError, match="index 400 is out of bounds for an axis of length 352"):
        a[400]
    with pytest.raises(TypeError, match="only integers and slices index a lazy image"):
        a[[1, 2]]


def test_bands_by_index_and_by_description(described, landsat_bands):
    rgb = open_image(described, bands="3,2,1")
    named = open_image(described, bands=["Red", "green", "BLUE"])
    assert rgb.n_channels == named.n_channels == 3
    assert rgb.metadata["band_indexes"] == named.metadata["band_indexes"] == [3, 2, 1]
    assert named.metadata["band_descriptions"] == ["red", "green", "blue"]
    region = (slice(0, 40), slice(200, 349))
    expected = landsat_bands[region][..., [2, 1, 0]]
    np.testing.assert_array_equal(rgb.read(region), expected)
    np.testing.assert_array_equal(named.read(region), expected)
    nir = open_image(described, bands=4)
    np.testing.assert_array_equal(nir.read(region)[..., 0], landsat_bands[region][..., 3])


@pytest.mark.parametrize(
    ("bands", "error", "message"),
    [
        ("7", ValueError, r"band 7 is out of range for '.*', which has 6 bands; bands are "
         r"numbered 1\.\.6 as in GDAL"),
        ([0], ValueError, r"band 0 is out of range .* numbered 1\.\.6"),
        ("3,,1", ValueError, r"bands must list band numbers \(1-based\) or descriptions"),
        ([], ValueError, r"bands must list band numbers"),
        (["thermal"], ValueError, r"no band of '.*' is described 'thermal'; its bands are: "
         r"1 'blue', 2 'green', 3 'red', 4 'nir', 5 'swir1', 6 'swir2'"),
        ([2.5], TypeError, r"every band must be a 1-based band number or a band description, "
         r"got 2\.5"),
    ],
)  # fmt: skip
def test_bad_bands_are_named(described, bands, error, message):
    with pytest.raises(error, match=message):
        open_image(described, bands=bands)


def test_ambiguous_description_and_bands_on_other_inputs(tmp_path, rng):
    path = write_raster(tmp_path / "two.tif", rng.integers(0, 9, (2, 8, 8)).astype(np.uint8))
    with rasterio.open(path, "r+") as ds:
        ds.set_band_description(1, "nir")
        ds.set_band_description(2, "nir")
    with pytest.raises(ValueError, match=r"2 bands of '.*' are described 'nir' \(bands \[1, 2\]"):
        open_image(path, bands="nir")
    np.save(tmp_path / "x.npy", np.zeros((8, 8)))
    with pytest.raises(
        ValueError, match=r"bands= selects bands of a TIFF/GeoTIFF file, '.*x.npy'"
    ):
        open_image(tmp_path / "x.npy", bands="1")
    with pytest.raises(ValueError, match="bands= selects bands of a TIFF/GeoTIFF file; for a "):
        open_image(np.zeros((8, 8)), bands="1")
    with pytest.raises(ValueError, match="channel_axis= does not apply to a GeoTIFF"):
        open_image(path, channel_axis=0)
    with pytest.raises(ValueError, match="bands= applies when opening a file; got an ImageSource"):
        open_image(ImageSource(np.zeros((8, 8))), bands="1")


def test_plain_tiff_still_goes_through_tifffile_unless_bands_are_asked(tmp_path, rng):
    import tifffile

    rgb = rng.integers(0, 255, size=(40, 50, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    s = open_image(tmp_path / "rgb.tif")
    assert isinstance(s.array, zarr.Array) and "crs_wkt" not in s.metadata
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not georeferenced" noise for a plain TIFF
        b = open_image(tmp_path / "rgb.tif", bands=[3])
    assert isinstance(b.array, RasterioArray) and "transform" not in b.metadata
    np.testing.assert_array_equal(b.read((slice(None), slice(None)))[..., 0], rgb[..., 2])


def test_cog_is_read_window_by_window(tmp_path, rng):
    data = rng.integers(0, 1000, size=(2, 600, 700)).astype(np.uint16)
    src = write_raster(tmp_path / "plain.tif", data)
    cog = tmp_path / "cog.tif"
    with rasterio.open(src) as ds:
        profile = ds.profile | {"driver": "COG", "blocksize": 256, "compress": "deflate"}
        with rasterio.open(cog, "w", **profile) as out:
            out.write(ds.read())
    with rasterio.open(cog) as ds:
        assert ds.overviews(1)  # a real COG, with overviews
    s = open_image(cog)
    assert s.chunks == (256, 256)
    np.testing.assert_array_equal(
        s.read((slice(250, 530), slice(10, 700))), np.moveaxis(data, 0, -1)[250:530, 10:700]
    )


# --- nodata --------------------------------------------------------------------------------
@pytest.fixture
def nodata_raster(tmp_path, rng):
    """A single-band float32 GeoTIFF with nodata -9999 in a corner and a stripe."""
    img = rng.uniform(0, 1, size=(96, 120)).astype(np.float32)
    bad = np.zeros(img.shape, bool)
    bad[:30, :40] = True
    bad[60:64, :] = True
    img[bad] = -9999.0
    return write_raster(tmp_path / "nodata.tif", img, nodata=-9999.0), img, bad


def test_nodata_pixels_are_invalid_and_left_out_of_statistics(nodata_raster):
    path, img, bad = nodata_raster
    s = open_image(path)
    assert s.nodata == (-9999.0,) and s.may_be_invalid
    region = (slice(20, 70), slice(30, 60))
    np.testing.assert_array_equal(s.invalid(region, s.read(region)), bad[region])
    stats = compute_stats(s)
    lo, hi = np.percentile(img[~bad].astype(np.float64), [1.0, 99.8])
    assert stats.low == pytest.approx((lo,)) and stats.high == pytest.approx((hi,))
    assert stats.n_values == int((~bad).sum())


def test_nodata_is_never_labelled_and_matches_nan_handling(nodata_raster):
    path, img, bad = nodata_raster
    everything = lambda x, p: torch_ones_like(x[:, :1]).repeat(1, len(p), 1, 1) * 5.0  # noqa: E731
    geo = segment(path, "anything", model=everything, roi_size=32, overlap=0.5)
    assert not geo.labels[bad].any() and (geo.labels[~bad] == 1).all()
    assert (geo.probabilities[0][bad] == 0).all()
    # The same pixels given as NaN in a float array go through the non-finite path: the
    # engine treats both alike, bit for bit.
    as_nan = np.where(bad, np.nan, img).astype(np.float32)
    model = lambda x, p: threshold_model(x, p)  # noqa: E731
    a = segment(path, "bright", model=model, roi_size=32, overlap=0.5)
    b = segment(as_nan, "bright", model=model, roi_size=32, overlap=0.5)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert not a.labels[bad].any() and a.labels[~bad].any()


def torch_ones_like(x):
    import torch

    return torch.ones_like(x)


def test_integer_multiband_nodata_and_internal_mask(tmp_path, rng):
    data = rng.integers(1, 200, size=(3, 64, 64)).astype(np.uint8)
    data[:, 10:20, 10:20] = 0  # nodata in every band
    path = write_raster(tmp_path / "nd.tif", data, nodata=0)
    s = open_image(path)
    assert s.nodata == (0.0, 0.0, 0.0) and s.dtype == np.uint8
    res = segment(path, "x", model=lambda x, p: torch_ones_like(x[:, :1]) * 5, roi_size=32)
    assert not res.labels[10:20, 10:20].any() and res.labels.sum() == 64 * 64 - 100
    # A dataset mask (GDAL internal mask band) instead of a nodata value:
    masked = tmp_path / "masked.tif"
    with rasterio.open(path) as src:
        profile = src.profile | {"nodata": None}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(masked, "w", **profile) as ds:
            ds.write(rng.integers(1, 200, size=(3, 64, 64)).astype(np.uint8))
            valid = np.full((64, 64), 255, np.uint8)
            valid[40:, 50:] = 0
            ds.write_mask(valid)
    m = open_image(masked)
    assert m.nodata is None and isinstance(m.mask, RasterioValidMask)
    np.testing.assert_array_equal(m.mask[30:50, 45:55], valid[30:50, 45:55] > 0)
    res = segment(masked, "x", model=lambda x, p: torch_ones_like(x[:, :1]) * 5, roi_size=32)
    np.testing.assert_array_equal(res.labels, (valid > 0).astype(np.uint8))


# --- output --------------------------------------------------------------------------------
def test_labels_geotiff_has_the_inputs_crs_transform_and_size(tmp_path, landsat_bands):
    out = tmp_path / "water.tif"
    res = segment(LANDSAT, "water", model=ndwi_model, out=out, probabilities=True)
    assert res.files == [
        out, tmp_path / "water.tif.aux.xml", tmp_path / "water_probabilities.tif",
        tmp_path / "water_report.html",
    ]  # fmt: skip
    assert res.out == tmp_path / "water.tif.zarr"
    with rasterio.open(LANDSAT) as src, rasterio.open(out) as ds:
        assert ds.crs == src.crs and ds.crs.to_wkt() == src.crs.to_wkt()
        assert ds.transform == src.transform
        assert (ds.width, ds.height, ds.count) == (src.width, src.height, 1)
        assert ds.dtypes == ("uint8",) and ds.profile["tiled"] and ds.block_shapes == [(512, 512)]
        assert ds.compression.value == "DEFLATE" and ds.nodata == 255
        assert ds.tags()["LABEL_1"] == "water" and ds.descriptions == ("labels",)
        assert ds.colormap(1)[1][:3] == (230, 159, 0)
        labels = ds.read(1)
    np.testing.assert_array_equal(labels, np.asarray(res.labels))
    np.testing.assert_array_equal(labels == 1, ndwi_mask(landsat_bands))
    assert 0.16 < (labels == 1).mean() < 0.17  # DATA.md: about 16.5 % open water
    with rasterio.open(tmp_path / "water_probabilities.tif") as ds:
        assert ds.transform == Affine(*res.metadata["source_metadata"]["transform"])
        assert ds.dtypes == ("float32",) and ds.descriptions == ("water",)
        np.testing.assert_array_equal(ds.read(1), np.asarray(res.probabilities[0]))
    # The working store keeps the CRS and transform in its attributes.
    attrs = zarr.open_group(res.out, mode="r").attrs["napari_llmseg"]
    with rasterio.open(LANDSAT) as src:
        assert attrs["source_metadata"]["crs_wkt"] == src.crs.to_wkt()
        assert attrs["source_metadata"]["transform"] == list(src.transform)[:6]
    assert attrs["output"] == {"path": str(out), "format": "tiff"}


def res_transform(path):
    with rasterio.open(path) as ds:
        return list(ds.transform)[:6]


def test_zarr_output_keeps_crs_and_transform(tmp_path):
    res = segment(LANDSAT, "water", model=ndwi_model, out=tmp_path / "w.zarr")
    meta = zarr.open_group(tmp_path / "w.zarr", mode="r").attrs["napari_llmseg"]
    assert CRS.from_wkt(meta["source_metadata"]["crs_wkt"]) == UTM
    assert meta["source_metadata"]["transform"] == res_transform(LANDSAT)
    assert res.files == [tmp_path / "w_report.html"]  # the store itself is the output


def test_file_outputs_are_never_overwritten_silently(tmp_path):
    out = tmp_path / "w.tif"
    segment(LANDSAT, "water", model=ndwi_model, out=out)
    stamp = out.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match=r"output '.*w.tif.zarr' already exists"):
        segment(LANDSAT, "water", model=ndwi_model, out=out)
    # the working store is gone but the file is still there: refused too
    import shutil

    shutil.rmtree(tmp_path / "w.tif.zarr")
    with pytest.raises(FileExistsError, match=r"output '.*w.tif' already exists; pass "):
        segment(LANDSAT, "water", model=ndwi_model, out=out)
    with pytest.raises(FileExistsError, match=r"output '.*w.tif' already exists"):
        segment(LANDSAT, "water", model=ndwi_model, out=out, resume=True)
    assert out.stat().st_mtime_ns == stamp
    res = segment(LANDSAT, "water", model=ndwi_model, out=out, overwrite=True)
    assert res.files == [out, tmp_path / "w.tif.aux.xml", tmp_path / "w_report.html"]
    assert out.stat().st_mtime_ns != stamp
    # resuming a complete run leaves its files alone, and writes a newly asked-for one
    stamp = out.stat().st_mtime_ns
    res = segment(LANDSAT, "water", model=ndwi_model, out=out, resume=True, probabilities=True)
    assert res.files == [tmp_path / "w_probabilities.tif", tmp_path / "w_report.html"]
    assert out.stat().st_mtime_ns == stamp
    assert res.info.windows == 0


@pytest.mark.parametrize(
    ("out", "error", "message"),
    [
        ("landsat7_etm.tif", ValueError, r"output '.*landsat7_etm.tif' overlaps the input"),
        ("result.png", ValueError, r"unsupported output '.*result.png': expected a \.zarr "
         r"store, a \.tif/\.tiff file or a \.nii/\.nii\.gz file"),
    ],
)  # fmt: skip
def test_bad_output_paths(tmp_path, out, error, message):
    target = LANDSAT.parent / out if out == "landsat7_etm.tif" else tmp_path / out
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=message):
        segment(LANDSAT, "water", model=ndwi_model, out=target)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (LANDSAT.parent / "landsat7_etm.tif.zarr").exists()


def test_geotiff_without_crs_warns_and_is_written_without(tmp_path, rng):
    img = rng.uniform(0, 1, (40, 48)).astype(np.float32)
    transform = Affine(2.0, 0, 100.0, 0, -2.0, 500.0)
    path = write_raster(tmp_path / "nocrs.tif", img, crs=None, transform=transform)
    with pytest.warns(UserWarning, match=r"'.*nocrs.tif' has no CRS \(coordinate reference "):
        s = open_image(path)
    assert s.metadata["crs_wkt"] is None and s.metadata["transform"] == list(transform)[:6]
    assert "units" not in s.metadata
    with pytest.warns(UserWarning, match="has no CRS"):
        res = segment(path, "bright", model=threshold_model, roi_size=32, out=tmp_path / "o.tif")
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert ds.crs is None and ds.transform == transform
        np.testing.assert_array_equal(ds.read(1), np.asarray(res.labels))


def test_plain_inputs_write_plain_tiled_tiffs(tmp_path, rng):
    import tifffile

    vol = rng.uniform(0, 1, (3, 40, 300)).astype(np.float32)
    res = segment(vol, "bright", model=threshold_model, roi_size=32, out=tmp_path / "v.tif",
                  probabilities=True)  # fmt: skip
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.pages[0].is_tiled
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        np.testing.assert_array_equal(tif.asarray(), np.asarray(res.labels))
    probs = tifffile.imread(tmp_path / "v_probabilities.tif")
    np.testing.assert_array_equal(probs, np.asarray(res.probabilities))


def test_a_failed_write_leaves_no_file(tmp_path):
    class Exploding:
        shape, dtype = (2048, 2048), np.dtype(np.uint8)

        def __init__(self):
            self.reads = 0

        def __getitem__(self, key):
            self.reads += 1
            if self.reads > 2:
                raise OSError("disk unplugged")
            return np.ones((1024, 1024), np.uint8)

    target = tmp_path / "out.tif"
    with pytest.raises(OSError, match="disk unplugged"):
        write_geotiff(target, Exploding(), crs_wkt=UTM.to_wkt(), transform=list(Affine.identity()))
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    with pytest.raises(FileExistsError, match="is a folder; expected a file name"):
        (tmp_path / "dir.tif").mkdir()
        with atomic_path(tmp_path / "dir.tif"):
            pass


def test_without_rasterio_geotiff_is_plain_and_bands_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.warns(UserWarning, match=r"read as a plain TIFF .* pip install "
                      r"'napari-llmseg\[geo\]'"):  # fmt: skip
        s = open_image(LANDSAT)
    assert "crs_wkt" not in s.metadata and s.n_channels == 6
    with pytest.raises(MissingExtraError, match=r"selecting bands of '.*' needs the optional "
                       r"package 'rasterio'.*pip install 'napari-llmseg\[geo\]'"):  # fmt: skip
        open_image(LANDSAT, bands="3,2,1")


def test_unreadable_and_unsupported_rasters(tmp_path, rng):
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"'.*junk.tif' is not a raster rasterio can read"):
        open_image(tmp_path / "junk.tif", bands="1")
    cplx = (rng.normal(size=(1, 8, 8)) + 1j).astype(np.complex64)
    path = write_raster(tmp_path / "c.tif", cplx)
    with pytest.raises(TypeError, match=r"'.*c.tif' has bands of type \['complex64'\]; "
                       r"expected integer or float bands"):  # fmt: skip
        open_image(path)
    with pytest.raises(ValueError, match=r"a GeoTIFF holds \(Y, X\) or \(bands, Y, X\) data, "
                       r"got shape \(1, 2, 8, 8\)"):  # fmt: skip
        write_geotiff(tmp_path / "4d.tif", np.zeros((1, 2, 8, 8), np.uint8), crs_wkt=None,
                      transform=None)  # fmt: skip
    a = open_image(LANDSAT).array
    with pytest.raises(IndexError, match=r"too many indices \(4\) for an array with 3 axes"):
        a[0, 0, 0, 0]


def test_ground_control_points_warn_that_nothing_is_georeferenced(tmp_path, rng):
    from rasterio.control import GroundControlPoint

    path = tmp_path / "gcp.tif"
    gcps = [GroundControlPoint(0, 0, 500000.0, 9000000.0), GroundControlPoint(9, 9, 500090.0,
            8999910.0), GroundControlPoint(0, 9, 500090.0, 9000000.0)]  # fmt: skip
    profile = {"driver": "GTiff", "height": 10, "width": 10, "count": 1, "dtype": "uint8"}
    with warnings.catch_warnings():  # rasterio: "no geotransform" until the GCPs are set
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(rng.integers(0, 9, (1, 10, 10)).astype(np.uint8))
            ds.gcps = (gcps, UTM)
    with pytest.warns(UserWarning, match=r"georeferenced by ground control points, not by an "
                      r"affine transform; outputs carry no georeferencing"):  # fmt: skip
        s = open_image(path)
    assert "transform" not in s.metadata and "crs_wkt" not in s.metadata


def test_geotiff_output_holds_the_post_processed_labels(tmp_path, landsat_bands):
    from scipy import ndimage

    res = segment(LANDSAT, "water", model=ndwi_model, out=tmp_path / "w.tif", min_size=50)
    with rasterio.open(tmp_path / "w.tif") as ds:
        labels = ds.read(1)
    np.testing.assert_array_equal(labels, np.asarray(res.labels))
    raw = ndwi_mask(landsat_bands)
    comp, _ = ndimage.label(raw)
    sizes = np.bincount(comp.ravel())
    small = np.isin(comp, np.flatnonzero(sizes < 50)) & raw
    assert small.any()  # there are small water bodies to remove ...
    np.testing.assert_array_equal(labels == 1, raw & ~small)  # ... and the file lacks them
