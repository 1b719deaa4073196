"""The HTML report: self-contained, the right numbers in the right units, bounded reads."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from napari_llmseg import segment
from napari_llmseg.io.labels import label_color
from napari_llmseg.io.source import ImageSource
from napari_llmseg.measure import format_size
from napari_llmseg.report import (
    area_per_plane,
    collect,
    encode_png,
    histogram,
    is_report,
    pretty_units,
    report_path,
    rgb_channels,
    thumbnail,
    write_report,
)

PNG_RE = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def two_levels(x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """'cells' where 0.5 < x < 1.5, 'bright' where x > 1.5."""
    a = x[:, :1]
    cells = torch.where(a > 1.5, torch.full_like(a, -10.0), (a - 0.5) * 10)
    return torch.cat([cells, (a - 1.5) * 10], 1)[:, : len(prompts)]


def volume() -> tuple[np.ndarray, dict[int, int]]:
    """(6, 64, 80) float32 with two 'cells' boxes and one 'bright' box; voxels per label."""
    vol = np.zeros((6, 64, 80), np.float32)
    vol[1:4, 4:12, 4:14] = 1.0  # cells: 3 * 8 * 10 = 240
    vol[2:6, 30:50, 20:45] = 1.0  # cells: 4 * 20 * 25 = 2000
    vol[0:2, 40:60, 60:70] = 2.0  # bright: 2 * 20 * 10 = 400
    return vol, {1: 2240, 2: 400}


def png_images(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in PNG_RE.findall(text)]


def assert_self_contained(text: str) -> None:
    links = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', text, flags=re.I)
    assert links and all(link.startswith("data:image/png;base64,") for link in links), links
    assert not re.search(r"<(script|link|iframe|object|embed)\b", text, flags=re.I)
    assert "url(" not in text  # no CSS fetches
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")


# --- the report of a run ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("units", "scale", "voxel_size", "size_unit"),
    [
        (("um",) * 3, (2.0, 0.5, 0.5), 0.5, "um^3"),  # microscopy: um^3
        (("mm",) * 3, (2.0, 1.5, 1.5), 4.5, "mm^3"),  # CT/MRI: mL (mm^3 below 0.1 mL)
        (None, (1.0, 1.0, 1.0), 1.0, "voxel"),  # no units: voxels
    ],
)
def test_volume_report_shows_sizes_objects_histograms_profile_and_provenance(
    tmp_path, units, scale, voxel_size, size_unit
):
    vol, voxels = volume()
    meta = {"scale": list(scale), **({"units": list(units)} if units else {})}
    source = ImageSource(vol, name="cells.tif", metadata=meta)
    result = segment(source, ["cells", "bright"], model=two_levels, roi_size=64)
    np.testing.assert_array_equal(np.bincount(result.labels.ravel())[1:], [2240, 400])
    path = result.write_report(tmp_path / "r.html", image=vol)
    text = path.read_text()
    assert_self_contained(text)
    assert is_report(path)
    # per prompt: voxels, % of the volume, volume in the units people read, objects
    for label, prompt, n_objects in ((1, "cells", 2), (2, "bright", 1)):
        n = voxels[label]
        row = re.search(rf"{prompt}</td>(.*?)</tr>", text, flags=re.S)
        assert row is not None
        cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(1))
        assert cells[0] == f"{n:,}" and cells[1] == f"{100 * n / vol.size:.2f} %"
        if size_unit == "voxel":
            assert cells[2] == str(n_objects) and len(cells) == 4
        else:
            assert cells[2] == pretty_units(format_size(n * voxel_size, size_unit))
            assert cells[3] == str(n_objects)
    if size_unit == "mm^3":
        assert "10.08 mL" in text  # 2240 voxels of 4.5 mm^3
    if size_unit == "um^3":
        assert "1,120 µm³" in text and "um^3" not in text.split("<details>")[0]
    if size_unit == "voxel":
        assert "sizes are in voxels" in text
    shown = re.sub(r"<[^>]*>", " ", re.sub(r"<style>.*?</style>", "", text, flags=re.S))
    assert not re.search(r"\d[eE][+-]?\d", shown)  # never scientific notation
    # one histogram per prompt with objects, the area per plane, one thumbnail
    assert text.count('aria-label="histogram of object sizes') == 2
    assert text.count('aria-label="labelled area per plane') == 1
    profile = text[text.index("Labelled area per plane") :]
    assert len(re.findall(r"<polyline points=\"([^\"]*)\"", profile)) == 2
    assert "connected components" in text
    (thumb,) = png_images(text)
    assert thumb.format == "PNG" and thumb.size == (80, 64) and thumb.mode == "RGB"
    # the thumbnail is the plane with most labelled area: plane 2 or 3 (cells 240 + 500 each)
    assert "Plane 2 of 6 along the first axis (the plane with the largest labelled area)" in text
    # provenance
    for expected in ("callable", "tests.test_report.two_levels", "cells, bright", "64 x 64 px",
                     "overlap 0.25", "Threshold</th><td>0.5", "cells.tif", "6 x 64 x 80",
                     "No warnings."):  # fmt: skip
        assert expected in text, expected
    assert "&quot;roi_size&quot;" in text  # the whole run record


def test_thumbnail_overlays_label_colours_on_the_image():
    vol, _ = volume()
    result = segment(vol, ["cells", "bright"], model=two_levels, roi_size=64)
    rgb, step = thumbnail(result.labels, ImageSource(vol), plane=1, stats=result.stats)
    assert step == 1 and rgb.shape == (64, 80, 3)
    assert tuple(rgb[0, 0]) == (0, 0, 0)  # background: the image (0 here)
    inner = rgb[45, 65].astype(float)  # inside 'bright' (label 2), away from its outline
    blend = 0.55 * 255 + 0.45 * np.array(label_color(2)[:3])  # image at 1.0 (white), 45 %
    np.testing.assert_allclose(inner, blend, atol=1)
    edge = rgb[40, 65].astype(float)  # its outline: 90 % colour
    np.testing.assert_allclose(edge, 0.1 * 255 + 0.9 * np.array(label_color(2)[:3]), atol=1)
    alone, _ = thumbnail(result.labels, None, plane=1)
    assert tuple(alone[45, 65]) == label_color(2)[:3] and tuple(alone[0, 0]) == (31, 31, 31)


def test_gis_image_in_hectares_and_km2_downsampled_thumbnail(tmp_path):
    img = np.zeros((700, 1100), np.float32)
    img[100:300, 200:400] = 1.0  # 40,000 px of 900 m^2 = 3,600 ha = 36 km^2
    img[500:510, 900:920] = 1.0  # 200 px = 18 ha
    source = ImageSource(img, name="scene.tif", metadata={"scale": [30.0, 30.0],
                                                          "units": ["m", "m"]})  # fmt: skip
    result = segment(source, "water", model=two_levels, roi_size=256)
    text = write_report(result, tmp_path / "w.html", image=source).read_text()
    assert_self_contained(text)
    assert "3,618 ha (36.18 km²)" in text  # the total area
    assert re.search(r'water</td>.*?<td class="num">2</td>', text, flags=re.S)  # two objects
    assert "water: 2 objects, median 1,809 ha (18.09 km²)" in text
    assert "Labelled area per plane" not in text  # 2D: no profile
    (thumb,) = png_images(text)
    assert thumb.size == (367, 234)  # 1100 x 700 reduced 3 times (ragged edges kept)
    assert "reduced 3 times" in text and "The image," in text


def test_zarr_result_with_instances_writes_report_beside_the_store(tmp_path):
    vol, _ = volume()
    source = ImageSource(vol, name="cells", metadata={"scale": [2.0, 0.5, 0.5],
                                                      "units": ["um"] * 3})  # fmt: skip
    out = tmp_path / "cells.zarr"
    result = segment(source, ["cells", "bright"], model=two_levels, roi_size=64, out=out,
                     instances=True, chunks=32, min_size="5 um^3")  # fmt: skip
    assert isinstance(result.labels, zarr.Array)
    path = tmp_path / "cells_report.html"
    assert report_path(out) == path and result.files == [path]
    text = path.read_text()
    assert_self_contained(text)
    assert "Objects are the instances of the run" in text
    assert "cells: 2 objects, median 560 µm³" in text  # (240 + 2000) / 2 * 0.5 um^3
    assert str(out) in text and "Status</th><td>complete" in text
    assert "Post-processing</th><td>min size 10 voxels</td>" in text  # 5 um^3 of 0.5 um^3
    assert "Objects</th><td>3 kept, 0 removed by min_size" in text
    assert [im.size for im in png_images(text)] == [(80, 64)]
    # the report lies beside the store: the store holds only its OME-Zarr entries
    assert sorted(p.name for p in out.iterdir()) == ["0", "labels", "napari_llmseg", "zarr.json"]


def test_out_file_reports_and_overwrite_rules(tmp_path):
    vol, _ = volume()
    out = tmp_path / "cells.tif"
    report = tmp_path / "cells_report.html"
    res = segment(vol, "cells", model=two_levels, roi_size=64, out=out)
    assert res.files == [out, report] and is_report(report)
    first = report.read_text()
    with pytest.raises(FileExistsError, match=r"output '.*cells.tif.zarr' already exists"):
        segment(vol, "cells", model=two_levels, roi_size=64, out=out)
    # resuming replaces our report; overwriting too
    res = segment(vol, "cells", model=two_levels, roi_size=64, out=out, resume=True)
    assert res.files == [report] and res.info.windows == 0
    # a file of that name that is not ours is never replaced, even with overwrite
    report.write_text("my notes")
    with pytest.raises(FileExistsError, match=r"refusing to overwrite '.*cells_report.html': "
                       r"it is not a report written by napari-llmseg"):  # fmt: skip
        segment(vol, "cells", model=two_levels, roi_size=64, out=out, overwrite=True)
    assert report.read_text() == "my notes"
    res = segment(vol, "cells", model=two_levels, roi_size=64, out=out, overwrite=True,
                  report=False)  # fmt: skip
    assert res.files == [out] and report.read_text() == "my notes"
    report.write_text(first + "<!-- old -->")  # ours again
    with pytest.raises(FileExistsError, match=r"report '.*cells_report.html' already exists; "
                       r"pass overwrite=True"):  # fmt: skip
        res.write_report(report)
    assert res.write_report(report, overwrite=True) == report
    assert "<!-- old -->" not in report.read_text() and is_report(report)


def test_no_report_without_out_or_when_turned_off(tmp_path):
    vol, _ = volume()
    segment(vol, "cells", model=two_levels, roi_size=64)
    segment(vol, "cells", model=two_levels, roi_size=64, out=tmp_path / "a.zarr", report=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_cli_report_flag(tmp_path, capsys):
    from napari_llmseg.cli import main

    np.save(tmp_path / "v.npy", volume()[0])
    args = ["segment", str(tmp_path / "v.npy"), "-p", "x", "--roi", "64", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "a.zarr")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"wrote {tmp_path / 'a.zarr'}", f"wrote {tmp_path / 'a_report.html'}"]
    assert main([*args, "-o", str(tmp_path / "b.zarr"), "--no-report"]) == 0
    assert not (tmp_path / "b_report.html").exists()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r, p: r.write_report(p / "r.txt"), ValueError,
         r"a report is an HTML file: expected a name ending in \.html, got '.*r\.txt'"),
        (lambda r, p: r.write_report(p / "r.html", image=np.zeros((6, 64, 81))), ValueError,
         r"image has spatial shape \(6, 64, 81\); the result has \(6, 64, 80\)"),
        (lambda r, p: r.write_report(p), ValueError, r"expected a name ending in \.html"),
        (lambda r, p: (p / "d.html").mkdir() or r.write_report(p / "d.html"), FileExistsError,
         r"report '.*d\.html' is a folder; expected a file name"),
    ],
)  # fmt: skip
def test_write_report_errors_name_the_bad_value(tmp_path, call, error, message):
    result = segment(volume()[0], "cells", model=two_levels, roi_size=64)
    with pytest.raises(error, match=message):
        call(result, tmp_path)


def test_no_report_of_a_cancelled_run(tmp_path):
    import threading

    cancel = threading.Event()
    cancel.set()
    result = segment(volume()[0], "cells", model=two_levels, roi_size=16, cancel=cancel,
                     out=tmp_path / "c.zarr")  # fmt: skip
    assert not result.complete and result.files == []
    assert not (tmp_path / "c_report.html").exists()
    with pytest.raises(ValueError, match=r"the run was cancelled: its labels are partial, no "
                       r"report \(complete it with resume=True into '.*c.zarr'\)"):  # fmt: skip
        result.write_report(tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_path_for_every_output_kind(tmp_path):
    assert report_path(tmp_path / "nuclei.zarr") == tmp_path / "nuclei_report.html"
    assert report_path(tmp_path / "water.tif") == tmp_path / "water_report.html"
    assert report_path(tmp_path / "brain.nii.gz") == tmp_path / "brain_report.html"
    assert report_path(tmp_path / "result") == tmp_path / "result_report.html"


# --- the parts ---------------------------------------------------------------------------------
class Recorder:
    """A zarr array that records how many elements each read returns."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.chunks = array.shape, array.dtype, array.chunks

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.reads.append(out.size)
        return out


