from __future__ import annotations

import itertools

import numpy as np
import pytest
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from napari_llmseg.engine.windows import WindowPlan, importance_map, resolve_roi, scan_interval


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


@pytest.mark.parametrize(
    ("plane", "roi", "overlap"),
    [
        ((40, 50, 36), (24, 32, 32), (0.5, 0.25, 0.0)),
        ((16, 15, 7), (4, 15, 7), 0.25),
        ((10, 11, 12, 9), (4, 4, 4, 4), (0.1, 0.2, 0.3, 0.4)),
        ((30, 20, 10), (48, 8, 10), (0.0, 0.75, 0.5)),
    ],
)
def test_nd_window_starts_equal_monai(plane, roi, overlap):
    plan = WindowPlan(plane, roi, overlap, plane)
    overlaps = overlap if isinstance(overlap, tuple) else (overlap,) * len(roi)
    padded = tuple(max(s, r) for s, r in zip(plane, roi))
    step = _get_scan_interval(padded, roi, len(roi), overlaps)
    monai = dense_patch_slices(padded, roi, step)
    ours = [
        tuple(slice(int(plan.starts[a][i]) + plan.pad_before[a], None) for a, i in enumerate(pos))
        for pos in itertools.product(*[range(len(s)) for s in plan.starts])
    ]
    assert [tuple(s.start for s in w) for w in ours] == [tuple(s.start for s in w) for w in monai]
    assert plan.overlap == overlaps


@pytest.mark.parametrize("sigma", [0.125, 0.3, (0.1, 0.25, 0.5)])
def test_importance_map_with_sigma_per_axis_equals_monai(sigma):
    ours = importance_map((12, 20, 9), "gaussian", sigma)
    ref = compute_importance_map((12, 20, 9), mode="gaussian", sigma_scale=sigma).numpy()
    np.testing.assert_array_equal(ours, ref)
    plan = WindowPlan((30, 30, 30), (12, 20, 9), 0.25, (16, 16, 16), sigma_scale=sigma)
    np.testing.assert_array_equal(plan.weights(), ref)


@pytest.mark.parametrize(
    ("roi", "plane", "expected"),  # monai.utils.fall_back_tuple's own examples, and a scalar
    [
        ((1, 2), (32, 32), (1, 2)),
        (None, (32, 32), (32, 32)),
        ((-1, 10), (32, 32), (32, 10)),
        ((-1, None), (32, 32), (32, 32)),
        ((1, None), (32, 32), (1, 32)),
        (0, (32, 32), (32, 32)),
        (16, (32, 8), (16, 16)),
        ((4, -1, 7), (16, 15, 7), (4, 15, 7)),
    ],
)
def test_resolve_roi_falls_back_to_the_image_extent(roi, plane, expected):
    assert resolve_roi(roi, plane) == expected


def test_plan_rejects_bad_windows():
    with pytest.raises(ValueError, match=r"roi_size \[0\] has 1 entries for the 2 window axes"):
        resolve_roi([0], (32, 32))
    with pytest.raises(ValueError, match=r"must hold window sizes >= 1; resolve MONAI's -1"):
        WindowPlan((16, 15, 7), (4, -1, 7), 0.25, (16, 15, 7))
    with pytest.raises(ValueError, match=r"roi \(4, 4, 4\) must have 1 to 2 entries"):
        WindowPlan((16, 15), (4, 4, 4), 0.25, (16, 15))
    with pytest.raises(ValueError, match=r"overlap must be in \[0.0, 1.0\), got \(0.5, 1.0\)"):
        WindowPlan((16, 15), (4, 4), (0.5, 1.0), (16, 15))
    with pytest.raises(ValueError, match=r"overlap \(0.5, 0.5, 0.5\) has 3 entries for 2D"):
        WindowPlan((16, 15), (4, 4), (0.5, 0.5, 0.5), (16, 15))
    with pytest.raises(ValueError, match=r"sigma_scale must be > 0, got \(0.1, 0.0\)"):
        WindowPlan((16, 15), (4, 4), 0.5, (16, 15), sigma_scale=(0.1, 0.0))
