"""Polygons from labels: merged across tile seams, holes kept, in the raster's CRS."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.crs import CRS

from napari_llmseg import segment
from napari_llmseg.io._optional import MissingExtraError
from napari_llmseg.io.vector import polygonize, write_vector
from tests.formats_data import LANDSAT, ndwi_model

TRANSFORM = [28.5, 0.0, 288776.25, 0.0, -28.5, 9120760.75]


def read_back(path):
    meta, _, wkb, fields = pyogrio.raw.read(path)
    geoms = shapely.from_wkb(wkb)
    return meta, list(geoms), dict(zip(meta["fields"], fields, strict=True))


@pytest.fixture
def ring_labels():
    """An annulus whose body and hole both cross tile seams, and a bar across all tiles."""
    yy, xx = np.mgrid[:100, :100]
    r = np.hypot(yy - 50, xx - 50)
    lab = np.zeros((100, 100), np.uint8)
    lab[(r < 40) & (r > 15)] = 1
    lab[3:9, 2:97] = 2
    return lab


def test_polygons_crossing_tile_seams_come_out_whole(ring_labels):
    whole = polygonize(ring_labels, tile=1000)
    tiled = polygonize(ring_labels, tile=32)  # seams at 32, 64, 96 cut both shapes
    assert [v for v, _ in tiled] == [1, 2]  # ONE polygon per shape
    for (va, a), (vb, b) in zip(whole, tiled, strict=True):
        assert va == vb and a.is_valid and b.is_valid
        assert a.symmetric_difference(b).area == 0
        assert b.area == float((ring_labels == va).sum())  # pixel coordinates: 1 px = 1
    ring = tiled[0][1]
    assert len(ring.interiors) == 1  # the hole, which crosses seams too, is kept
    assert shapely.Polygon(ring.interiors[0]).area == pytest.approx(
        float((np.hypot(*(np.mgrid[:100, :100] - 50)) <= 15).sum()), rel=0.2
    )
    assert ring.exterior.is_ccw


def test_touching_diagonally_stays_two_polygons_with_4_connectivity():
    lab = np.zeros((8, 8), np.uint8)
    lab[2:4, 2:4] = 1
    lab[4:6, 4:6] = 1  # meets the first square at one corner, which is also a tile corner
    polys = polygonize(lab, tile=4)
    assert len(polys) == 2 and all(p.area == 4 for _, p in polys)


def test_geopackage_and_geojson_in_crs_with_label_and_area(tmp_path, ring_labels):
    crs = CRS.from_epsg(31985).to_wkt()
    for name in ("r.gpkg", "r.geojson"):
        path = write_vector(tmp_path / name, ring_labels, {1: "ring", 2: "bar"},
                            transform=TRANSFORM, crs_wkt=crs, tile=32)  # fmt: skip
        meta, geoms, fields = read_back(path)
        assert CRS.from_user_input(meta["crs"]) == CRS.from_epsg(31985)
        assert list(fields["label"]) == ["ring", "bar"] and list(fields["value"]) == [1, 2]
        assert meta["geometry_type"] == "Polygon"
        for value, geom, area in zip(fields["value"], geoms, fields["area"], strict=True):
            expected = float((ring_labels == value).sum()) * 28.5 * 28.5
            assert area == pytest.approx(expected, rel=1e-9)
            assert geom.area == pytest.approx(expected, rel=1e-9)
        minx, _, _, maxy = shapely.union_all(geoms).bounds
        assert minx == pytest.approx(288776.25 + 2 * 28.5)  # the bar starts at column 2
        assert maxy == pytest.approx(9120760.75 - 3 * 28.5)  # and at row 3


def test_simplify_tolerance_in_crs_units(ring_labels):
    exact = polygonize(ring_labels, transform=TRANSFORM, tile=32)
    simple = polygonize(ring_labels, transform=TRANSFORM, tile=32, simplify=40.0)
    for (_, a), (_, b) in zip(exact, simple, strict=True):
        assert len(b.exterior.coords) < len(a.exterior.coords) and b.is_valid
        assert b.hausdorff_distance(a) <= 40.0 + 1e-6
        assert len(b.interiors) == len(a.interiors)  # holes kept


def test_no_labels_writes_an_empty_layer(tmp_path):
    path = write_vector(tmp_path / "e.gpkg", np.zeros((20, 20), np.uint8), {1: "x"},
                        transform=TRANSFORM, crs_wkt="EPSG:31985")  # fmt: skip
    meta, geoms, _ = read_back(path)
    assert geoms == [] and list(meta["fields"]) == ["label", "value", "area"]


def test_pixel_coordinates_without_georeferencing_warn(tmp_path, ring_labels):
    with pytest.warns(UserWarning, match="no georeferencing; .* in pixel coordinates"):
        path = write_vector(tmp_path / "px.geojson", ring_labels, {1: "ring", 2: "bar"})
    _, geoms, _ = read_back(path)
    assert sorted(g.area for g in geoms) == sorted(
        [float((ring_labels == 1).sum()), float((ring_labels == 2).sum())]
    )
    with pytest.warns(UserWarning, match="a transform but no CRS"):
        write_vector(tmp_path / "nocrs.gpkg", ring_labels, {1: "a", 2: "b"}, transform=TRANSFORM)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"path": "x.shp"}, ValueError,
         r"unsupported vector output '.*x.shp': expected a \.gpkg \(GeoPackage\) or \.geojson"),
        ({"labels": np.zeros((2, 8, 8), np.uint8)}, ValueError,
         r"polygons are made from 2D \(Y, X\) labels, got shape \(2, 8, 8\)"),
        ({"names": {1: "ring"}}, ValueError,
         r"labels hold values \[2\] that have no name in label_names \{1: 'ring'\}"),
        ({"simplify": -1.0}, ValueError, r"simplify must be a tolerance >= 0 in CRS units"),
        ({"tile": 1}, ValueError, r"tile must be an integer >= 2, got 1"),
    ],
)  # fmt: skip
def test_vector_errors_write_nothing(tmp_path, ring_labels, kwargs, error, message):
    path = tmp_path / kwargs.get("path", "v.gpkg")
    with pytest.raises(error, match=message):
        write_vector(
            path,
            kwargs.get("labels", ring_labels),
            kwargs.get("names", {1: "ring", 2: "bar"}),
            transform=TRANSFORM,
            crs_wkt="EPSG:31985",
            simplify=kwargs.get("simplify"),
            tile=kwargs.get("tile", 64),
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_vector_file_is_kept(tmp_path, ring_labels):
    path = tmp_path / "v.gpkg"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"output '.*v.gpkg' already exists; pass "):
        write_vector(path, ring_labels, {1: "a", 2: "b"}, transform=TRANSFORM, crs_wkt=None)
    assert path.read_bytes() == b"precious"
    write_vector(path, ring_labels, {1: "a", 2: "b"}, transform=TRANSFORM,
                 crs_wkt="EPSG:31985", overwrite=True)  # fmt: skip
    assert len(read_back(path)[1]) == 2


def test_missing_pyogrio_names_the_geo_extra(tmp_path, ring_labels, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyogrio.raw", None)
    monkeypatch.setitem(sys.modules, "pyogrio", None)
    with pytest.raises(MissingExtraError, match=r"writing polygons needs the optional package "
                       r"'pyogrio'.*pip install 'napari-llmseg\[geo\]'"):  # fmt: skip
        write_vector(tmp_path / "v.gpkg", ring_labels, {1: "a", 2: "b"})


def test_landsat_water_polygons_match_the_raster_area(tmp_path):
    """The issue's acceptance test: a water mask of the real Landsat tile, polygonised tile by
    tile and read back, has the raster's area within 1 %, in the raster's CRS."""
    res = segment(LANDSAT, "water", model=ndwi_model, out=tmp_path / "water.tif")
    with rasterio.open(tmp_path / "water.tif") as ds:
        labels = ds.read(1)
        crs, transform = ds.crs, ds.transform
    water_pixels = int((labels == 1).sum())
    raster_area = water_pixels * abs(transform.a * transform.e)
    assert 0.16 < water_pixels / labels.size < 0.17
    meta = res.metadata["source_metadata"]
    for tol, rel in ((None, 1e-9), (30.0, 0.01)):
        path = write_vector(tmp_path / f"water_{tol}.gpkg", res.labels, res.label_names,
                            transform=meta["transform"], crs_wkt=meta["crs_wkt"], tile=100,
                            simplify=tol)  # fmt: skip
        info, geoms, fields = read_back(path)
        assert CRS.from_user_input(info["crs"]) == crs
        assert set(fields["label"]) == {"water"}
        assert sum(fields["area"]) == pytest.approx(raster_area, rel=rel)
        assert sum(g.area for g in geoms) == pytest.approx(raster_area, rel=rel)
        assert all(g.is_valid for g in geoms)
    # Tiling changes nothing: the same polygons as polygonising the scene in one piece.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = polygonize(labels, transform=meta["transform"], tile=4096)
        many = polygonize(labels, transform=meta["transform"], tile=64)
    assert len(one) == len(many)
    union_one = shapely.union_all([p for _, p in one])
    union_many = shapely.union_all([p for _, p in many])
    assert union_one.symmetric_difference(union_many).area == pytest.approx(0, abs=1e-3)
