"""Viewing benchmark: opening a large result in napari; prints one JSON object.

    xvfb-run -a python benchmarks/viewing.py

A 1 x 16384 x 16384 and a 64 x 4096 x 4096 result (labels, mostly empty chunks, 256 MiB and
1 GiB at full resolution) are written as result stores with their pyramids
(``napari_llmseg._demo_store``), and for comparison the same labels as a single full
resolution array (what a store without pyramid gives napari). Each case runs in a fresh child
process: start a viewer (shown, under Xvfb), open the store with the plugin's reader, show it
zoomed out in 2D (and, for the volume, in 3D), and report

  open_to_render_s   seconds from ``viewer.open`` to the first non-empty screenshot
  peak_rss_mb        peak resident set size of the process (including napari itself)
  rss_growth_mb      peak RSS minus RSS just before opening
  level              the pyramid level napari drew (0 = full resolution)

A case that cannot finish (the full resolution of the volume in 3D needs several GB) is
reported with its error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication

path, mode = sys.argv[1], sys.argv[2]
viewer = napari.Viewer(show=True)
for _ in range(5):
    QApplication.processEvents()
import psutil
proc = psutil.Process()
before = proc.memory_info().rss
t0 = time.perf_counter()
try:
    if path.endswith("base.zarr"):
        import zarr
        layer = viewer.add_labels(zarr.open_array(path, mode="r"))
    else:
        (layer,) = viewer.open(path, plugin="napari-llmseg")
    if layer.ndim == 3:  # a plane with objects, found on the coarsest level
        coarse = np.asarray(layer.data[-1] if layer.multiscale else layer.data[:, ::64, ::64])
        per_plane = coarse.reshape(len(coarse), -1).any(axis=1)
        step = layer.data[0].shape[0] // len(coarse) if layer.multiscale else 1
        viewer.dims.set_current_step(0, int(np.argmax(per_plane)) * step)
    viewer.reset_view()
    if mode == "3d":
        viewer.dims.ndisplay = 3
    shot = None
    while time.perf_counter() - t0 < 600:
        QApplication.processEvents()
        shot = viewer.screenshot(canvas_only=True, flash=False)
        if shot[..., :3].std() > 0:
            break
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "open_to_render_s": round(seconds, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "rss_growth_mb": round((peak - before) / 2**20, 1),
        "level": int(layer.data_level) if layer.multiscale else 0,
        "drawn": bool(shot is not None and shot[..., :3].std() > 0),
    }))
except MemoryError as err:
    print(json.dumps({"error": f"MemoryError: {err}"}))
"""


def run_child(path: Path, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-base", action="store_true", help="no full-resolution cases")
    args = parser.parse_args()
    import zarr

    from napari_llmseg._demo_store import large_result_store

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, modes in (
            ("plane_16384", (1, 16384, 16384), ("2d",)),
            ("volume_64x4096", (64, 4096, 4096), ("2d", "3d")),
        ):
            store = large_result_store(Path(tmp) / f"{name}.zarr", shape)
            base = Path(tmp) / f"{name}_base.zarr"
            seg = zarr.open_group(store, mode="r")["labels/segmentation/0"]
            copy = zarr.create_array(base, shape=seg.shape, chunks=seg.chunks, dtype=seg.dtype)
            for z in range(seg.shape[0]):  # chunk-aligned copy of the full resolution
                copy[z] = seg[z]
            for mode in modes:
                out[f"{name}_{mode}_pyramid"] = run_child(store, mode)
                if not args.skip_base:
                    out[f"{name}_{mode}_full_resolution_only"] = run_child(base, mode)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
