"""The command line with GeoTIFF, vector, NIfTI and DICOM inputs and outputs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pyogrio
import pytest
import rasterio

from napari_llmseg.cli import main
from napari_llmseg.measure import format_number, format_size
from tests.formats_data import LANDSAT, MRI_T1, dicom_series, need


def test_landsat_rgb_composite_to_geotiff_probabilities_and_polygons(tmp_path, capsys):
    out, vec = tmp_path / "w.tif", tmp_path / "w.gpkg"
    args = ["--bands", "3,2,1", "-p", "water", "-o", str(out), "--probabilities"]
    args += ["--vector", str(vec), "--simplify", "15", "--quiet"]
    code = main(["segment", str(LANDSAT), *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert lines[:6] == [
        f"wrote {out}",
        f"wrote {out}.aux.xml",  # class names and attribute table, for GDAL and QGIS
        f"wrote {tmp_path / 'w_probabilities.tif'}",
        f"wrote {vec}",
        f"wrote {tmp_path / 'w_report.html'}",
        f"working store {out}.zarr (what --resume completes; delete it when done)",
    ]
    with rasterio.open(LANDSAT) as src, rasterio.open(out) as ds:
        assert ds.crs == src.crs and ds.transform == src.transform
        n = int((ds.read(1) == 1).sum())
        pixel = abs(ds.transform.a * ds.transform.e)
    area = n * pixel
    assert lines[6].startswith(
        f"water: {n:,} pixels ({100 * n / (352 * 349):.2f} % of the image) = "
        f"{format_size(area, 'm^2')}, "
    )
    assert " ha (" in lines[6] and " km^2)" in lines[6]  # areas in hectares and km^2
    meta = pyogrio.read_info(vec)
    assert meta["crs"] == "EPSG:31985" and list(meta["fields"]) == ["label", "value", "area"]
    assert "segmenting" not in captured.err  # --quiet


def test_nifti_slab_with_a_ct_window_and_ml_summary(tmp_path, capsys):
    src = nib.load(need(MRI_T1, "mricron-data"))
    slab = nib.Nifti1Image(np.asarray(src.dataobj)[40:136, 60:156, 88:90], src.affine, src.header)
    nib.save(slab, tmp_path / "slab.nii.gz")
    out = tmp_path / "seg.nii.gz"
    code = main(["segment", str(tmp_path / "slab.nii.gz"), "-p", "tissue", "-o", str(out),
                 "--window", "40,80", "--roi", "96", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert lines[:2] == [f"wrote {out}", f"wrote {tmp_path / 'seg_report.html'}"]
    img = nib.load(out)
    n = int((np.asarray(img.dataobj) == 1).sum())
    assert lines[3].startswith(
        f"tissue: {n:,} voxels ({100 * n / (96 * 96 * 2):.2f} % of the volume) = "
        f"{format_number(n / 1000)} mL, "
    )
    report = (tmp_path / "seg_report.html").read_text()  # the report reads in mL too
    assert f'<td class="num">{format_number(n / 1000)} mL</td>' in report
    assert "CT window level 40, width 80 HU" in report
    assert np.array_equal(img.affine, nib.load(tmp_path / "slab.nii.gz").affine)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bands", "7"], "band 7 is out of range for"),
        (["--bands", "thermal"], "no band of"),
        (["--window", "liver"], "window must be a preset (bone, soft-tissue, lung, brain)"),
        (["--simplify", "5"], "--simplify applies to --vector output"),
        (["--vector", "v.shp"], "unsupported vector output"),
        (["--vector", "v.gpkg", "--simplify", "-2"], "--simplify must be a tolerance >= 0"),
        (["-o", "OUT/x.png"], "unsupported output"),
    ],
)
def test_format_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    args = [a.replace("OUT", str(tmp_path)) if a.startswith("OUT") else a for a in args]
    args = [str(tmp_path / a) if a.startswith("v.") else a for a in args]
    out = [] if "-o" in args else ["-o", str(tmp_path / "o.tif")]
    code = main(["segment", str(LANDSAT), "-p", "water", *out, "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("napari-llmseg: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_vector_needs_2d_and_mixed_dicom_is_named(tmp_path, capsys):
    dicom_series(tmp_path / "ct", n=3, series_uid="1.2.3.4")
    code = main(["segment", str(tmp_path / "ct"), "-p", "x", "-o", str(tmp_path / "o.nii.gz"),
                 "--vector", str(tmp_path / "o.gpkg")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "o.gpkg') needs a 2D image; " in err and "(3, 128, 128)" in err
    dicom_series(tmp_path / "mr", n=2, template="MR_small.dcm", series_uid="1.2.3.5")
    for f in (tmp_path / "mr").iterdir():
        f.rename(tmp_path / "ct" / f"mr_{f.name}")
    (tmp_path / "mr").rmdir()
    code = main(["segment", str(tmp_path / "ct"), "-p", "x", "-o", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "mixes 2 DICOM series: 1.2.3.4 (CT '', 3 files); 1.2.3.5" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def test_missing_extra_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rasterio", None)
    code = main(["segment", str(LANDSAT), "--bands", "3,2,1", "-p", "w", "-o",
                 str(tmp_path / "o.zarr")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'napari-llmseg[geo]'" in err


def test_existing_vector_file_is_refused_before_the_run(tmp_path, capsys):
    vec = tmp_path / "w.gpkg"
    vec.write_bytes(b"keep me")
    code = main(["segment", str(LANDSAT), "--bands", "3,2,1", "-p", "water", "-o",
                 str(tmp_path / "w.tif"), "--vector", str(vec)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"output '{vec}' already exists; pass overwrite=True" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.gpkg"]
    assert vec.read_bytes() == b"keep me"
