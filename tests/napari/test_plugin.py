"""The plugin in a real napari viewer (Qt under Xvfb): samples, reader, widget, writer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_llmseg import segment
from napari_llmseg._widget import SegmentWidget, _camera, uncertainty
from tests.conftest import ROOT

pytestmark = pytest.mark.gui


@pytest.fixture
def notes(monkeypatch):
    """Notifications shown to the user, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []
    notification_manager.notification_ready.connect(
        lambda n: seen.append((str(n.severity), str(n.message)))
    )
    return seen


@pytest.fixture
def viewer_and_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="llmseg")
    return viewer, widget


def run_and_wait(qtbot, widget, timeout=120_000):
    widget.run_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget._worker is not None or widget.run_button.enabled, timeout=5000)
    qtbot.waitUntil(lambda: widget.run_button.enabled and widget._worker is None, timeout=timeout)


def test_manifest_validates():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-llmseg"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


def test_samples_load(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-llmseg", "nuclei")
    viewer.open_sample("napari-llmseg", "satellite")
    nuclei, landsat = viewer.layers["nuclei"], viewer.layers["landsat"]
    assert nuclei.data.shape == (60, 256, 256) and nuclei.data.dtype == np.uint16
    assert landsat.rgb and landsat.data.shape == (352, 349, 3) and landsat.data.dtype == np.uint8
    assert tuple(landsat.scale) == (28.5, 28.5)


def test_run_adds_labels_with_names_scale_and_measurements(
    qtbot, viewer_and_widget, notes, tmp_path
):
    viewer, widget = viewer_and_widget
    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[26:34]
    layer = viewer.add_image(vol, name="nuclei", scale=(2.0, 0.5, 0.5), translate=(10, 0, 0))
    widget.reset_choices()
    widget.image_layer.value = layer
    widget.prompts.value = "nuclei\ngiraffe"
    widget.output.value = ["labels", "probabilities", "uncertainty"]
    run_and_wait(qtbot, widget)
    labels = viewer.layers["nuclei labels"]
    expected = segment(vol, ["nuclei", "giraffe"])
    np.testing.assert_array_equal(np.asarray(labels.data), expected.labels)
    assert tuple(labels.scale) == (2.0, 0.5, 0.5) and tuple(labels.translate) == (10, 0, 0)
    assert list(labels.features["prompt"]) == ["background", "nuclei", "giraffe"]
    assert labels.get_status((0, 0, 0))  # hovering works
    assert labels.colormap.map(np.array([1]))[0][3] == 1.0  # prompts get visible colours
    assert "nuclei probability" in viewer.layers and "nuclei uncertainty" in viewer.layers
    prob = viewer.layers["nuclei probability"]
    stored = np.asarray(prob.data[0] if prob.multiscale else prob.data)  # uint8: round(p * 255)
    np.testing.assert_allclose(stored / 255, expected.probabilities[0], atol=0.5 / 255 + 1e-6)
    assert prob.blending == "translucent" and prob.opacity < 1  # never washes out the scene
    unsure = viewer.layers["nuclei uncertainty"]
    assert unsure.blending == "translucent" and unsure.opacity < 1
    names = [lyr.name for lyr in viewer.layers]
    assert names.index("nuclei uncertainty") < names.index("nuclei labels")  # under the labels
    # measurements: table and report
    table = widget.measurements.to_dict("list")
    assert list(table) == ["prompt", "size", "% of image", "objects", "mean intensity"]
    assert table["prompt"] == ["nuclei", "giraffe"]
    n_voxels = int((expected.labels == 1).sum())
    assert table["size"][0] == f"{n_voxels:,} voxels"  # no units: sizes in voxels
    assert table["% of image"][0] == f"{100 * n_voxels / expected.labels.size:.2f} %"
    assert table["objects"][1] == 0
    assert any("nuclei: " in m and "objects" in m for _, m in notes)
    widget.csv_path.value = tmp_path / "m.csv"
    widget.export_button.changed.emit(True)
    text = (tmp_path / "m.csv").read_text().splitlines()
    assert text[0].startswith("label,prompt,voxels") and text[1].startswith(
        f"1,nuclei,{n_voxels},"
    )


def test_open_report_button_writes_and_opens_the_report(
    qtbot, viewer_and_widget, notes, tmp_path, monkeypatch
):
    import tempfile
    import webbrowser

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    viewer, widget = viewer_and_widget
    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[28:31]
    layer = viewer.add_image(vol, name="nuclei", scale=(0.29, 0.26, 0.26), units=("um",) * 3)
    widget.reset_choices()
    widget.image_layer.value = layer
    assert not widget.report_button.enabled  # nothing to report yet
    run_and_wait(qtbot, widget)
    assert widget.report_button.enabled
    widget.report_button.changed.emit(True)
    # a run without "save to" writes to the temporary folder, its report beside the store
    (written,) = (tmp_path / "tmp" / "napari-llmseg").glob("nuclei-*_report.html")
    assert opened == [written.as_uri()]
    text = written.read_text()
    n = int((np.asarray(viewer.layers["nuclei labels"].data) == 1).sum())
    assert f'<td class="num">{n:,}</td>' in text and "µm³" in text
    assert any(str(written) in m for _, m in notes)
    widget.report_button.changed.emit(True)  # opening again reuses the file
    assert opened == [written.as_uri()] * 2
    # with "save to", the run's own report beside the store is opened
    widget.save_to.value = tmp_path / "saved.zarr"
    run_and_wait(qtbot, widget)
    widget.report_button.changed.emit(True)
    assert opened[-1] == (tmp_path / "saved_report.html").as_uri()
    assert "saved.zarr" in (tmp_path / "saved_report.html").read_text()
    assert len(list((tmp_path / "tmp" / "napari-llmseg").glob("*_report.html"))) == 1


def test_cancel_stops_and_says_so(qtbot, viewer_and_widget, notes):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(
        np.random.default_rng(0).normal(size=(40, 256, 256)).astype(np.float32)
    )
    widget.reset_choices()
    widget.image_layer.value = layer
    widget.roi_size.value = 64
    widget.run_button.changed.emit(True)
    qtbot.waitUntil(
        lambda: widget._progress is not None and widget._progress.n > 0, timeout=60_000
    )
    widget.cancel_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)
    result = widget.last_result
    assert result is not None and not result.complete
    assert result.info.windows < result.info.total
    assert any("cancelled after" in m for _, m in notes)
    assert not any(lyr.name.endswith("labels") for lyr in viewer.layers)


