"""Satellite inputs: one file per band, VRT and JPEG 2000, and the warning about bands that
are not true colour, on the real Landsat-7 tile split the way USGS and ESA ship bands."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp

from napari_llmseg import open_image, segment
from napari_llmseg.cli import main
from napari_llmseg.io.bands import (
    band_name_in,
    colour_of_description,
    colour_of_wavelength,
    identify_sensor,
    true_colour_warning,
)
from napari_llmseg.io.geotiff import RasterioArray
from tests.formats_data import LANDSAT, LANDSAT_DESCRIPTIONS, ndwi_model

#: A Landsat 7 Collection 2 product ID, as USGS names each band file (tile bands 1-5 are
#: Landsat bands 1-5).
L7 = "LE07_L1TP_214065_20000727_20200917_02_T1"
TILE_WARNING = (
    "bands 4,3,2 of 'landsat7_etm.tif' are near-infrared (Landsat 7 ETM+ band 4), red "
    "(Landsat 7 ETM+ band 3), green (Landsat 7 ETM+ band 2), but llmseg-tiny expects true "
    "colour (red, green, blue), the kind of image it was trained on: its results on other "
    "bands are untested; for true colour use --bands 3,2,1 (bands=[3, 2, 1])"
)


@pytest.fixture(scope="module")
def tile() -> np.ndarray:
    with rasterio.open(LANDSAT) as ds:
        return ds.read()  # (6, Y, X)


def band_file(folder: Path, name: str, data: np.ndarray, **changes) -> Path:
    """One band of the tile as its own GeoTIFF, with the tile's georeferencing."""
    with rasterio.open(LANDSAT) as src:
        profile = src.profile | {"count": 1, "interleave": "band"} | changes
    path = folder / name
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    return path


@pytest.fixture
def l7_files(tmp_path, tile) -> dict[int, Path]:
    """Landsat bands 1-4 of the tile, one file each, named as USGS names them."""
    return {n: band_file(tmp_path, f"{L7}_B{n}.TIF", tile[n - 1]) for n in (1, 2, 3, 4)}


@pytest.fixture(scope="module")
def true_colour_result():
    """llmseg-tiny on the tile's bands 3, 2, 1 (true colour), in memory."""
    return segment(LANDSAT, "water", bands="3,2,1")


# --- stacks of band files --------------------------------------------------------------------
def test_band_files_stack_lazily_in_the_order_given(l7_files, tile):
    files = [l7_files[3], l7_files[2], l7_files[1]]
    s = open_image([str(f) for f in files])
    assert isinstance(s.array, RasterioArray) and s.array.paths == tuple(map(str, files))
    assert s.n_channels == 3 and s.spatial_shape == (352, 349) and s.path is None
    assert s.paths == tuple(files)
    region = (slice(30, 200), slice(5, 340))
    np.testing.assert_array_equal(s.read(region), np.moveaxis(tile[[2, 1, 0]], 0, -1)[region])
    assert s.metadata["sources"] == [str(f) for f in files]
    assert s.metadata["band_files"] == [str(f) for f in files]
    assert s.metadata["band_colours"] == ["red", "green", "blue"]
    assert s.metadata["band_evidence"] == [f"Landsat 7 ETM+ band {n}" for n in (3, 2, 1)]
    with rasterio.open(LANDSAT) as ds:
        assert s.metadata["crs_wkt"] == ds.crs.to_wkt()
        assert s.metadata["transform"] == list(ds.transform)[:6]
    # bands= numbers the bands across the files
    picked = open_image([l7_files[4], *files], bands="2,3,4")
    assert picked.metadata["band_files"] == [str(f) for f in files]
    np.testing.assert_array_equal(picked.read(region), s.read(region))


