"""A large, mostly empty result store, for tests and benchmarks of viewing (not user API).

Writing a real 1 GiB result takes minutes; viewing does not care how the labels were found,
so this writes a handful of chunks through the store's own sink and builds its pyramid the
way a run does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def large_result_store(
    path: str | Path,
    shape: tuple[int, int, int] = (64, 4096, 4096),
    *,
    chunks: tuple[int, int, int] = (1, 512, 512),
    objects: int = 40,
    scale: tuple[float, float, float] = (2.0, 0.5, 0.5),
    seed: int = 0,
) -> Path:
    """Create a result store of ``shape`` (labels only) with ``objects`` discs painted in
    random chunks, and its pyramid; returns its path."""
    from .engine.store import OutputStore
    from .engine.stream import drain

    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks, strict=True))
    attrs = {
        "prompts": ["nuclei"],
        "label_names": {"1": "nuclei"},
        "source_metadata": {"scale": list(scale), "units": ["um"] * 3},
    }
    store = OutputStore.create(
        Path(path), shape=shape, n_outputs=1, chunks=chunks, grid=grid, n_lead=1,
        label_dtype=np.dtype(np.uint8), attrs=attrs, probabilities="none",
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: chunks[1], : chunks[2]]
    radius = min(chunks[1:]) * 0.4
    disc = (((yy - chunks[1] / 2) ** 2 + (xx - chunks[2] / 2) ** 2) < radius**2).astype(np.uint8)
    written = []
    for _ in range(objects):
        c = tuple(int(rng.integers(g)) for g in grid)
        region = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(c, chunks, shape))
        size = tuple(r.stop - r.start for r in region)
        store.write(c, region, np.zeros((1, *size), np.float32), disc[None, : size[1], : size[2]])
        written.append(c)
    store.mark_done(written)
    drain(store.build_pyramid())
    store.update_attrs(status="complete")
    return Path(path)