def test_viewer_stays_responsive_during_a_run(qtbot, viewer_and_widget):
    from qtpy.QtCore import QTimer

    viewer, widget = viewer_and_widget
    layer = viewer.add_image(
        np.random.default_rng(1).normal(size=(30, 256, 256)).astype(np.float32)
    )
    widget.reset_choices()
    widget.image_layer.value = layer
    widget.roi_size.value = 64
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget._worker is not None))
    timer.start(20)
    widget.run_button.changed.emit(True)
    qtbot.waitUntil(
        lambda: widget._progress is not None and widget._progress.n > 0, timeout=60_000
    )
    center = _camera(viewer).center
    _camera(viewer).center = (center[0], center[1] + 10, center[2] + 10)  # pan while it runs
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    timer.stop()
    assert sum(ticks) > 5  # the event loop kept running while the worker did
    assert "layer labels" in [lyr.name for lyr in viewer.layers][-1] or any(
        lyr.name.endswith("labels") for lyr in viewer.layers
    )


def test_core_errors_become_notifications(qtbot, viewer_and_widget, notes):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(np.zeros((64, 64), np.float32))
    widget.reset_choices()
    widget.image_layer.value = layer
    widget.prompts.value = "   "
    widget.run_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget._worker is None and widget.run_button.enabled, timeout=30_000)
    assert any(
        sev == "error" and "prompts must be a non-empty string or list of strings" in m
        for sev, m in notes
    )


def test_reader_opens_result_store_and_ome_zarr(make_napari_viewer, tmp_path):
    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[28:31]
    segment(vol, ["nuclei", "giraffe"], out=tmp_path / "res.zarr")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "res.zarr"), plugin="napari-llmseg")
    labels = viewer.layers["res labels"]
    assert list(labels.features["prompt"]) == ["background", "nuclei", "giraffe"]
    assert labels.data.shape == (3, 256, 256)
    assert "nuclei probability" in viewer.layers