def test_a_stack_segments_exactly_like_the_same_bands_of_one_file(
    tmp_path, l7_files, true_colour_result
):
    files = [l7_files[3], l7_files[2], l7_files[1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # true colour: no warning
        res = segment(files, "water", out=tmp_path / "w.tif", probabilities="float32")
    assert res.warnings == []
    np.testing.assert_array_equal(np.asarray(res.labels), true_colour_result.labels)
    np.testing.assert_array_equal(np.asarray(res.probabilities), true_colour_result.probabilities)
    assert res.metadata["input"] == ", ".join(str(f) for f in files)
    with rasterio.open(tmp_path / "w.tif") as ds, rasterio.open(LANDSAT) as src:
        assert ds.crs == src.crs and ds.transform == src.transform


def test_output_overlapping_any_stacked_file_is_refused(tmp_path, l7_files):
    files = [l7_files[3], l7_files[2], l7_files[1]]
    with pytest.raises(ValueError, match=rf"output '.*{L7}_B2.TIF' overlaps the input "
                       rf"'.*{L7}_B2.TIF'"):  # fmt: skip
        segment(files, "water", model=ndwi_model, out=l7_files[2])


def test_files_on_different_grids_are_refused_naming_the_difference(tmp_path, tile):
    ok = band_file(tmp_path, "B3.tif", tile[2])
    small = band_file(tmp_path, "small.tif", tile[1][:300, :340], height=300, width=340)
    with pytest.raises(ValueError, match=r"cannot stack '.*small.tif' with '.*B3.tif' as "
                       r"bands: its size is 340 x 300 pixels \(width x height\), expected 349 x "
                       r"352; files stacked as bands must share size, CRS and transform .*"
                       r"gdalbuildvrt -separate"):  # fmt: skip
        open_image([ok, small])
    other_crs = band_file(tmp_path, "crs.tif", tile[1], crs=CRS.from_epsg(31984))
    with pytest.raises(ValueError, match=r"'.*crs.tif' .* its CRS is EPSG:31984, expected "
                       r"EPSG:31985"):  # fmt: skip
        open_image([ok, other_crs])
    with rasterio.open(LANDSAT) as src:
        t = src.transform
    shifted = band_file(tmp_path, "shift.tif", tile[1], transform=t @ Affine.translation(1, 0))
    with pytest.raises(ValueError, match=r"'.*shift.tif' .* its transform is \(28\.49.*, "
                       r"288804\.75.*\), expected \(28\.49.*, 288776\.25.*\) \(a, b, c, d, e, "
                       r"f: pixel size and origin\)"):  # fmt: skip
        open_image([ok, shifted])
    np.save(tmp_path / "x.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"only raster files \(\.tif/\.tiff, \.vrt, \.jp2\) can "
                       r"be stacked as bands, got '.*x.npy'"):  # fmt: skip
        open_image([ok, tmp_path / "x.npy"])
    with pytest.raises(FileNotFoundError, match=r"input path does not exist: '.*nope.tif'"):
        open_image([ok, tmp_path / "nope.tif"])
    with pytest.raises(ValueError, match="channel_axis= does not apply to a stack of band "
                       "files, got 0"):  # fmt: skip
        open_image([ok, ok], channel_axis=0)
    with pytest.raises(ValueError, match="image is an empty list"):
        open_image([])


def test_stacked_nodata_and_masks_are_combined(tmp_path, tile):
    a = tile[2].copy()
    a[:10] = 0
    with_nodata = band_file(tmp_path, "a.tif", a, nodata=0)
    masked = tmp_path / "m.tif"
    with rasterio.open(LANDSAT) as src:
        profile = src.profile | {"count": 1, "interleave": "band"}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(masked, "w", **profile) as ds:
            ds.write(tile[1], 1)
            valid = np.full(tile[1].shape, 255, np.uint8)
            valid[:, -20:] = 0
            ds.write_mask(valid)
    s = open_image([with_nodata, masked])
    assert s.nodata == (0.0, None)
    region = (slice(0, 352), slice(0, 349))
    expected = np.zeros(tile[1].shape, bool)
    expected[:10] = True
    expected[:, -20:] = True
    np.testing.assert_array_equal(s.no_data(region), expected)


def test_stack_needs_rasterio(monkeypatch, l7_files):
    import sys

    from napari_llmseg.io._optional import MissingExtraError

    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(MissingExtraError, match=r"stacking 2 band files needs the optional "
                       r"package 'rasterio'"):  # fmt: skip
        open_image([l7_files[1], l7_files[2]])


def test_workers_check_every_stacked_file(tmp_path, l7_files):
    from napari_llmseg.distributed import _prepare_worker

    (tmp_path / "store").mkdir()
    assert _prepare_worker([str(l7_files[1]), str(l7_files[2])], str(tmp_path / "store")) is None
    missing = str(tmp_path / "B9.TIF")
    assert _prepare_worker([str(l7_files[1]), missing], str(tmp_path / "store")) == (
        f"input '{missing}' does not exist on this worker"
    )


# --- VRT and JPEG 2000 -------------------------------------------------------------------------
def write_vrt(path: Path, bands: list[int]) -> Path:
    """A GDAL virtual raster of the tile's ``bands`` (what gdalbuildvrt -b writes)."""
    with rasterio.open(LANDSAT) as src:
        t, crs, (h, w) = src.transform, src.crs.to_wkt(), src.shape
    sources = "".join(
        f'<VRTRasterBand dataType="Byte" band="{i}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{LANDSAT}</SourceFilename>'
        f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for i, b in enumerate(bands, 1)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{crs}</SRS>'
        f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>"
        f"{sources}</VRTDataset>"
    )
    return path


def test_vrt_opens_like_a_geotiff_and_segments(tmp_path, tile, true_colour_result):
    vrt = write_vrt(tmp_path / "rgb.vrt", [3, 2, 1])
    s = open_image(vrt)
    assert isinstance(s.array, RasterioArray) and s.metadata["driver"] == "VRT"
    assert s.path == vrt and s.n_channels == 3
    with rasterio.open(LANDSAT) as ds:
        assert s.metadata["transform"] == pytest.approx(list(ds.transform)[:6])
        assert CRS.from_wkt(s.metadata["crs_wkt"]) == ds.crs
    region = (slice(0, 100), slice(50, 300))
    np.testing.assert_array_equal(s.read(region), np.moveaxis(tile[[2, 1, 0]], 0, -1)[region])
    assert open_image(vrt, bands=[2]).read(region)[..., 0].tolist() == tile[1][region].tolist()
    res = segment(vrt, "water", out=tmp_path / "w.tif")
    np.testing.assert_array_equal(np.asarray(res.labels), true_colour_result.labels)
    with pytest.raises(ValueError, match="channel_axis= does not apply to a raster read "
                       "through rasterio"):  # fmt: skip
        open_image(vrt, channel_axis=2)


def test_sentinel2_jp2_band_files_are_named_by_their_bands(tmp_path, tile):
    granule = "T25MBN_20200727T124311"
    with rasterio.open(LANDSAT) as src:
        profile = {"driver": "JP2OpenJPEG", "height": src.height, "width": src.width,
                   "count": 1, "dtype": "uint16", "crs": src.crs, "transform": src.transform,
                   "QUALITY": 100, "REVERSIBLE": "YES"}  # fmt: skip
    files = {}
    for band, data in (("B08", tile[3]), ("B04", tile[2]), ("B03", tile[1]), ("B02", tile[0])):
        files[band] = tmp_path / f"{granule}_{band}_10m.jp2"  # lossless, as ESA ships them
        with rasterio.open(files[band], "w", **profile) as ds:
            ds.write(data.astype(np.uint16), 1)
    rgb = open_image([files["B04"], files["B03"], files["B02"]])
    assert rgb.metadata["driver"] == "JP2OpenJPEG" and rgb.dtype == np.uint16
    assert rgb.metadata["sensor"] == "Sentinel-2 MSI"
    assert rgb.metadata["band_colours"] == ["red", "green", "blue"]
    np.testing.assert_array_equal(rgb.read((slice(0, 352), slice(0, 349)))[..., 0], tile[2])
    cir = open_image([files["B08"], files["B04"], files["B03"]])
    assert cir.metadata["band_evidence"] == ["Sentinel-2 MSI B08", "Sentinel-2 MSI B04",
                                             "Sentinel-2 MSI B03"]  # fmt: skip
    assert true_colour_warning(cir.metadata, "clipseg") == (
        f"the bands {granule}_B08_10m.jp2, {granule}_B04_10m.jp2, {granule}_B03_10m.jp2 are "
        "near-infrared (Sentinel-2 MSI B08), red (Sentinel-2 MSI B04), green (Sentinel-2 MSI "
        "B03), but clipseg expects true colour (red, green, blue), the kind of image it was "
        "trained on: its results on other bands are untested"  # no blue among them: no advice
    )
    four = open_image([files["B08"], files["B04"], files["B03"], files["B02"]], bands="1,2,3")
    assert true_colour_warning(four.metadata, "m").endswith(
        f"; for true colour use the files in the order {granule}_B04_10m.jp2, "
        f"{granule}_B03_10m.jp2, {granule}_B02_10m.jp2"
    )


# --- what the bands are --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("names", "tags", "sensor"),
    [
        (["LE07_L1TP_214065_20000727_20200917_02_T1_B4.TIF"], {}, ("ETM", "Landsat 7 ETM+")),
        (["LC09_L2SP_214065_20230727_20230729_02_T1_SR_B4.TIF"], {}, ("OLI", "Landsat 9 OLI")),
        (["LC08_L1TP_044034_20200101_20200113_02_T1_B5.TIF"], {}, ("OLI", "Landsat 8 OLI")),
        (["LT05_L2SP_214065_19900727_20200916_02_T1_SR_B3.TIF"], {}, ("TM", "Landsat 5 TM")),
        (["LE70010012003123EDC00_B3.TIF"], {}, ("ETM", "Landsat 7 ETM+")),
        (["landsat7_etm.tif"], {}, ("ETM", "Landsat 7 ETM+")),
        (["scene.tif"], {"SPACECRAFT_ID": "LANDSAT_8"}, ("OLI", "Landsat 8 OLI")),
        (["B04.tif", "S2B_33UUP_20200101_0_L2A"], {}, ("MSI", "Sentinel-2 MSI")),
        (["T33UUP_20200101T100031_B04_10m.jp2"], {}, ("MSI", "Sentinel-2 MSI")),
        (["scene.tif"], {"SPACECRAFT_NAME": "Sentinel-2A"}, ("MSI", "Sentinel-2 MSI")),
        (["tile07_rgb.tif"], {}, None),
        (["LM05_L1TP_214065_19900727_02_T2_B4.TIF"], {}, None),  # MSS: other band numbers
        (["orthophoto_2023.tif"], {"AREA_OR_POINT": "Area"}, None),
        (["landsat78.tif"], {}, None),
    ],
)
def test_sensors_are_identified_by_product_names_only(names, tags, sensor):
    assert identify_sensor(names, tags) == sensor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LC08_L2SP_044034_20200101_20200823_02_T1_SR_B4", "4"),
        ("T33UUP_20200101T100031_B04_10m", "4"),
        ("B8A", "8A"),
        ("SR_B10", "10"),
        ("band 4", None),
        ("B4_B5_ratio", None),
        (None, None),
    ],
)
def test_band_names(text, expected):
    assert band_name_in(text) == expected


