"""Streaming sliding-window inference: read ahead, predict, blend, flush finished chunks.

Three stages run at once:

* a reader thread reads one band of the input at a time (a row of windows across the whole
  width, for a group of planes; for 3D windows a slab of the volume, a row of windows along Z
  across the whole Y, X extent; with a chunked source the band ends on a chunk boundary and
  keeps the rows it shares with the next, so every storage chunk is decoded once per plane
  group), cuts windows out of it, replaces padding, non-finite pixels
  and pixels the source marks as carrying no data (:meth:`ImageSource.invalid`, e.g. a
  GeoTIFF's nodata), and lets the model prepare each batch;
* the calling thread runs the model and blends each window's logits, weighted by MONAI's
  importance map, into the output chunks it touches;
* a writer thread turns every chunk whose last window has been blended into probabilities and
  labels and hands it to the sink (memory or a zarr store).

Only unfinished chunks are held in memory, so memory depends on the width of the input (its
cross-section, for 3D windows: :meth:`WindowPlan.open_voxels`), not on its size. The core is
a generator that yields :class:`Progress` after every batch and returns :class:`RunInfo`, so
a GUI worker and a headless caller drive the same code.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from ..io.source import ImageSource
from ..postprocess.labels import threshold_labels
from .allocator import holds_run_allocator
from .normalize import check_float_range
from .predictor import Predictor
from .windows import WindowPlan

#: Budget for blending accumulators of unfinished chunks, used to size plane groups.
OPEN_CHUNK_BUDGET = 256 * 1024**2
#: Budget for finished chunks waiting for the writer thread: up to 32 chunks (all of them
#: for 2D chunks of a few prompts), at least 2 (3D chunks of many prompts are large).
WRITE_QUEUE_BUDGET = 128 * 1024**2


def chunk_bytes(plan: WindowPlan, n_outputs: int) -> int:
    """Bytes of one output chunk's accumulators: ``n_outputs + 1`` float32 sums and a flag
    per voxel."""
    return math.prod(plan.chunks) * ((n_outputs + 1) * 4 + 1)


def write_queue_length(plan: WindowPlan, n_outputs: int) -> int:
    """How many finished chunks may wait for the writer (WRITE_QUEUE_BUDGET, 2 to 32)."""
    return max(2, min(32, WRITE_QUEUE_BUDGET // chunk_bytes(plan, n_outputs)))


@dataclass(frozen=True)
class Progress:
    """Work done so far out of the work of the current stage.

    In the ``"segment"`` stage, counts are windows; in the later ``"instances: ..."`` stages
    they are output chunks.
    """

    done: int
    total: int
    stage: str = "segment"


@dataclass
class RunInfo:
    """What a run did; returned by :func:`run`.

    ``batch_size_used`` is the number of windows the model ran at once when the run ended:
    the requested batch size, or less when the model had to lower it (a backend halves its
    batches after a GPU out-of-memory error, see ``Predictor.batch_limit``); 0 when it is not
    reported (runs on a Dask cluster, whose workers each keep their own).
    """

    windows: int = 0
    total: int = 0
    batches: int = 0
    chunks_written: int = 0
    cancelled: bool = False
    predict_seconds: float = 0.0
    seconds: float = 0.0
    batch_size_used: int = 0


R = TypeVar("R")


def drain(gen: Generator[Any, None, R], on_step: Callable[[Any], Any] | None = None) -> R:
    """Run a generator to its end, handing every yielded value to ``on_step``; its return
    value. How a headless caller drives a run (``segment`` drives ``iter_segment``)."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_step is not None:
            on_step(step)


def relay(
    gen: Generator[tuple[str, int, int], None, R], prefix: str, cancel: Any = None
) -> Generator[Progress, None, R | None]:
    """Re-yield a stage generator's ``(stage, done, total)`` as Progress named ``prefix +
    stage``; when ``cancel`` is set, close it and return None instead of its value."""
    while True:
        try:
            stage, done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(done, total, stage=f"{prefix}{stage}")
        if cancel is not None and cancel.is_set():
            gen.close()
            return None


class CancelFlag(Protocol):
    """Anything with ``is_set()``: a threading.Event, or a distributed.Event adapter."""

    def is_set(self) -> bool: ...


