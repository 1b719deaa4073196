"""Label values, their names and their colours: one convention for every format.

Label ``i`` (``i >= 1``) is ``prompts[i - 1]``; 0 is background. Colours come from one
colour-blind-safe palette (Okabe-Ito) so that a class has the same colour in napari, in an
OME-Zarr ``image-label`` and in a GeoTIFF palette. Label rasters that mark pixels without
input data (GeoTIFF) give them the largest value of their type (:func:`label_nodata`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Names of label 0 and of the no-data value in files that name every value.
BACKGROUND = "background"
NO_DATA = "no data"

#: Distinct colours for labels 1, 2, ... (Okabe-Ito, colour-blind safe), as RGB 0-255.
PALETTE = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (153, 153, 153),
]  # fmt: skip


def label_color(label: int) -> tuple[int, int, int, int]:
    """RGBA (0-255) colour of label value ``label`` (> 0)."""
    return (*PALETTE[(label - 1) % len(PALETTE)], 255)


def label_names_of(prompts: list[str]) -> dict[int, str]:
    """``{1: prompts[0], 2: prompts[1], ...}``."""
    return {i + 1: p for i, p in enumerate(prompts)}


def names_from_json(names: Mapping[str, str]) -> dict[int, str]:
    """Label names read back from JSON, whose keys are strings."""
    return {int(k): str(v) for k, v in names.items()}


def label_nodata(dtype: Any, label_names: Mapping[int, str]) -> int | None:
    """The value that marks pixels without input data in labels of ``dtype``: the largest
    value of the type (255 for uint8, 65535 for uint16); None when a label already uses it."""
    value = int(np.iinfo(np.dtype(dtype)).max)
    return None if any(int(i) >= value for i in label_names) else value