@pytest.mark.parametrize(
    ("description", "colour"),
    [
        ("Red", "red"),
        ("Band 4 - NIR", "near-infrared"),
        ("Near-Infrared", "near-infrared"),
        ("Red Edge 1", "red edge"),
        ("SWIR 1", "short-wave infrared"),
        ("Coastal aerosol", "coastal aerosol"),
        ("Thermal infrared", "thermal infrared"),
        ("green", "green"),
        ("infrared", None),
        ("redundant", None),
        ("", None),
    ],
)
def test_descriptions(description, colour):
    assert colour_of_description(description) == colour


def test_wavelengths_colour_interpretation_and_descriptions_name_bands(tmp_path):
    path = tmp_path / "scene.tif"
    grid = {"crs": CRS.from_epsg(32633), "transform": Affine(10, 0, 0, 0, -10, 0)}
    with rasterio.open(path, "w", driver="GTiff", height=8, width=8, count=5, dtype="uint16",
                       **grid) as ds:  # fmt: skip
        ds.write(np.ones((5, 8, 8), np.uint16))
        ds.update_tags(1, ns="IMAGERY", CENTRAL_WAVELENGTH_UM="0.842")  # GDAL >= 3.10
        ds.update_tags(2, WAVELENGTH="665", WAVELENGTH_UNIT="nm")  # GDAL's Sentinel-2 driver
        ds.update_tags(3, wavelength="0.56")  # ENVI, no units: micrometres below 30
        ds.colorinterp = [ColorInterp.gray, ColorInterp.gray, ColorInterp.gray,
                          ColorInterp.swir, ColorInterp.blue]  # fmt: skip
        ds.set_band_description(5, "Blue")
    s = open_image(path)
    assert s.metadata["band_colours"] == [
        "near-infrared", "red", "green", "short-wave infrared", "blue",
    ]  # fmt: skip
    assert s.metadata["band_evidence"] == [
        "central wavelength 842 nm", "central wavelength 665 nm", "central wavelength 560 nm",
        "GDAL colour interpretation 'swir'", "description 'Blue'",
    ]  # fmt: skip
    assert "sensor" not in s.metadata
    rgb = open_image(path, bands="2,3,5").metadata
    assert rgb["band_colours"] == ["red", "green", "blue"]
    assert true_colour_warning(rgb, "llmseg-tiny") is None
    assert colour_of_wavelength(443) == "coastal aerosol" and colour_of_wavelength(705) == (
        "red edge"
    )