class Sink(Protocol):
    def write(
        self,
        chunk: tuple[int, ...],
        region: tuple[slice, ...],
        prob: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        """Store a finished chunk: probabilities (P, *chunk) and labels (*chunk)."""

    def mark_done(self, chunks: list[tuple[int, ...]]) -> None:
        """Record that these chunks, already written, are complete (for resuming)."""


class MemorySink:
    """Collects the whole result in numpy arrays (the ``out=None`` case)."""

    def __init__(self, shape: tuple[int, ...], n_outputs: int, label_dtype: np.dtype) -> None:
        self.probabilities = np.zeros((n_outputs, *shape), dtype=np.float32)
        self.labels = np.zeros(shape, dtype=label_dtype)

    def write(self, chunk, region, prob, labels) -> None:
        self.probabilities[(slice(None), *region)] = prob
        self.labels[region] = labels

    def mark_done(self, chunks) -> None:
        pass  # nothing to resume from memory


def finalize_chunk(
    num: np.ndarray, den: np.ndarray, bad: np.ndarray | None, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Blended logits -> (probabilities, labels) for one chunk.

    Labels are 0 where no probability exceeds ``threshold``, else 1 + the index of the most
    probable output; non-finite and nodata input pixels (``bad``) are background with
    probability 0.
    """
    from scipy.special import expit

    prob = expit(num / den).astype(np.float32, copy=False)
    if bad is not None:
        prob[:, bad] = 0.0
    return prob, threshold_labels(prob, threshold)


@dataclass
class _Open:
    """Accumulators of one output chunk that still waits for windows."""

    num: np.ndarray
    den: np.ndarray
    remaining: int
    bad: np.ndarray | None = None


@dataclass
class _Batch:
    rows: np.ndarray
    prepared: Any
    bad: np.ndarray | None = field(default=None)


_DONE = object()


def plane_group(source: ImageSource, plan: WindowPlan, n_outputs: int) -> int:
    """How many planes to read at once: the source's chunk depth, within a memory budget."""
    if plan.n_lead != 1 or source.chunks is None:
        return 1
    width = math.prod(plan.plane[1:])
    rows_open = plan.roi[0] + plan.chunks[1]
    per_plane = rows_open * width * (n_outputs + 1) * 4
    return int(max(1, min(source.chunks[0], OPEN_CHUNK_BUDGET // max(per_plane, 1))))


def band_step(source: ImageSource, plan: WindowPlan, group: int) -> int | None:
    """Rows of a source chunk along the tiled axis 0, if bands may end on chunk boundaries.

    A band then holds up to a window and a chunk of rows (rather than a window); None for an
    unchunked source or when such a band of ``group`` planes would exceed OPEN_CHUNK_BUDGET.
    """
    if source.chunks is None:
        return None
    step = int(source.chunks[plan.n_lead])
    rest = math.prod(plan.plane[1:]) * source.n_channels * source.dtype.itemsize
    band_bytes = max(group, 1) * (plan.roi[0] + step) * rest
    return step if 1 < step and band_bytes <= OPEN_CHUNK_BUDGET else None


def batches_to_run(
    plan: WindowPlan, order: np.ndarray, batch_size: int, done: np.ndarray | None
) -> list[np.ndarray]:
    """Split ``order`` into batches; with ``done``, keep only batches touching unfinished chunks.

    Batches are always cut from the full window order, so a resumed run feeds the model
    exactly the batches the uninterrupted run would have, which keeps the output bit-identical.
    """
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if done is None or not done.any():
        return batches
    n_lead = plan.n_lead
    keep = []
    for batch in batches:
        for row in batch:
            lead = tuple(int(i) for i in row[:n_lead])
            pos = tuple(int(i) for i in row[n_lead:])
            if any(not done[lead + c] for c in plan.chunks_of_window(pos)):
                keep.append(batch)
                break
    return keep


class _Reader(threading.Thread):
    """Reads bands of the source and prepares batches of windows, ahead of the model."""

    def __init__(self, source, plan, predictor, batches, group, prefetch):
        super().__init__(name="llmseg-reader", daemon=True)
        self.source, self.plan, self.predictor = source, plan, predictor
        self.batches, self.group = batches, group
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        self._band_group: tuple[int, ...] | None = None  # leading indices of the band
        self._band_rows = (0, 0)  # rows [lo, hi) of the band along the tiled axis 0
        self._band: np.ndarray | None = None
        self._band_bad: np.ndarray | None = None
        self.step = band_step(source, plan, group)
        self.pad = np.asarray(predictor.pad_value(), dtype=np.float32).reshape(-1)
        self.float_input = source.dtype.kind == "f"
        self.wide_float = source.dtype == np.float64  # values may not fit in float32
        self.may_be_invalid = source.may_be_invalid

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for rows in self.batches:
                if self.stop.is_set():
                    return
                if not self._put(self._make_batch(rows)):
                    return
            self._put(_DONE)
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put(err)

    def _band_for(
        self, lead: tuple[int, ...], row: int
    ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
        """The band holding window row ``row`` of the plane group of ``lead``, and its origin.

        A band spans every leading axis (the first one by plane group, the others one index at
        a time), rows along the first tiled axis and the whole extent of the other tiled axes:
        a band of rows of a 2D image, a slab of a volume for 3D windows. ``origin`` is the
        band's first index along every leading axis and the first tiled axis.

        With a chunked source, bands end on the source's chunk boundaries and the next band
        keeps the rows the two share, so every storage chunk is read and decoded once per
        plane group rather than once for each row of windows that overlaps it (three times
        for llmseg-tiny's windows over 512-row chunks).
        """
        plan = self.plan
        start = int(plan.starts[0][row])
        y0, y1 = max(start, 0), min(start + plan.roi[0], plan.plane[0])
        key = ((lead[0] // self.group) * self.group, *lead[1:]) if plan.n_lead else ()
        lo, hi = self._band_rows
        if self._band is None or key != self._band_group or not (lo <= y0 and y1 <= hi):
            self._load_band(key, y0, y1)
        assert self._band is not None
        return self._band, self._band_bad, (*key, self._band_rows[0])

    def _load_band(self, key: tuple[int, ...], y0: int, y1: int) -> None:
        """Make the band cover rows [y0, y1) of the plane group ``key`` (first index along
        every leading axis)."""
        plan = self.plan
        end = y1 if self.step is None else min(-(-y1 // self.step) * self.step, plan.plane[0])
        lo, hi = self._band_rows
        keep = self._band is not None and key == self._band_group and lo <= y0 < hi
        first = hi if keep else y0  # rows already in the band are not read again
        region: tuple[slice, ...] = (slice(first, end),) + (slice(None),) * (len(plan.roi) - 1)
        if plan.n_lead:
            g0 = slice(key[0], min(key[0] + self.group, plan.shape[0]))
            region = (g0, *(slice(i, i + 1) for i in key[1:]), *region)
        data = self.source.read(region)
        bad = self.source.invalid(region, data)
        if keep:
            assert self._band is not None
            axis = plan.n_lead  # the band's row axis
            kept = (slice(None),) * axis + (slice(y0 - lo, None),)
            old_data = self._band[kept]
            old_bad = self._band_bad[kept] if self._band_bad is not None else None
            if old_bad is not None or bad is not None:
                if old_bad is None:
                    old_bad = np.zeros(old_data.shape[:-1], bool)
                if bad is None:
                    bad = np.zeros(data.shape[:-1], bool)
                bad = np.concatenate([old_bad, bad], axis=axis)
            data = np.concatenate([old_data, data], axis=axis)
        self._band, self._band_bad = data, bad
        self._band_group, self._band_rows = key, (y0, end)

    def _make_batch(self, rows: np.ndarray) -> _Batch:
        plan = self.plan
        n_lead = plan.n_lead
        c = self.source.n_channels
        raw = np.empty((len(rows), c, *plan.roi), dtype=np.float32)
        raw[:] = self.pad.reshape((c,) + (1,) * len(plan.roi))
        bad = np.zeros((len(rows), *plan.roi), dtype=bool) if self.may_be_invalid else None
        for i, row in enumerate(rows):
            lead = tuple(int(v) for v in row[:n_lead])
            pos = tuple(int(v) for v in row[n_lead:])
            band, band_bad, origin = self._band_for(lead, pos[0])
            if n_lead:
                plane = tuple(v - o for v, o in zip(lead, origin, strict=False))
                band = band[plane]
                if band_bad is not None:
                    band_bad = band_bad[plane]
            src: list[slice] = []
            dst: list[slice] = []
            for a, (lo, hi) in enumerate(plan.window_box(pos)):
                clo, chi = max(lo, 0), min(hi, plan.plane[a])
                off = origin[-1] if a == 0 else 0
                src.append(slice(clo - off, chi - off))
                dst.append(slice(clo - lo, chi - lo))
            window = np.moveaxis(band[tuple(src)], -1, 0)
            if self.wide_float:
                check_float_range(window, self.source.name)
            raw[(i, slice(None), *dst)] = window  # type: ignore[index]
            if band_bad is not None and bad is not None:
                # Pixels without data: every channel gets the pad value, the pixel is bad.
                nodata = band_bad[tuple(src)]
                if nodata.any():
                    window_index: tuple[Any, ...] = (i, slice(None), *dst)
                    inside = raw[window_index]
                    inside[:, nodata] = self.pad[:, None]
                    bad[window_index[:1] + window_index[2:]] |= nodata
            if self.float_input and bad is not None:
                nonfinite = ~np.isfinite(raw[i])
                if nonfinite.any():
                    raw[i] = np.where(
                        nonfinite, self.pad.reshape((c,) + (1,) * len(plan.roi)), raw[i]
                    )
                    bad[i] |= nonfinite.any(axis=0)
        if bad is not None and not bad.any():
            bad = None
        return _Batch(rows, self.predictor.prepare(raw), bad)

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.join()


#: Longest time a written chunk waits for its done-marker. Markers are written together
#: (one read-modify-write of the done array per DONE_FLUSH_SECONDS rather than one per chunk,
#: each costing as much CPU as writing a chunk of labels); a run killed in between computes
#: those chunks again on resume.
DONE_FLUSH_SECONDS = 1.0


class _Writer(threading.Thread):
    """Finalises finished chunks and writes them, off the model's thread."""

    def __init__(self, plan: WindowPlan, sink: Sink, threshold: float, maxsize: int = 32):
        super().__init__(name="llmseg-writer", daemon=True)
        self.plan, self.sink, self.threshold = plan, sink, threshold
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.written = 0
        self.pending: list[tuple[int, ...]] = []  # written, not yet marked done

    def run(self) -> None:
        flushed = time.monotonic()
        while True:
            try:  # with markers pending, wake up in time to write them
                item = self.queue.get(timeout=DONE_FLUSH_SECONDS if self.pending else None)
            except queue.Empty:
                item = None
            if item is _DONE:
                break
            if item is not None and self.error is None:  # after a failure: drain only
                chunk, acc = item
                try:
                    prob, labels = finalize_chunk(acc.num, acc.den, acc.bad, self.threshold)
                    region = self.plan.chunk_slices(chunk)
                    shape = tuple(s.stop - s.start for s in region)  # leading axes: length 1
                    self.sink.write(chunk, region, prob.reshape(-1, *shape), labels.reshape(shape))
                    self.written += 1
                    self.pending.append(chunk)
                except BaseException as err:
                    self.error = err
            if self.pending and time.monotonic() - flushed >= DONE_FLUSH_SECONDS:
                self._flush()
                flushed = time.monotonic()
        self._flush()  # chunks written before a failure are complete too

    def _flush(self) -> None:
        if not self.pending:
            return
        try:
            self.sink.mark_done(self.pending)
        except BaseException as err:
            self.error = self.error or err
        self.pending = []

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(_DONE)
        self.join()


@holds_run_allocator  # large freed buffers stay in the process while the run lasts
def run(
    source: ImageSource,
    predictor: Predictor,
    plan: WindowPlan,
    sink: Sink,
    *,
    weights: np.ndarray,
    batch_size: int,
    threshold: float,
    done: np.ndarray | None = None,
    cancel: CancelFlag | None = None,
    prefetch: int = 2,
    stitcher: Any = None,
) -> Generator[Progress, None, RunInfo]:
    """Segment ``source`` window by window, yielding progress after every batch.

    Parameters
    ----------
    source : ImageSource
        Input; its spatial shape must equal ``plan.shape``.
    predictor : Predictor
        Model adapter producing logits for batches of windows.
    plan : WindowPlan
        Window placement and output chunking.
    sink : Sink
        Receives every finished chunk exactly once.
    weights : (*roi) ndarray
        Importance map of one window.
    batch_size : int
        Windows per model call.
    threshold : float
        Probability above which a pixel gets a label.
    done : bool ndarray of shape ``plan.grid``, optional
        Chunks already written by an earlier run; they are neither recomputed nor rewritten.
    cancel : threading.Event, optional
        When set, the run stops before the next batch; finished chunks are still written.
    stitcher : WindowStitcher, optional
        Receives every window's objects from an instance backend
        (``predictor.predict_with_instances``), to merge them across windows.

    Returns
    -------
    RunInfo
        Returned as the generator's value (``StopIteration.value``).
    """
    t_start = time.perf_counter()
    info = RunInfo(batch_size_used=batch_size)
    group = plane_group(source, plan, predictor.n_outputs)
    batches = batches_to_run(plan, plan.order(group), batch_size, done)
    info.total = int(sum(len(b) for b in batches))
    reader = _Reader(source, plan, predictor, batches, group, prefetch)
    writer = _Writer(plan, sink, threshold, write_queue_length(plan, predictor.n_outputs))
    n_lead = plan.n_lead
    n_out = predictor.n_outputs
    expected = (n_out, *plan.roi)
    open_chunks: dict[tuple[int, ...], _Open] = {}
    reader.start()
    writer.start()
    try:
        yield Progress(0, info.total)
        for batch in reader:
            if cancel is not None and cancel.is_set():
                info.cancelled = True
                break
            t0 = time.perf_counter()
            found = None
            if stitcher is not None:
                logits, found = predictor.predict_with_instances(batch.prepared)  # type: ignore[attr-defined]
            else:
                logits = predictor.predict(batch.prepared)
            info.predict_seconds += time.perf_counter() - t0
            limit = getattr(predictor, "batch_limit", None)
            if limit is not None:
                info.batch_size_used = min(batch_size, int(limit))
            if logits.shape != (len(batch.rows), *expected):
                if logits.shape[:1] + logits.shape[2:] == (len(batch.rows), *plan.roi):
                    raise ValueError(
                        f"the model returned {logits.shape[1]} output channels for "
                        f"{n_out} prompts; it must give one channel per prompt, in order "
                        f"(logits of shape {tuple(logits.shape)}, expected "
                        f"{(len(batch.rows), *expected)})"
                    )
                raise ValueError(
                    f"the model returned logits of shape {tuple(logits.shape)} for a batch of "
                    f"{len(batch.rows)} windows; expected {(len(batch.rows), *expected)} "
                    "(batch, prompts, *window)"
                )
            for i, row in enumerate(batch.rows):
                lead = tuple(int(v) for v in row[:n_lead])
                pos = tuple(int(v) for v in row[n_lead:])
                box = plan.window_box(pos)
                weighted = logits[i] * weights
                bad = batch.bad[i] if batch.bad is not None else None
                for cidx in plan.chunks_of_window(pos):
                    key = lead + cidx
                    if done is not None and done[key]:
                        continue
                    acc = open_chunks.get(key)
                    if acc is None:
                        region = plan.chunk_slices(key)[n_lead:]
                        cshape = tuple(s.stop - s.start for s in region)
                        acc = _Open(
                            np.zeros((n_out, *cshape), np.float32),
                            np.zeros(cshape, np.float32),
                            plan.window_count(key),
                            np.zeros(cshape, bool) if source.may_be_invalid else None,
                        )
                        open_chunks[key] = acc
                    csl, wsl = [], []
                    for a, (lo, hi) in enumerate(box):
                        c = plan.chunks[n_lead + a]
                        c0 = cidx[a] * c
                        c1 = min(c0 + c, plan.plane[a])
                        s0, s1 = max(lo, c0), min(hi, c1)
                        csl.append(slice(s0 - c0, s1 - c0))
                        wsl.append(slice(s0 - lo, s1 - lo))
                    ct, wt = tuple(csl), tuple(wsl)
                    acc.num[(slice(None), *ct)] += weighted[(slice(None), *wt)]
                    acc.den[ct] += weights[wt]
                    if bad is not None and acc.bad is not None:
                        acc.bad[ct] |= bad[wt]
                    acc.remaining -= 1
                    if acc.remaining == 0:
                        writer.put((key, open_chunks.pop(key)))
                if found is not None:
                    stitcher.add(lead, pos, found[i])
            info.windows += len(batch.rows)
            info.batches += 1
            yield Progress(info.windows, info.total)
    finally:
        reader.close()
        writer.close()
        info.chunks_written = writer.written
        info.seconds = time.perf_counter() - t_start
    if writer.error is not None:
        raise writer.error
    if not info.cancelled and open_chunks:
        raise RuntimeError(f"internal error: {len(open_chunks)} chunks were never completed")
    return info
