"""Instances of a chunked label array: one object, one id, however many chunks it spans.

Three passes over the chunks, never holding more than one chunk (plus halo) of pixels:

1. *Label*: compute the chunk's semantic labels (with any post-processing), label its
   connected regions of equal class (face connectivity), and record per region its size,
   class and first pixel in the global raster order. Local ids go to a scratch array.
2. *Join*: for every pair of face-adjacent chunks, compare the two boundary planes; regions of
   the same class that touch across the face are the same object (an edge of a graph over all
   regions). Connected components of that graph are the objects.
3. *Relabel*: objects smaller than ``min_size`` are dropped, the rest numbered 1..N in raster
   order of their first pixel, and every chunk is rewritten with final ids.

Numbering by first pixel in raster order is what ``skimage.measure.label`` does, so the result
is identical to labelling the whole (post-processed) array in memory at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class InstanceResult:
    """Outcome of :func:`label_instances`."""

    n_objects: int
    classes: dict[int, int]  # final id -> semantic label value
    sizes: dict[int, int] = field(default_factory=dict)  # final id -> pixels
    removed: int = 0  # objects dropped by min_size


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.ceil(s / c) for s, c in zip(shape, chunks, strict=True))


def _region(idx: tuple[int, ...], shape, chunks) -> tuple[slice, ...]:
    return tuple(
        slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape, strict=True)
    )


def chunk_indices(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    return iter(np.ndindex(*_grid(shape, chunks)))


def label_instances(
    semantic: Callable[[tuple[slice, ...]], np.ndarray],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    *,
    scratch: Any,
    instances: Any,
    labels_out: Any | None = None,
    min_size: float = 0,
) -> Generator[tuple[str, int, int], None, InstanceResult]:
    """Label objects of a chunked semantic label image, chunk by chunk.

    Parameters
    ----------
    semantic : callable
        ``semantic(region)`` returns the (post-processed) semantic labels of one chunk region.
        Called once per chunk.
    shape, chunks : tuple of int
        Array shape and chunk shape.
    scratch : array-like
        uint32 array of ``shape`` for local region ids (zarr or numpy), written and re-read.
    instances : array-like
        uint32 array of ``shape`` receiving the final ids.
    labels_out : array-like, optional
        Receives the semantic labels with removed objects cleared.
    min_size : float
        Objects with fewer pixels are removed.

    Yields
    ------
    (stage, done, total)
        After every chunk of every pass; stages are "label", "join" and "relabel".

    Returns
    -------
    InstanceResult
        As the generator's return value.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from skimage.measure import label as sk_label

    grid = _grid(shape, chunks)
    n_chunks = math.prod(grid)
    offsets = np.zeros(n_chunks + 1, dtype=np.int64)
    sizes_parts, classes_parts, first_parts = [], [], []
    flat_of = {idx: k for k, idx in enumerate(np.ndindex(*grid))}

    # Pass 1: local labelling.
    for k, idx in enumerate(np.ndindex(*grid)):
        region = _region(idx, shape, chunks)
        sem = np.asarray(semantic(region))
        local = sk_label(sem, connectivity=1, background=0).astype(np.uint32)
        n = int(local.max())
        scratch[region] = local
        if labels_out is not None:
            labels_out[region] = sem
        offsets[k + 1] = offsets[k] + n
        if n:
            flat = local.ravel()
            ids, first = np.unique(flat, return_index=True)
            first, ids = first[ids > 0], ids[ids > 0]
            coords = np.unravel_index(first, local.shape)
            global_coords = tuple(c + s.start for c, s in zip(coords, region, strict=True))
            first_parts.append(np.ravel_multi_index(global_coords, shape))
            sizes_parts.append(np.bincount(flat, minlength=n + 1)[1:])
            classes_parts.append(sem.ravel()[first])
        yield ("label", k + 1, n_chunks)
    total = int(offsets[-1])
    if total == 0:
        for idx in np.ndindex(*grid):
            instances[_region(idx, shape, chunks)] = 0
        return InstanceResult(0, {})
    sizes = np.concatenate(sizes_parts).astype(np.int64)
    classes = np.concatenate(classes_parts)
    first = np.concatenate(first_parts).astype(np.int64)

    # Pass 2: join regions that touch across chunk faces.
    rows, cols = [], []
    for k, idx in enumerate(np.ndindex(*grid)):
        region = _region(idx, shape, chunks)
        for ax in range(len(shape)):
            if idx[ax] + 1 >= grid[ax]:
                continue
            nidx = tuple(i + (a == ax) for a, i in enumerate(idx))
            nk = flat_of[nidx]
            last = list(region)
            last[ax] = slice(region[ax].stop - 1, region[ax].stop)
            nxt = list(_region(nidx, shape, chunks))
            nxt[ax] = slice(nxt[ax].start, nxt[ax].start + 1)
            a = np.asarray(scratch[tuple(last)]).ravel().astype(np.int64)
            b = np.asarray(scratch[tuple(nxt)]).ravel().astype(np.int64)
            both = (a > 0) & (b > 0)
            if not both.any():
                continue
            ga = offsets[k] + a[both] - 1
            gb = offsets[nk] + b[both] - 1
            same = classes[ga] == classes[gb]
            pairs = np.unique(np.stack([ga[same], gb[same]], axis=1), axis=0)
            rows.append(pairs[:, 0])
            cols.append(pairs[:, 1])
        yield ("join", k + 1, n_chunks)
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
    else:
        r = c = np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(total, total))
    _, comp = connected_components(graph, directed=False)

    # Objects: size, first pixel, class; drop small ones; number in raster order.
    n_comp = int(comp.max()) + 1
    comp_size = np.bincount(comp, weights=sizes, minlength=n_comp).astype(np.int64)
    comp_first = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(comp_first, comp, first)
    comp_class = np.zeros(n_comp, dtype=classes.dtype)
    comp_class[comp] = classes  # regions joined into one object always share a class
    keep = comp_size >= min_size
    order = np.argsort(comp_first[keep], kind="stable")
    kept = np.flatnonzero(keep)[order]
    final = np.zeros(n_comp, dtype=np.uint32)
    final[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    lookup = np.concatenate([[0], final[comp]]).astype(np.uint32)  # index 0: background

    # Pass 3: rewrite every chunk with final ids.
    removed_any = bool((~keep).any())
    for k, idx in enumerate(np.ndindex(*grid)):
        region = _region(idx, shape, chunks)
        local = np.asarray(scratch[region]).astype(np.int64)
        glob = np.where(local > 0, local + offsets[k], 0)
        inst = lookup[glob]
        instances[region] = inst
        if labels_out is not None and removed_any:
            sem = np.asarray(labels_out[region])
            labels_out[region] = np.where((local > 0) & (inst == 0), 0, sem)
        yield ("relabel", k + 1, n_chunks)
    return InstanceResult(
        n_objects=len(kept),
        classes={i + 1: int(comp_class[c]) for i, c in enumerate(kept)},
        sizes={i + 1: int(comp_size[c]) for i, c in enumerate(kept)},
        removed=int((~keep).sum()),
    )


def semantic_source(
    probabilities: Any,
    labels: Any,
    *,
    threshold: float,
    post: Any,
    n_lead: int,
) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """``region -> semantic labels`` after post-processing, exact chunk by chunk.

    Without smoothing or hole filling, the engine's labels are used as they are. Otherwise the
    labels are recomputed from the probabilities (which post-processing never changes, so the
    result is the same however often it runs) on the region grown by the operations' halo in
    the window plane, processed, and cropped back.
    """
    from ..postprocess import fill_holes, smooth_labels, threshold_labels

    shape = tuple(labels.shape)
    plane_dims = len(shape) - n_lead
    if not post.active:
        return lambda region: np.asarray(labels[region])
    halo = post.halo

    def read(region: tuple[slice, ...]) -> np.ndarray:
        grown, crop = [], []
        for ax, sl in enumerate(region):
            h = halo if ax >= n_lead else 0
            lo, hi = max(sl.start - h, 0), min(sl.stop + h, shape[ax])
            grown.append(slice(lo, hi))
            crop.append(slice(sl.start - lo, sl.start - lo + sl.stop - sl.start))
        prob = np.asarray(probabilities[(slice(None), *grown)])
        sem = threshold_labels(prob, threshold)
        if post.smooth:
            sem = smooth_labels(sem, post.smooth, plane_dims)
        if post.fill_holes:
            sem = fill_holes(sem, plane_dims)
        return sem[tuple(crop)]

    return read


#: Default extra pixels around a block for splitting touching objects; objects up to about
#: this radius are split the same way as if the whole image were processed at once.
SPLIT_HALO = 32
#: Depth (in pixels of distance) a distance-transform peak needs to seed its own object.
SPLIT_H = 3.0
#: Gaussian smoothing (pixels) of the distance transform before looking for peaks.
SPLIT_SIGMA = 2.0
#: Largest block (in pixels) processed at once when splitting.
BLOCK_VOXELS = 1 << 22


def processing_block(
    shape: tuple[int, ...], chunks: tuple[int, ...], max_voxels: int = BLOCK_VOXELS
) -> tuple[int, ...]:
    """A block of whole chunks, as large as ``max_voxels`` allows, for halo'd operations.

    Bigger blocks waste less work on halos (a (1, 256, 256) chunk with a 32-pixel halo would
    read 65 planes to produce one); each block still writes whole chunks only.
    """
    block = [min(c, s) for c, s in zip(chunks, shape, strict=True)]
    grown = True
    while grown:
        grown = False
        for ax in sorted(range(len(block)), key=lambda a: block[a]):
            if block[ax] < shape[ax] and math.prod(block) * 2 <= max_voxels:
                block[ax] = min(block[ax] * 2, shape[ax])
                grown = True
                break
    return tuple(block)


def _grow(region: tuple[slice, ...], shape: tuple[int, ...], halo: int):
    grown, crop = [], []
    for sl, size in zip(region, shape, strict=True):
        lo, hi = max(sl.start - halo, 0), min(sl.stop + halo, size)
        grown.append(slice(lo, hi))
        crop.append(slice(sl.start - lo, sl.stop - lo))
    return tuple(grown), tuple(crop)


def split_instances(
    semantic: Callable[[tuple[slice, ...]], np.ndarray],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    *,
    seeds: Any,
    scratch: Any,
    instances: Any,
    labels_out: Any | None = None,
    min_size: float = 0,
    halo: int = SPLIT_HALO,
    h: float = SPLIT_H,
    sigma: float = SPLIT_SIGMA,
) -> Generator[tuple[str, int, int], None, InstanceResult]:
    """Like :func:`label_instances`, but touching objects are split by a watershed.

    Seeds are the regional maxima (deeper than ``h``) of each class's Euclidean distance
    transform, smoothed by a gaussian of ``sigma`` pixels; they are labelled across blocks with
    :func:`label_instances`, so every seed has one global id. Each block of chunks (see
    :func:`processing_block`) is then flooded from the seeds (watershed of the negated
    distance, within the class), grown by ``halo`` pixels so that objects up to that radius
    get the same boundaries as in a whole-image run. Ids follow the raster order of the seeds;
    objects smaller than ``min_size`` are removed and the rest renumbered.
    """
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    def distance(block: np.ndarray, c: int) -> np.ndarray:
        dist = ndimage.distance_transform_edt(block == c)
        return ndimage.gaussian_filter(dist, sigma) if sigma else dist

    chunks = processing_block(shape, chunks)

    def seed_map(region: tuple[slice, ...]) -> np.ndarray:
        grown, crop = _grow(region, shape, halo)
        block = np.asarray(semantic(grown))
        out = np.zeros(block.shape, dtype=block.dtype)
        for c in np.unique(block):
            if c == 0:
                continue
            dist = distance(block, int(c))
            peaks = h_maxima(dist, h).astype(bool) & (block == c)
            out[peaks] = c
        return out[crop]

    seed_result = yield from _prefixed(
        "seeds: ", label_instances(seed_map, shape, chunks, scratch=scratch, instances=seeds)
    )
    n_seeds = seed_result.n_objects
    grid = _grid(shape, chunks)
    n_chunks = math.prod(grid)
    sizes = np.zeros(n_seeds + 1, dtype=np.int64)
    for k, idx in enumerate(np.ndindex(*grid)):
        region = _region(idx, shape, chunks)
        grown, crop = _grow(region, shape, halo)
        block = np.asarray(semantic(grown))
        markers = np.asarray(seeds[grown]).astype(np.int64)
        flooded = np.zeros(block.shape, dtype=np.int64)
        for c in np.unique(block):
            if c == 0:
                continue
            mask = block == c
            flooded += watershed(-distance(block, int(c)), markers * mask, mask=mask)
        core = flooded[crop]
        instances[region] = core.astype(np.uint32)
        if labels_out is not None:
            labels_out[region] = block[crop]
        sizes += np.bincount(core.ravel(), minlength=n_seeds + 1)[: n_seeds + 1]
        yield ("flood", k + 1, n_chunks)
    keep = sizes >= min_size
    keep[0] = False
    lookup = np.zeros(n_seeds + 1, dtype=np.uint32)
    kept = np.flatnonzero(keep)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    if len(kept) != n_seeds:  # renumber without gaps, clear removed objects
        for k, idx in enumerate(np.ndindex(*grid)):
            region = _region(idx, shape, chunks)
            old = np.asarray(instances[region])
            new = lookup[old]
            instances[region] = new
            if labels_out is not None:
                sem = np.asarray(labels_out[region])
                labels_out[region] = np.where((old > 0) & (new == 0), 0, sem)
            yield ("relabel", k + 1, n_chunks)
    return InstanceResult(
        n_objects=len(kept),
        classes={int(lookup[s]): seed_result.classes[int(s)] for s in kept},
        sizes={int(lookup[s]): int(sizes[s]) for s in kept},
        removed=int(n_seeds - len(kept)),
    )


def _prefixed(
    prefix: str, gen: Generator[tuple[str, int, int], None, InstanceResult]
) -> Generator[tuple[str, int, int], None, InstanceResult]:
    """Re-yield a sub-generator's (stage, done, total) with ``prefix`` added to the stage."""
    while True:
        try:
            stage, done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        yield (prefix + stage, done, total)
