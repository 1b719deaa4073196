"""Screenshots of the interactive loop on the T1 MRI, for the README and docs/teach.md.

xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_loop.py [OUT_DIR]

1. "cerebellum" typed with Live preview on: llmseg-tiny does not know it (the warning under
   the prompts) and labels much of the brain;
2. strokes painted on plane 40 (1 inside the cerebellum, 2 in a ring around it), Teach: the
   preview of another plane (34) follows the taught model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication
from scipy import ndimage as ndi

import napari
from napari_llmseg._widget import SegmentWidget
from napari_llmseg.training.data import load

ROOT = Path(__file__).resolve().parents[1]


def settle(app, condition=lambda: True, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    t1, masks = load("t1-mri-cerebellum")
    truth = masks["cerebellum"] > 0
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 960)
    layer = viewer.add_image(t1, name="T1 MRI", scale=(1.0, 1.0, 1.0), units=("mm",) * 3)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Text-prompted segmentation", area="right")
    widget.reset_choices()
    widget.image_layer.value = layer
    app = QApplication.instance()
    viewer.dims.set_current_step(0, 34)
    widget.prompts.value = "cerebellum"
    widget.preview_checkbox.value = True
    settle(app, lambda: widget.last_preview is not None and widget._preview_worker is None)
    settle(app, lambda: "cerebellum" in widget.prompt_notes.value, timeout=30)
    viewer.screenshot(str(out / "loop-1-preview.png"), canvas_only=False)
    before = widget.last_preview
    widget.corrections_button.changed.emit(True)
    painted = np.zeros(t1.shape, np.uint8)
    for z in (30, 40, 50):
        painted[z][ndi.binary_erosion(truth[z], iterations=3)] = 1
        ring = ndi.binary_dilation(truth[z], iterations=8)
        painted[z][ring & ~ndi.binary_dilation(truth[z], iterations=3)] = 2
    viewer.layers["corrections"].data = painted
    widget.teach_button.changed.emit(True)
    settle(app, lambda: widget.taught is not None)
    settle(app, lambda: widget.last_preview is not before and widget._preview_worker is None)
    viewer.layers.selection.active = layer
    viewer.screenshot(str(out / "loop-2-taught.png"), canvas_only=False)
    print(widget.status.value)
    # round two, as a user would: paint 2 over what the preview of plane 34 got wrong, 1 over
    # what it missed, and teach again
    shown = widget.last_preview.labels > 0
    wrong = ndi.binary_erosion(shown & ~truth[34], iterations=1)
    missed = ndi.binary_erosion(truth[34] & ~shown, iterations=1)
    painted[34][wrong] = 2
    painted[34][missed] = 1
    viewer.layers["corrections"].data = painted
    before = widget.last_preview
    first = widget.taught
    widget.teach_button.changed.emit(True)
    settle(app, lambda: widget.taught is not first)
    settle(app, lambda: widget.last_preview is not before and widget._preview_worker is None)
    viewer.dims.set_current_step(0, 26)
    settle(app, lambda: widget.last_preview.view.plane == 26 and widget._preview_worker is None)
    viewer.layers.selection.active = layer
    viewer.screenshot(str(out / "loop-3-second-round.png"), canvas_only=False)
    print(widget.status.value)
    print(f"wrote {out}/loop-*.png")
    viewer.close()


if __name__ == "__main__":
    main()
