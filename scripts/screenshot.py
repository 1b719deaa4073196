"""Screenshot of the viewer after a real run on the nuclei sample, for docs/.

xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py [OUT.png]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from qtpy.QtWidgets import QApplication

import napari
from napari_llmseg._widget import SegmentWidget

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    out = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "viewer-nuclei.png"
    )
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 960)
    viewer.open_sample("napari-llmseg", "nuclei")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Text-prompted segmentation", area="right")
    widget.reset_choices()
    widget.image_layer.value = viewer.layers["nuclei"]
    widget.prompts.value = "nuclei\ngiraffe"
    widget.output.value = ["labels"]
    widget.run_button.changed.emit(True)
    app = QApplication.instance()
    deadline = time.monotonic() + 300
    while (
        widget._worker is not None or not widget.run_button.enabled
    ) and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.05)
    viewer.dims.set_point(0, 30)
    viewer.layers["nuclei labels"].opacity = 0.45
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    print(widget.status.value)
    viewer.close()


if __name__ == "__main__":
    main()
