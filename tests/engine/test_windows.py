from __future__ import annotations

import itertools

import numpy as np
import pytest
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from napari_llmseg.engine.windows import WindowPlan, importance_map, scan_interval


@pytest.mark.parametrize(
    ("plane", "roi", "overlap"),
    [
        ((300, 257), (64, 64), 0.25),
        ((64, 64), (64, 64), 0.5),
        ((40, 300), (64, 32), 0.1),
        ((17, 18), (32, 32), 0.0),
        ((1000, 33), (96, 16), 0.75),
    ],
)
def test_window_starts_equal_monai(plane, roi, overlap):
    plan = WindowPlan(plane, roi, overlap, plane)
    padded = tuple(max(s, r) for s, r in zip(plane, roi))
    monai_step = _get_scan_interval(padded, roi, 2, (overlap, overlap))
    assert scan_interval(padded, roi, overlap) == monai_step
    monai = dense_patch_slices(padded, roi, monai_step)
    ours = [
        tuple(
            slice(
                int(plan.starts[0][i]) + plan.pad_before[0],
                int(plan.starts[0][i]) + plan.pad_before[0] + roi[0],
            )
            for i in [p[0]]
        )
        + tuple(
            slice(
                int(plan.starts[1][j]) + plan.pad_before[1],
                int(plan.starts[1][j]) + plan.pad_before[1] + roi[1],
            )
            for j in [p[1]]
        )
        for p in itertools.product(range(len(plan.starts[0])), range(len(plan.starts[1])))
    ]
    assert ours == list(monai)
    assert plan.windows_per_plane == len(monai)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_importance_map_equals_monai(mode):
    ours = importance_map((48, 80), mode)
    ref = compute_importance_map((48, 80), mode=mode, sigma_scale=0.125).numpy()
    assert ours.dtype == np.float32 and ours.shape == (48, 80)
    np.testing.assert_array_equal(ours, ref)
    if mode == "gaussian":
        assert ours[24, 40] > 0.99 and ours[0, 0] < 0.01


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "chunks"),
    [
        ((300, 257), (64, 64), 0.25, (100, 70)),
        ((3, 90, 130), (32, 48), 0.5, (1, 40, 33)),
        ((20, 10), (32, 32), 0.0, (7, 10)),
    ],
)
def test_windows_per_chunk_matches_brute_force(shape, roi, overlap, chunks):
    plan = WindowPlan(shape, roi, overlap, chunks)
    counts: dict = {}
    for row in plan.order():
        lead, pos = tuple(row[: plan.n_lead]), tuple(row[plan.n_lead :])
        for c in plan.chunks_of_window(pos):
            counts[lead + c] = counts.get(lead + c, 0) + 1
        # brute force: every chunk whose box intersects the clipped window box
        box = plan.window_box(pos)
        for cidx in np.ndindex(*plan.grid[plan.n_lead :]):
            sl = plan.chunk_slices((0,) * plan.n_lead + cidx)[plan.n_lead :]
            touches = all(max(lo, 0, s.start) < min(hi, s.stop) for (lo, hi), s in zip(box, sl))
            assert touches == (cidx in plan.chunks_of_window(pos))
    assert set(counts) == set(np.ndindex(*plan.grid))
    for key, n in counts.items():
        assert plan.window_count(key) == n


def test_order_covers_every_window_once_and_2d_is_row_major():
    plan = WindowPlan((5, 100, 120), (32, 32), 0.25, (1, 50, 50))
    order = plan.order(group=2)
    assert len(order) == plan.n_windows == 5 * plan.windows_per_plane
    assert len({tuple(r) for r in order}) == len(order)
    # planes 0 and 1 are interleaved row by row, plane 4 comes last on its own
    first_rows = [tuple(r[:2]) for r in order[: 2 * len(plan.starts[1])]]
    assert first_rows[: len(plan.starts[1])] == [(0, 0)] * len(plan.starts[1])
    assert first_rows[len(plan.starts[1]) :] == [(1, 0)] * len(plan.starts[1])
    plan2 = WindowPlan((100, 120), (32, 32), 0.25, (50, 50))
    rows = [tuple(r) for r in plan2.order()]
    assert rows == sorted(rows)  # MONAI's row-major order


def test_plan_rejects_bad_chunks():
    with pytest.raises(ValueError, match="must be 1 along the sliced leading axes"):
        WindowPlan((4, 64, 64), (32, 32), 0.25, (2, 32, 32))
    with pytest.raises(ValueError, match="one entry per axis"):
        WindowPlan((64, 64), (32, 32), 0.25, (32,))