@pytest.mark.parametrize("limit", [3 * 70 * 90, 70 * 90, 1000])  # planes, one plane, rows
@pytest.mark.parametrize("top", [3, 40])  # a comparison per label, or one bincount
def test_area_per_plane_in_bounded_blocks(tmp_path, rng, limit, top):
    labels = rng.integers(0, top + 1, size=(7, 70, 90)).astype(np.uint8)  # values above top too
    z = zarr.create_array(tmp_path / "l.zarr", shape=labels.shape, chunks=(1, 32, 32),
                          dtype=np.uint8)  # fmt: skip
    z[...] = labels
    rec = Recorder(z)
    got = area_per_plane(rec, top - 1, limit=limit)
    expected = np.stack([np.bincount(p.ravel(), minlength=top + 1)[:top] for p in labels])
    expected[:, 0] = 70 * 90 - expected[:, 1:].sum(axis=1)  # column 0: every other pixel
    np.testing.assert_array_equal(got, expected)
    assert max(rec.reads) <= max(limit, 90) and sum(rec.reads) == labels.size


def test_thumbnail_reads_one_plane_in_bands(tmp_path, monkeypatch):
    import napari_llmseg.report as report

    labels = np.zeros((5, 1000, 600), np.uint8)
    labels[2, 100:900, 50:60] = 1  # a thin line survives the reduction (largest label kept)
    z = zarr.create_array(tmp_path / "l.zarr", shape=labels.shape, chunks=(1, 256, 256),
                          dtype=np.uint8)  # fmt: skip
    z[...] = labels
    monkeypatch.setattr(report, "BAND_BYTES", 100 * 600 * 8)
    rec = Recorder(z)
    image = np.full((5, 1000, 600), 100.0, np.float32)
    rgb, step = thumbnail(rec, ImageSource(image), plane=2, size=256)
    assert step == 4 and rgb.shape == (250, 150, 3)
    assert max(rec.reads) <= 100 * 600 and sum(rec.reads) == 1000 * 600  # one plane, in bands
    assert (rgb[25:225, 13] != rgb[0, 0]).any(axis=-1).all()  # the 10 px line, 4x reduced
    assert (rgb[:, 100] == rgb[0, 0]).all()