def test_writer_roundtrip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((4, 32, 32), np.uint8)
    data[1:3, 4:10, 4:12] = 1
    data[:, 20:30, 20:30] = 2
    layer = viewer.add_labels(
        data, name="cells", scale=(2.0, 0.5, 0.5), units=("um", "um", "um"),
        features={"index": [0, 1, 2], "prompt": ["background", "nuclei", "membrane"]},
    )  # fmt: skip
    written = layer.save(str(tmp_path / "cells.zarr"), plugin="napari-llmseg")
    assert written == [str(tmp_path / "cells.zarr")]
    viewer2 = make_napari_viewer()
    viewer2.open(str(tmp_path / "cells.zarr"), plugin="napari-llmseg")
    back = viewer2.layers["cells"]
    data_back = back.data[0] if back.multiscale else back.data
    np.testing.assert_array_equal(np.asarray(data_back), data)
    assert tuple(back.scale) == (2.0, 0.5, 0.5)
    assert list(back.features["prompt"]) == ["background", "nuclei", "membrane"]


def test_uncertainty_is_binary_entropy_of_least_sure_prompt():
    p = np.array([[[0.5, 1.0, 0.0]], [[0.0, 0.9, 0.0]]], dtype=np.float32)
    h = uncertainty(p)
    np.testing.assert_allclose(h, [[1.0, 0.469, 0.0]], atol=1e-3)


def test_instances_output_and_per_object_measurements(qtbot, viewer_and_widget, tmp_path):
    viewer, widget = viewer_and_widget
    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[24:36]
    layer = viewer.add_image(vol, name="nuclei", scale=(0.29, 0.26, 0.26), units=("um",) * 3)
    widget.reset_choices()
    widget.image_layer.value = layer
    widget.output.value = ["labels", "instances"]
    widget.split.value = True
    widget.min_size.value = "50 um^3"
    run_and_wait(qtbot, widget)
    expected = segment(
        vol, "nuclei", instances=True, split=True, min_size=50 / (0.29 * 0.26 * 0.26)
    )
    inst = viewer.layers["nuclei instances"]
    np.testing.assert_array_equal(np.asarray(inst.data), expected.instances)
    table = widget.measurements.to_dict("list")
    assert list(table) == ["id", "prompt", "size", "centroid", "mean intensity"]
    assert table["id"] == list(range(1, expected.instances.max() + 1))
    assert all(s.endswith(" um^3") for s in table["size"])
    assert min(float(s.split()[0].replace(",", "")) for s in table["size"]) >= 50
    assert "objects" in widget.status.value


def test_runs_write_a_store_shown_at_the_start_and_filling_in(qtbot, viewer_and_widget, notes):
    """Without *save to*, a run writes to a store in the temporary folder, says where as it
    starts, and shows its labels while they are written."""
    import zarr

    viewer, widget = viewer_and_widget
    layer = viewer.add_image(
        tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[20:40], name="small"
    )
    widget.reset_choices()
    widget.image_layer.value = layer
    widget.roi_size.value = 64  # many windows: the run lasts long enough to be watched
    seen: list[str] = []
    widget.run_button.changed.emit(True)
    qtbot.waitUntil(lambda: "writing to" in widget.status.value, timeout=30_000)
    seen.append(widget.status.value)
    qtbot.waitUntil(lambda: any("(running)" in lyr.name for lyr in viewer.layers)
                    or widget._worker is None, timeout=120_000)  # fmt: skip
    running = [lyr for lyr in viewer.layers if "(running)" in lyr.name]
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)
    assert running, "the result layer appears while the run goes on"
    assert isinstance(running[0].data, zarr.Array)
    assert not any("(running)" in lyr.name for lyr in viewer.layers)  # replaced at the end
    labels = viewer.layers["small labels"]
    store = labels.metadata["store"]
    assert store and store.endswith(".zarr") and "napari-llmseg" in store
    assert store in seen[0]  # said when the run started, not only at the end
    assert store in widget.status.value