def test_red_green_blue_colour_interpretation_alone_proves_nothing(tmp_path, tile):
    """Every PHOTOMETRIC=RGB TIFF calls its first bands red, green, blue: no guess from it."""
    path = tmp_path / "rgb.tif"
    with rasterio.open(LANDSAT) as src:
        grid = {"crs": src.crs, "transform": src.transform}
    with rasterio.open(path, "w", driver="GTiff", height=352, width=349, count=3, dtype="uint8",
                       photometric="RGB", **grid) as ds:  # fmt: skip
        ds.write(tile[[3, 2, 1]])  # actually a false-colour (NIR, red, green) composite
    s = open_image(path, bands="3,2,1")
    with rasterio.open(path) as ds:
        assert [c.name for c in ds.colorinterp] == ["red", "green", "blue"]
    assert s.metadata["band_colours"] == [None, None, None]
    assert true_colour_warning(s.metadata, "llmseg-tiny") is None


# --- the warning -------------------------------------------------------------------------------
def test_landsat7_bands_432_warn_once_in_the_result(tile):
    with pytest.warns(UserWarning) as caught:
        res = segment(LANDSAT, "water", bands="4,3,2")
    messages = [str(w.message) for w in caught if "true colour" in str(w.message)]
    assert messages == [TILE_WARNING]
    assert res.warnings == [TILE_WARNING]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert segment(LANDSAT, "water", model=ndwi_model).warnings == []  # a callable: raw bands
        described = open_image(LANDSAT, bands="4,3,2").metadata
    assert described["band_colours"] == ["near-infrared", "red", "green"]


