"""3D windows stream in bounded memory; runs that cannot fit are refused before they start."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest
import torch

from napari_llmseg import segment
from napari_llmseg.api import DEFAULT_CHUNKS
from napari_llmseg.engine import memory, stream
from napari_llmseg.engine.predictor import CallablePredictor
from napari_llmseg.engine.store import OutputStore
from napari_llmseg.engine.stream import drain, run
from napari_llmseg.engine.windows import WindowPlan
from napari_llmseg.io.open import open_image
from tests.conftest import smooth_model, write_zarr


def simulated_open_voxels(plan: WindowPlan, group: int = 1) -> int:
    """Most voxels of open output chunks when windows are blended in the engine's order
    (each window's chunks are opened, then it is blended; a chunk closes with its last
    window)."""
    remaining: dict = {}
    size: dict = {}
    peak = 0
    for row in plan.order(group):
        lead = tuple(int(v) for v in row[: plan.n_lead])
        pos = tuple(int(v) for v in row[plan.n_lead :])
        keys = [lead + c for c in plan.chunks_of_window(pos)]
        for key in keys:
            if key not in remaining:
                remaining[key] = plan.window_count(key)
                size[key] = int(np.prod([s.stop - s.start for s in plan.chunk_slices(key)]))
        peak = max(peak, sum(size.values()))
        for key in keys:
            remaining[key] -= 1
            if remaining[key] == 0:
                del remaining[key], size[key]
    assert not remaining
    return peak


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "chunks", "group"),
    [
        ((200, 96, 80), (32, 32, 32), 0.25, (32, 96, 80), 1),
        ((200, 96, 80), (48, 32, 40), 0.5, (16, 40, 40), 1),
        ((64, 64, 64), (96, 16, 16), 0.25, (32, 32, 32), 1),  # window deeper than the volume
        ((6, 300, 120), (64, 64), 0.25, (1, 100, 120), 3),  # 2D windows, plane groups
        ((300, 257), (64, 64), 0.75, (17, 64), 1),
        ((5, 7, 90, 40), (20, 20), 0.25, (1, 1, 30, 40), 1),  # two leading axes
    ],
)
def test_open_chunks_stay_within_the_bound(shape, roi, overlap, chunks, group):
    plan = WindowPlan(shape, roi, overlap, chunks)
    simulated = simulated_open_voxels(plan, group)
    bound = plan.open_voxels(group)
    assert simulated <= bound
    assert bound <= 2 * simulated  # and the bound is not far off
    assert bound < np.prod(shape) or shape[plan.n_lead] <= roi[0] + 2 * chunks[plan.n_lead]


def _peak_bytes(tmp_path, depth: int) -> tuple[int, int, int]:
    """(traced peak, volume bytes, the engine's own estimate) of the engine running 3D windows
    over a (depth, 48, 64) zarr volume into a zarr store, with the API's default 3D chunks."""
    rng = np.random.default_rng(depth)
    shape = (depth, 48, 64)
    src = write_zarr(tmp_path / f"in{depth}.zarr", rng.normal(size=shape).astype(np.float32),
                     (32, 48, 64))  # fmt: skip
    plan = WindowPlan(shape, (32, 32, 32), 0.25, tuple(min(c, s) for c, s in
                                                       zip(DEFAULT_CHUNKS[3], shape)))  # fmt: skip
    store = OutputStore.create(
        tmp_path / f"o{depth}.zarr", shape=shape, n_outputs=1, chunks=plan.chunks,
        grid=plan.grid, n_lead=0, label_dtype=np.dtype(np.uint8),
        attrs={"label_names": {"1": "a"}},
    )  # fmt: skip
    predictor = CallablePredictor(lambda x: torch.tanh(x), ["a"], 1)
    tracemalloc.start()
    try:
        info = drain(run(open_image(src), predictor, plan, store, weights=plan.weights(),
                         batch_size=4, threshold=0.5))  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.windows == plan.n_windows >= 6 * (depth // 32)
    assert store.labels.chunks == (32, 48, 64)
    assert store.done_grid().all()
    window, chunks = memory.run_memory(plan, n_channels=1, n_outputs=1, batch_size=4)
    band = 2 * 64 * 48 * 64 * 4  # a window and a source chunk of planes, and a copy
    return peak, depth * 48 * 64 * 4, 3 * window + chunks + band  # batches: 2 read ahead


def test_3d_windows_hold_only_the_open_chunks(tmp_path, monkeypatch):
    """The numpy memory the engine allocates (tracemalloc: its buffers and zarr's decoded
    chunks; not torch's own) stays the same for a volume four times as deep, and a fraction of
    the volume: it holds the output chunks of a few slabs (open, or finished and waiting for
    the writer), a band of input and a few batches, not the volume. (The whole-input
    statistics ``segment()`` computes first are exact, from every voxel, up to 2**24 voxels
    and from a sample above: not measured here.)

    The writer's queue is held to 4 MiB (4 of these small chunks, instead of 32): with a
    model this fast the writer falls behind and its queue fills, and the volumes would have
    to be much deeper for 32 chunks to be a small part of them. Real 3D chunks (32 x 256 x
    256) are large enough for the default 128 MiB budget to hold them to a handful.
    """
    monkeypatch.setattr(stream, "WRITE_QUEUE_BUDGET", 4 * 2**20)
    _peak_bytes(tmp_path, 32)  # imports (scipy, codecs) allocate on first use: not measured
    shallow, _, shallow_estimate = _peak_bytes(tmp_path, 1024)
    deep, volume, estimate = _peak_bytes(tmp_path, 4096)
    print(f"traced peak {deep / 2**20:.1f} MiB for {volume / 2**20:.0f} MiB (estimate "
          f"{estimate / 2**20:.1f}), {shallow / 2**20:.1f} MiB for {volume / 4 / 2**20:.0f} "
          "MiB")  # fmt: skip
    assert estimate == shallow_estimate  # what the engine holds does not depend on the depth
    assert shallow < 1.5 * estimate and deep < 1.5 * estimate, (shallow, deep, estimate)
    assert deep < 0.3 * volume, (deep, volume)


def test_windows_too_large_for_memory_are_refused_before_starting(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 1024**2)
    vol = np.zeros((64, 64, 64), np.float32)
    message = (
        "not enough memory for these windows: a batch of 4 windows of 64 x 64 x 64 with 1 "
        "input channel(s) and 2 output(s) needs 4 x (1 + 2) x 262,144 x 4 bytes = 12.0 MiB, "
        "and the open output chunks about 3.2 MiB, but 8.0 MiB is available; lower roi_size, "
        "batch_size or chunks"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        segment(vol, ["a", "b"], model=smooth_model, roi_size=(64, 64, 64),
                out=tmp_path / "o.zarr")  # fmt: skip
    assert not (tmp_path / "o.zarr").exists()
    # the same windows one at a time fit
    result = segment(vol, ["a", "b"], model=smooth_model, roi_size=(64, 64, 64), batch_size=1)
    assert result.complete


def test_memory_figures(monkeypatch):
    plan = WindowPlan((100, 512, 512), (96, 96, 96), 0.25, (32, 256, 256))
    window, chunks = memory.run_memory(plan, n_channels=1, n_outputs=14, batch_size=2)
    assert window == 2 * 15 * 96**3 * 4
    assert chunks == 100 * 512 * 512 * (15 * 4 + 1)  # the 100 planes are fewer than 96 + 64
    memory.check_memory(plan, n_channels=1, n_outputs=14, batch_size=2, available=10 * 1024**3)
    with pytest.raises(ValueError, match=r"= 101\.2 MiB, and the open output chunks about 1\.5 "):
        memory.check_memory(plan, n_channels=1, n_outputs=14, batch_size=2, available=2**30)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 5 * 2**30)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 3 * 2**30)
    assert memory.available_memory() == 3 * 2**30


def test_cgroup_limit_counts_inactive_page_cache_as_available(tmp_path):
    assert memory._cgroup_available(tmp_path) is None  # no cgroup files: no limit known
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert memory._cgroup_available(tmp_path) is None  # no limit
    (tmp_path / "memory.max").write_text("5000\n")
    assert memory._cgroup_available(tmp_path) == 4000
    (tmp_path / "memory.stat").write_text("anon 600\nfile 400\ninactive_file 300\n")
    assert memory._cgroup_available(tmp_path) == 4300
    (tmp_path / "memory.current").write_text("9000\n")
    assert memory._cgroup_available(tmp_path) == 0
