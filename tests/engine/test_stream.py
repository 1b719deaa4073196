"""Streaming behaviour: progress, cancel, read-ahead, chunk-wise writes, bad pixels, errors."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
import zarr

from napari_llmseg import segment
from napari_llmseg.engine.windows import WindowPlan
from tests.conftest import smooth_model, threshold_model, write_zarr


def test_progress_counts_windows(rng):
    calls = []
    image = rng.normal(size=(3, 100, 100)).astype(np.float32)
    result = segment(
        image,
        "a",
        model=smooth_model,
        roi_size=32,
        batch_size=5,
        progress=lambda d, t: calls.append((d, t)),
    )
    n = WindowPlan((3, 100, 100), (32, 32), 0.25, (1, 100, 100)).n_windows
    assert calls[0] == (0, n)
    assert calls[-1] == (n, n)
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(t == n for _, t in calls)
    assert all(b - a <= 5 for a, b in itertools.pairwise(done))
    assert result.info.windows == n and result.complete


def test_cancel_returns_within_one_batch(rng, tmp_path):
    cancel = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        if done >= 8:
            cancel.set()

    image = rng.normal(size=(4, 128, 128)).astype(np.float32)
    result = segment(
        image,
        "a",
        model=smooth_model,
        roi_size=32,
        batch_size=4,
        out=tmp_path / "o.zarr",
        progress=progress,
        cancel=cancel,
        chunks=32,
    )
    assert not result.complete and result.cancelled
    assert result.info.windows == 8  # the batch after the one that set the event never ran
    assert result.info.total > 8
    store = zarr.open_group(tmp_path / "o.zarr", mode="r")
    assert store.attrs["napari_llmseg"]["status"] == "cancelled"
    done = np.asarray(store["napari_llmseg/chunks_done"][...])
    assert 0 < done.sum() < done.size


def test_chunks_are_written_while_the_run_goes_on(rng, tmp_path, monkeypatch):
    # Done-markers are written in groups, at most DONE_FLUSH_SECONDS after the data; this
    # run is shorter than that, so markers are written as soon as possible here.
    monkeypatch.setattr("napari_llmseg.engine.stream.DONE_FLUSH_SECONDS", 0.0)
    out = tmp_path / "o.zarr"
    written_during_run = []

    def progress(done, total):
        if 0 < done < total:
            written_during_run.append(
                int(np.asarray(zarr.open_array(out / "napari_llmseg/chunks_done")[...]).sum())
            )

    image = rng.normal(size=(6, 64, 64)).astype(np.float32)
    segment(
        image,
        "a",
        model=smooth_model,
        roi_size=32,
        batch_size=2,
        out=out,
        progress=progress,
        chunks=32,
    )
    assert max(written_during_run) > 0  # chunks reach the store before the last window is done
    assert written_during_run == sorted(written_during_run)


def test_reads_happen_on_the_reader_thread(rng, tmp_path):
    vol = rng.normal(size=(4, 64, 64)).astype(np.float32)
    base = write_zarr(tmp_path / "in.zarr", vol, (1, 32, 32))
    threads = set()

    class Recording:
        shape, dtype, chunks = base.shape, base.dtype, base.chunks

        def __getitem__(self, idx):
            threads.add(threading.current_thread().name)
            return base[idx]

    segment(Recording(), "a", model=smooth_model, roi_size=32)
    assert "llmseg-reader" in threads


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_pixels_never_reach_the_model_and_are_background(bad):
    image = np.ones((64, 64), dtype=np.float32)
    image[10:20, 30:40] = bad
    seen_finite = []

    def model(x, prompts):
        seen_finite.append(bool(torch.isfinite(x).all()))
        return threshold_model(x, prompts)

    result = segment(image, "bright", model=model, roi_size=32)
    assert all(seen_finite)
    assert np.isfinite(result.probabilities).all()
    assert (result.labels[10:20, 30:40] == 0).all()
    assert (result.probabilities[:, 10:20, 30:40] == 0).all()
    assert (result.labels[40:, :] == 1).all()


def test_model_errors_propagate_and_threads_stop(rng):
    def broken(x, prompts):
        raise RuntimeError("model exploded")

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="model exploded"):
        segment(rng.normal(size=(64, 64)).astype(np.float32), "a", model=broken, roi_size=32)
    after = {t.name for t in threading.enumerate()}
    assert not ({"llmseg-reader", "llmseg-writer"} & (after - before))


def test_wrong_logit_shape_is_reported():
    def wrong(x, prompts):
        return x[:, :1, :16, :16]

    with pytest.raises(
        ValueError, match=r"logits of shape \(4, 1, 16, 16\).*expected \(4, 1, 32, 32\)"
    ):
        segment(np.zeros((64, 64), np.float32), "a", model=wrong, roi_size=32)


def test_reader_errors_propagate():
    class Failing:
        """Readable for the statistics, failing once the reader thread takes over."""

        shape, dtype = (64, 64), np.dtype(np.float32)

        def __getitem__(self, idx):
            if threading.current_thread().name == "llmseg-reader":
                raise OSError("disk gone")
            return np.zeros(self.shape, self.dtype)[idx]

    with pytest.raises(OSError, match="disk gone"):
        segment(Failing(), "a", model=smooth_model, roi_size=32)


def test_batch_size_used_reports_the_predictor_limit(rng):
    from napari_llmseg.engine.stream import MemorySink, run
    from napari_llmseg.engine.windows import importance_map
    from napari_llmseg.io.open import open_image

    image = rng.normal(size=(64, 64)).astype(np.float32)
    assert (
        segment(image, "a", model=smooth_model, roi_size=32, batch_size=3).info.batch_size_used
        == 3
    )

    class Limited:
        """A predictor whose model lowers its own batch limit on the second batch."""

        n_outputs = 1
        batch_limit: int | None = None

        def pad_value(self):
            return np.zeros(1, np.float32)

        def prepare(self, raw):
            return raw

        def predict(self, prepared):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2:
                self.batch_limit = 1
            return prepared[:, :1]

    plan = WindowPlan((64, 64), (32, 32), 0.25, (64, 64))
    source = open_image(image)
    gen = run(
        source,
        Limited(),
        plan,
        MemorySink((64, 64), 1, np.dtype(np.uint8)),
        weights=importance_map((32, 32), "gaussian"),
        batch_size=4,
        threshold=0.5,
    )
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            info = stop.value
            break
    assert info.windows == plan.n_windows > 4  # more than one batch
    assert info.batch_size_used == 1


@pytest.mark.parametrize("n_prompts", [1, 2, 3, 255])
def test_labels_are_the_most_probable_prompt_above_threshold(rng, n_prompts):
    """threshold_labels against the definition (argmax; ties go to the first prompt)."""
    from napari_llmseg.postprocess.labels import threshold_labels

    prob = rng.random((n_prompts, 40, 30)).astype(np.float32)
    prob[:, :5, :5] = 0.7  # every prompt equally probable: label 1
    prob[:, 5:10, :5] = 0.2  # equally probable but under the threshold: 0
    best = prob.argmax(axis=0)
    top = prob.max(axis=0)
    expected = np.where(top > 0.5, best + 1, 0)
    labels = threshold_labels(prob, 0.5)
    assert labels.dtype == (np.uint8 if n_prompts < 255 else np.uint16)
    assert np.array_equal(labels, expected)
    assert (labels[:5, :5] == 1).all() and (labels[5:10, :5] == 0).all()


class _Recording:
    """A chunked array that records the regions read from it (rows of axis ``axis``)."""

    def __init__(self, base, axis):
        self.base, self.axis, self.rows = base, axis, []
        self.shape, self.dtype, self.chunks = base.shape, base.dtype, base.chunks

    def __getitem__(self, idx):
        if threading.current_thread().name == "llmseg-reader":
            lead = (idx[0].start, idx[0].stop) if self.axis else None
            self.rows.append((lead, idx[self.axis].start, idx[self.axis].stop))
        return self.base[idx]


@pytest.mark.parametrize(
    ("shape", "chunks", "holes"),
    [
        ((6, 200, 96), (3, 64, 96), None),  # plane groups of 3 planes, 64-row chunks
        ((6, 200, 96), (2, 48, 48), "late"),  # NaNs only in a later band: masks join
        ((200, 72), (50, 72), "early"),  # a 2D image; NaNs only in the first band
    ],
)
def test_each_storage_chunk_is_read_once_and_output_is_unchanged(rng, shape, chunks, holes):
    """Bands end on chunk boundaries and keep the rows they share with the next band."""
    vol = rng.normal(size=shape).astype(np.float32)
    if holes == "late":
        vol[:, 150:160, 10:20] = np.nan
    elif holes == "early":
        vol[3:9, 5:15] = np.nan
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype="f4")
    z[...] = vol
    axis = len(shape) - 2
    recorded = _Recording(z, axis)
    kw = {"model": smooth_model, "roi_size": 40, "overlap": 0.5, "batch_size": 3, "chunks": 32}
    chunked = segment(recorded, "a", **kw)
    reference = segment(vol, "a", **kw)  # in memory: bands of exactly the window's rows
    assert np.array_equal(chunked.probabilities, reference.probabilities)
    assert np.array_equal(chunked.labels, reference.labels)
    if holes:
        assert chunked.labels[np.isnan(vol)].max() == 0
    # Every row of every plane group is read exactly once, in order, chunk-aligned reads
    # ending on chunk boundaries (or the image end).
    groups: dict = {}
    for lead, lo, hi in recorded.rows:
        groups.setdefault(lead, []).append((lo, hi))
        assert hi % chunks[axis] == 0 or hi == shape[axis]
    for spans in groups.values():
        assert spans[0][0] == 0 and spans[-1][1] == shape[axis]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    n_groups = -(-shape[0] // chunks[0]) if axis else 1
    assert len(groups) == n_groups


def test_done_markers_are_grouped_and_follow_the_data(rng, monkeypatch):
    from napari_llmseg.engine import stream
    from napari_llmseg.engine.windows import importance_map
    from napari_llmseg.io.open import open_image

    events = []

    class Sink(stream.MemorySink):
        def write(self, chunk, region, prob, labels):
            super().write(chunk, region, prob, labels)
            events.append(("write", chunk))

        def mark_done(self, chunks):
            events.append(("done", list(chunks)))

    def run(flush_seconds):
        monkeypatch.setattr(stream, "DONE_FLUSH_SECONDS", flush_seconds)
        events.clear()
        image = rng.normal(size=(3, 96, 96)).astype(np.float32)
        plan = WindowPlan((3, 96, 96), (32, 32), 0.25, (1, 32, 32))
        predictor = type(
            "P", (), {"n_outputs": 1, "pad_value": lambda s: np.zeros(1, np.float32),
                      "prepare": lambda s, r: r, "predict": lambda s, p: p[:, :1]},
        )()  # fmt: skip
        gen = stream.run(
            open_image(image), predictor, plan, Sink((3, 96, 96), 1, np.dtype(np.uint8)),
            weights=importance_map((32, 32), "gaussian"), batch_size=2, threshold=0.5,
        )  # fmt: skip
        for _ in gen:
            pass
        written = [c for kind, c in events if kind == "write"]
        marks = [c for kind, c in events if kind == "done"]
        assert sorted(written) == sorted(itertools.chain(*marks))  # every chunk, once
        assert len(written) == int(np.prod(plan.grid)) == 27
        seen: set = set()
        for kind, c in events:  # a chunk is marked only after its data was written
            if kind == "write":
                seen.add(c)
            else:
                assert set(c) <= seen
        return marks

    assert len(run(60.0)) == 1  # a short run: all markers in one write, at the end
    assert len(run(0.0)) > 5  # no grouping: markers follow the data as it is written