def test_the_cli_prints_the_warning_before_the_run(tmp_path, capsys):
    out = tmp_path / "w.tif"
    code = main(["segment", str(LANDSAT), "--bands", "4,3,2", "-p", "water", "-o", str(out),
                 "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.splitlines() == [f"napari-llmseg: warning: {TILE_WARNING}"]
    assert captured.out.splitlines()[0] == f"wrote {out}"


def test_the_cli_stacks_several_inputs(tmp_path, capsys, l7_files, true_colour_result):
    out = tmp_path / "w.tif"
    files = [str(l7_files[n]) for n in (3, 2, 1)]
    code = main(["segment", *files, "-p", "water", "-o", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""  # true colour: no warning
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), true_colour_result.labels)
    small = band_file(tmp_path, "small.tif", np.zeros((10, 10), np.uint8), height=10, width=10)
    code = main(["segment", files[0], str(small), "-p", "water", "-o", str(tmp_path / "x.tif")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("napari-llmseg: error: cannot stack '")
    assert len(err.strip().splitlines()) == 1


def test_descriptions_override_the_sensor_numbering(tmp_path, tile):
    """The tile with band descriptions: they decide, whatever the file is called."""
    path = tmp_path / "landsat8_reordered.tif"
    with rasterio.open(LANDSAT) as src:
        profile = src.profile
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(tile)
        for i, d in enumerate(LANDSAT_DESCRIPTIONS, 1):
            ds.set_band_description(i, d)
    meta = open_image(path, bands="4,3,2").metadata
    assert meta["sensor"] == "Landsat 8 OLI"  # by its name; yet its bands say otherwise
    assert meta["band_colours"] == ["near-infrared", "red", "green"]
    assert meta["band_evidence"] == ["description 'nir'", "description 'red'",
                                     "description 'green'"]  # fmt: skip
    assert meta["rgb_hint"] == "--bands 3,2,1 (bands=[3, 2, 1])"
