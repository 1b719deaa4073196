"""Text-prompted segmentation of images larger than memory, for napari and the command line.

>>> from napari_llmseg import segment
>>> result = segment("nuclei.tif", "nuclei")          # doctest: +SKIP
>>> result.labels, result.label_names                  # doctest: +SKIP

Importing the package loads neither torch nor Qt; they load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "SegmentOptions",
    "SegmentationResult",
    "__version__",
    "get_model",
    "iter_segment",
    "list_models",
    "open_image",
    "segment",
    "teach",
]

if TYPE_CHECKING:
    from .api import iter_segment, segment
    from .backends.registry import get_model, list_models
    from .io.open import open_image
    from .options import SegmentOptions
    from .results import SegmentationResult
    from .training.teach import teach

_LAZY = {
    "segment": ".api",
    "iter_segment": ".api",
    "SegmentationResult": ".results",
    "SegmentOptions": ".options",
    "get_model": ".backends.registry",
    "list_models": ".backends.registry",
    "open_image": ".io.open",
    "teach": ".training.teach",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
