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
    raw_labels: Any = None,
) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """``region -> semantic labels`` after post-processing, exact chunk by chunk.

    Without smoothing or hole filling, the engine's labels are used as they are. Otherwise the
    engine's labels (``raw_labels``, kept apart from the final ones in a result store; else
    recomputed from the float32 probabilities) are read, which post-processing never changes,
    so the result is the same however often it runs, on the region grown by the operations'
    halo in the window plane, processed, and cropped back.
    """
    from .cleanup import fill_holes, smooth_labels
    from .labels import threshold_labels

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
        if raw_labels is not None:
            sem = np.asarray(raw_labels[tuple(grown)])
        else:
            sem = threshold_labels(np.asarray(probabilities[(slice(None), *grown)]), threshold)
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


#: Two masks of one prompt from overlapping windows (or adjacent planes) are the same object
#: when their IoU in the region both windows saw is at least this.
MATCH_IOU = 0.5


@dataclass
class _Piece:
    """One object found in one window, cropped to its bounding box (image coordinates)."""

    gid: int
    prompt: int
    score: float
    lo: tuple[int, ...]  # bbox start in the tiled axes
    mask: np.ndarray  # bool, bbox-shaped


class WindowStitcher:
    """Merges the objects instance backends find in overlapping windows into global objects.

    Every window *owns* the pixels nearer its centre than any neighbour's (the windows' grid
    cut at the midpoints between centres), so each pixel gets its id from exactly one window.
    Objects seen by two overlapping windows are matched by their IoU within the overlap and
    joined; with a 2D model on a volume, objects in adjacent planes are joined when at least
    half of the smaller one overlaps the other.
    Only the masks of the current and previous row of windows are kept (cropped to their
    bounding boxes), and ids are painted into output chunks that are written as soon as every
    window owning part of them is done.
    """

    def __init__(self, plan: Any, scratch: Any) -> None:
        self.plan = plan
        self.scratch = scratch
        self.n_lead = plan.n_lead
        self.next_id = 1
        self.pieces: dict[tuple, list[_Piece]] = {}  # (lead, pos) -> pieces
        self.prompt_of: list[int] = [0]
        self.first: list[int] = [0]
        self.area: list[int] = [0]
        self.edges: list[tuple[int, int]] = []
        # ownership interval of every window position along each tiled axis
        self.own = []
        for ax, starts in enumerate(plan.starts):
            r, size = plan.roi[ax], plan.plane[ax]
            centres = starts + r / 2.0
            cuts = (centres[:-1] + centres[1:]) / 2.0
            lo = np.concatenate([[0], np.ceil(cuts)]).astype(np.int64)
            hi = np.concatenate([np.ceil(cuts), [size]]).astype(np.int64)
            self.own.append(np.stack([lo, hi], axis=1))
        self.open: dict[tuple, list] = {}  # chunk -> [ids array, remaining owners]

    def _owners(self, chunk: tuple[int, ...]) -> int:
        """How many windows own part of an output chunk (per plane)."""
        count = 1
        region = self.plan.chunk_slices(chunk)[self.n_lead :]
        for ax, sl in enumerate(region):
            own = self.own[ax]
            count *= int(((own[:, 0] < sl.stop) & (own[:, 1] > sl.start)).sum())
        return count

    def add(self, lead: tuple[int, ...], pos: tuple[int, ...], found: Any) -> None:
        """Take the objects one window found (a WindowInstances, window coordinates)."""
        plan = self.plan
        box = plan.window_box(pos)
        clip = [(max(lo, 0), min(hi, plan.plane[a])) for a, (lo, hi) in enumerate(box)]
        pieces = []
        order = np.argsort(-np.asarray(found.scores), kind="stable")
        for k in order:
            m = found.masks[k][
                tuple(slice(c0 - b0, c1 - b0) for (b0, _), (c0, c1) in zip(box, clip, strict=True))
            ]
            if not m.any():
                continue
            idx = np.nonzero(m)
            lo = tuple(int(i.min()) for i in idx)
            hi = tuple(int(i.max()) + 1 for i in idx)
            crop = m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
            glo = tuple(lo[a] + clip[a][0] for a in range(len(lo)))
            gid = self.next_id
            self.next_id += 1
            self.prompt_of.append(int(found.prompt_index[k]) + 1)
            self.first.append(0)
            self.area.append(0)
            prompt = int(found.prompt_index[k]) + 1
            pieces.append(_Piece(gid, prompt, float(found.scores[k]), glo, crop))
        self._match(lead, pos, pieces)
        self.pieces[(lead, pos)] = pieces
        self._paint(lead, pos, pieces)
        self._evict(lead, pos)

    def _match(self, lead: tuple, pos: tuple, pieces: list[_Piece]) -> None:
        for d in itertools_neighbours(len(pos)):
            other = self.pieces.get((lead, tuple(p + o for p, o in zip(pos, d, strict=True))))
            if not other:
                continue
            for a in pieces:
                for b in other:
                    if a.prompt == b.prompt and _iou(a, b) >= MATCH_IOU:
                        self.edges.append((a.gid, b.gid))

    def _paint(self, lead: tuple, pos: tuple, pieces: list[_Piece]) -> None:
        plan = self.plan
        owned = [tuple(self.own[a][i]) for a, i in enumerate(pos)]
        if any(lo >= hi for lo, hi in owned):
            return
        canvas = np.zeros(tuple(hi - lo for lo, hi in owned), dtype=np.uint32)
        for p in reversed(pieces):  # highest score painted last, so it wins overlaps
            src, dst = [], []
            for a, (olo, ohi) in enumerate(owned):
                s0, s1 = max(p.lo[a], olo), min(p.lo[a] + p.mask.shape[a], ohi)
                if s0 >= s1:
                    break
                src.append(slice(s0 - p.lo[a], s1 - p.lo[a]))
                dst.append(slice(s0 - olo, s1 - olo))
            else:
                canvas[tuple(dst)][p.mask[tuple(src)]] = p.gid
        # per-id area and first pixel (raster order, image coordinates)
        ids, first_idx, counts = np.unique(canvas.ravel(), return_index=True, return_counts=True)
        for i, f, c in zip(ids, first_idx, counts, strict=True):
            if i == 0:
                continue
            coords = np.unravel_index(int(f), canvas.shape)
            g = (*lead, *(int(c0) + lo for c0, (lo, _) in zip(coords, owned, strict=True)))
            self.first[i] = int(np.ravel_multi_index(g, plan.shape))
            self.area[i] = int(c)
        # paint into output chunks, writing each when its last owner is done
        for cidx in self._chunks_of(owned):
            key = lead + cidx
            region = plan.chunk_slices(key)[self.n_lead :]
            entry = self.open.get(key)
            if entry is None:
                shape = tuple(s.stop - s.start for s in region)
                entry = self.open[key] = [np.zeros(shape, np.uint32), self._owners(key)]
            csl, wsl = [], []
            for a, (olo, ohi) in enumerate(owned):
                s0, s1 = max(olo, region[a].start), min(ohi, region[a].stop)
                csl.append(slice(s0 - region[a].start, s1 - region[a].start))
                wsl.append(slice(s0 - olo, s1 - olo))
            entry[0][tuple(csl)] = canvas[tuple(wsl)]
            entry[1] -= 1
            if entry[1] == 0:
                full = plan.chunk_slices(key)
                shape = tuple(s.stop - s.start for s in full)
                self.scratch[full] = entry[0].reshape(shape)
                del self.open[key]

    def _chunks_of(self, owned: list[tuple[int, int]]) -> list[tuple[int, ...]]:
        import itertools

        ranges = []
        for a, (lo, hi) in enumerate(owned):
            c = self.plan.chunks[self.n_lead + a]
            ranges.append(range(lo // c, (hi - 1) // c + 1))
        return list(itertools.product(*ranges))

    def _evict(self, lead: tuple, pos: tuple) -> None:
        """Forget windows that no later window can overlap (two rows back)."""
        for key in [k for k in self.pieces if k[0] == lead and k[1][0] < pos[0] - 1]:
            del self.pieces[key]

    def finish(
        self, *, min_size: float = 0
    ) -> Generator[tuple[str, int, int], None, tuple[np.ndarray, np.ndarray, dict[int, int]]]:
        """Join objects across planes, then give every object its final id.

        Returns ``(lookup, sizes, classes)`` as the generator's value: provisional id ->
        final id (0 for dropped objects), the size of every joined object, and final id ->
        prompt number (1-based). Final ids follow the raster order of each object's first
        pixel.
        """
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        plan, n = self.plan, self.next_id
        if self.open:
            raise RuntimeError(f"internal error: {len(self.open)} instance chunks never completed")
        edges = list(self.edges)
        grid = plan.grid
        if self.n_lead:  # link objects of adjacent planes by their overlap
            tiled = list(np.ndindex(*grid[self.n_lead :]))
            planes = list(np.ndindex(*grid[: self.n_lead]))
            for k, lead in enumerate(planes[:-1]):
                nxt = planes[k + 1]
                found = []
                for cidx in tiled:
                    a = np.asarray(self.scratch[plan.chunk_slices(lead + cidx)]).ravel()
                    b = np.asarray(self.scratch[plan.chunk_slices(nxt + cidx)]).ravel()
                    both = (a > 0) & (b > 0)
                    if both.any():
                        found.append(np.stack([a[both], b[both]]).astype(np.int64))
                if found:
                    # counts over the whole plane pair: an object may span several chunks
                    pairs, inter = np.unique(
                        np.concatenate(found, axis=1), axis=1, return_counts=True
                    )
                    for (i, j), c in zip(pairs.T, inter, strict=True):
                        # The overlap coefficient, not IoU: near an object's poles its cross
                        # section shrinks fast, yet it lies inside the neighbouring one.
                        smaller = min(self.area[i], self.area[j])
                        if self.prompt_of[i] == self.prompt_of[j] and c / smaller >= MATCH_IOU:
                            edges.append((int(i), int(j)))
                yield ("link planes", k + 1, len(planes) - 1)
        r = np.array([e[0] for e in edges], dtype=np.int64)
        c = np.array([e[1] for e in edges], dtype=np.int64)
        graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        area = np.asarray(self.area + [0] * (n - len(self.area)), dtype=np.int64)
        painted = area > 0
        painted[0] = False
        first = np.asarray(self.first, dtype=np.int64)
        n_comp = int(comp.max()) + 1
        comp_size = np.bincount(comp[painted], weights=area[painted], minlength=n_comp)
        comp_first = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(comp_first, comp[painted], first[painted])
        comp_prompt = np.zeros(n_comp, dtype=np.int64)
        comp_prompt[comp[1:]] = np.asarray(self.prompt_of[1:], dtype=np.int64)
        keep = (comp_size >= max(min_size, 1)) & (comp_first < np.iinfo(np.int64).max)
        kept = np.flatnonzero(keep)[np.argsort(comp_first[keep], kind="stable")]
        final = np.zeros(n_comp, dtype=np.uint32)
        final[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
        lookup = final[comp]
        lookup[0] = 0
        classes = {i + 1: int(comp_prompt[k]) for i, k in enumerate(kept)}
        return lookup, comp_size, classes


def itertools_neighbours(ndim: int) -> list[tuple[int, ...]]:
    """Grid offsets of windows processed before this one that may overlap it."""
    import itertools

    out = []
    for d in itertools.product((-1, 0, 1), repeat=ndim):
        if d < (0,) * ndim:  # lexicographically earlier: already processed
            out.append(d)
    return out


def _iou(a: _Piece, b: _Piece) -> float:
    lo = [max(x, y) for x, y in zip(a.lo, b.lo, strict=True)]
    hi = [
        min(x + s, y + t)
        for x, s, y, t in zip(a.lo, a.mask.shape, b.lo, b.mask.shape, strict=True)
    ]
    if any(l0 >= h0 for l0, h0 in zip(lo, hi, strict=True)):
        return 0.0
    sa = tuple(slice(l0 - x, h0 - x) for l0, h0, x in zip(lo, hi, a.lo, strict=True))
    sb = tuple(slice(l0 - y, h0 - y) for l0, h0, y in zip(lo, hi, b.lo, strict=True))
    inter = int((a.mask[sa] & b.mask[sb]).sum())
    # IoU within the region both windows saw: the objects' parts in the intersection of boxes
    # are what both windows could see, so compare those parts only.
    union = int((a.mask[sa] | b.mask[sb]).sum())
    return inter / union if union else 0.0