def test_png_encoder_round_trips(rng):
    rgb = rng.integers(0, 256, size=(37, 53, 3)).astype(np.uint8)
    back = np.asarray(Image.open(io.BytesIO(encode_png(rgb))))
    np.testing.assert_array_equal(back, rgb)
    with pytest.raises(ValueError, match=r"takes an \(h, w, 3\) uint8 image, got shape \(4, 4\)"):
        encode_png(np.zeros((4, 4), np.uint8))


def test_histogram_bins_are_logarithmic_for_wide_ranges():
    counts, edges, log = histogram(np.array([1.0, 2.0, 3.0, 500.0, 1000.0]))
    assert log and counts.sum() == 5 and edges[0] == 1.0 and edges[-1] == 1000.0
    np.testing.assert_allclose(np.diff(np.log10(edges)), np.log10(1000) / 5)
    counts, edges, log = histogram(np.array([4.0, 5.0, 6.0]))
    assert not log and counts.sum() == 3
    counts, edges, log = histogram(np.array([7.0]))
    assert counts.tolist() == [1] and edges[0] < 7 < edges[1]


def test_natural_colours_from_band_descriptions():
    landsat = ["blue", "green", "red", "nir", "swir1", "swir2"]
    assert rgb_channels(6, landsat) == [2, 1, 0]
    assert rgb_channels(6, None) == [0, 1, 2] and rgb_channels(2) == [0]


def test_collect_without_image_draws_labels_alone():
    vol, _ = volume()
    result = segment(vol, ["cells", "bright"], model=two_levels, roi_size=64)
    data = collect(result)
    assert not data.thumbnail_has_image and data.thumbnail_plane == 2
    assert data.plane_pixels is not None and data.plane_pixels[:, 1:].sum() == 2640
    assert data.objects_from == "connected components"
    assert sorted(len(s) for s in data.sizes.values()) == [1, 2]
