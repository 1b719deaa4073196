"""Interactive latencies in a real napari viewer (run under Xvfb); prints one JSON object.

    xvfb-run -a python benchmarks/interactive.py [--repeats 7]

- preview_s: from the last change of the view (a new plane) to the preview layer updated, for
  a 1024 x 1024 view of a 2 x 1024 x 1024 volume tiled from the bundled nuclei volume, with
  llmseg-tiny (loaded once, as the widget keeps it); the debounce delay is included. Median,
  min and max of ``--repeats`` plane changes, each after the previous preview is shown.
- teach_to_preview_s: from pressing Teach (strokes painted on one plane) to the first preview
  computed with the taught model.
- timer_lateness_ms: a 50 ms QTimer runs on the GUI thread throughout; p50/p95/max of how late
  each tick came, during previews and during a full run of the volume (the event loop must
  stay responsive: the work happens on worker threads).

These are absolute times: run on a quiet machine (nothing else using the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class Lateness:
    """A 50 ms repeating timer recording how late each tick is."""

    def __init__(self, interval_ms: int = 50) -> None:
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000
        self.samples: list[float] = []
        self._last = None
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.samples.append(max(0.0, now - self._last - self.interval) * 1000)
        self._last = now

    def start(self) -> None:
        self.samples.clear()
        self._last = None
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        s = sorted(self.samples) or [0.0]
        return {"p50": round(s[len(s) // 2], 1), "p95": round(s[int(0.95 * (len(s) - 1))], 1),
                "max": round(s[-1], 1), "ticks": len(self.samples)}  # fmt: skip


def wait(app, condition, timeout: float = 300.0) -> None:
    t0 = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the viewer did not get there in time")


def main() -> None:
    import tifffile
    import torch
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage as ndi

    import napari
    from napari_llmseg._widget import PREVIEW_DELAY_MS, SegmentWidget, _camera

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    nuclei = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")
    vol = np.stack([np.tile(nuclei[20 + z], (4, 4))[:1024, :1024] for z in range(2)])
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1200)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="llmseg")
    layer = viewer.add_image(vol, name="nuclei")
    widget.reset_choices()
    widget.image_layer.value = layer
    app = QApplication.instance()
    viewer.reset_view()
    _camera(viewer).zoom *= 0.8  # the whole 1024 x 1024 plane on screen
    timer = Lateness()

    widget.preview_checkbox.value = True  # the first preview loads the model
    wait(app, lambda: widget.last_preview is not None and widget._preview_worker is None)
    timer.start()
    times, sizes = [], []
    for i in range(args.repeats):
        before = widget.last_preview
        t0 = time.perf_counter()
        viewer.dims.set_current_step(0, (i + 1) % 2)
        wait(app, lambda b=before: widget.last_preview is not b and widget._preview_worker is None)
        times.append(time.perf_counter() - t0)
        sizes.append(widget.last_preview.labels.shape)
    during_previews = timer.stop()

    # teach from strokes on the current plane, then the first preview with the taught model
    plane = int(viewer.dims.current_step[0])
    smooth = ndi.gaussian_filter(vol[plane].astype(np.float32), 1.5)
    truth = smooth > np.percentile(smooth, 90)
    widget.prompts.value = "bright blobs"
    wait(app, lambda: widget._preview_worker is None)
    widget.corrections_button.changed.emit(True)
    painted = np.zeros(vol.shape, np.uint8)
    painted[plane][ndi.binary_erosion(truth, iterations=2)] = 1
    ring = ndi.binary_dilation(truth, iterations=6) & ~ndi.binary_dilation(truth, iterations=3)
    painted[plane][ring] = 2
    viewer.layers["corrections"].data = painted
    wait(app, lambda: widget._preview_worker is None and not widget._preview_timer.isActive())
    before = widget.last_preview
    t0 = time.perf_counter()
    widget.teach_button.changed.emit(True)
    wait(app, lambda: widget.taught is not None)
    taught_s = time.perf_counter() - t0
    wait(app, lambda: widget.last_preview is not before and widget._preview_worker is None
         and widget._model_spec() is widget.taught)  # fmt: skip
    teach_to_preview = time.perf_counter() - t0
    widget.preview_checkbox.value = False

    # a full run of the volume: the GUI keeps ticking
    widget.output.value = ["labels"]
    timer.start()
    t0 = time.perf_counter()
    widget.run_button.changed.emit(True)
    wait(app, lambda: widget._worker is None and widget.last_result is not None
         and widget.last_result.complete)  # fmt: skip
    run_s = time.perf_counter() - t0
    during_run = timer.stop()
    print(json.dumps({
        "benchmark": "interactive",
        "torch_threads": torch.get_num_threads(),
        "view_px": list(sizes[0]),
        "preview_s": {"median": round(statistics.median(times), 3),
                      "min": round(min(times), 3), "max": round(max(times), 3),
                      "all": [round(t, 3) for t in times]},
        "debounce_ms": PREVIEW_DELAY_MS,
        "teach_s": round(taught_s, 2),
        "teach_to_preview_s": round(teach_to_preview, 2),
        "full_run_s": round(run_s, 2),
        "timer_lateness_ms": {"during_previews": during_previews, "during_full_run": during_run},
    }, indent=1))  # fmt: skip
    viewer.close()


if __name__ == "__main__":
    main()
