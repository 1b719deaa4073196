from __future__ import annotations

import numpy as np

from napari_llmseg import open_image
from napari_llmseg.engine.normalize import IntensityStats, compute_stats
from tests.conftest import write_zarr


def test_small_inputs_are_exact(rng):
    img = rng.gamma(2.0, 100.0, size=(3, 64, 64)).astype(np.float32)
    s = compute_stats(open_image(img))
    assert s.exact
    lo, hi = np.percentile(img.astype(np.float64), [1.0, 99.8])
    assert np.isclose(s.low[0], lo) and np.isclose(s.high[0], hi)


def test_large_inputs_are_sampled_deterministically_and_accurately(tmp_path, rng):
    vol = rng.gamma(2.0, 100.0, size=(70, 512, 512)).astype(np.float32)  # 18M values > exact limit
    z = write_zarr(tmp_path / "v.zarr", vol, (8, 128, 128))
    a = compute_stats(open_image(z))
    b = compute_stats(open_image(z))
    assert a == b and not a.exact and a.n_values > 100_000
    lo, hi = np.percentile(vol, [1.0, 99.8])
    assert abs(a.low[0] - lo) / lo < 0.05
    assert abs(a.high[0] - hi) / hi < 0.05


def test_nonfinite_values_are_ignored_and_channels_separate(rng):
    img = rng.uniform(0, 1, size=(50, 60, 2)).astype(np.float32)
    img[..., 1] *= 100
    img[:10, :10, 0] = np.nan
    img[20:25, :, 1] = np.inf
    s = compute_stats(open_image(img, channel_axis=-1))
    assert np.isfinite(s.low).all() and np.isfinite(s.high).all()
    assert s.high[0] <= 1.0 and s.high[1] > 50


def test_blank_image_has_a_usable_range():
    s = compute_stats(open_image(np.zeros((32, 32), np.uint8)))
    offset, inv = s.scale()
    assert offset[0] == 0 and np.isfinite(inv).all() and inv[0] == 1.0


def test_roundtrip_through_json():
    s = IntensityStats((1.0, 2.0), (3.0, 4.0), 1.0, 99.8, 10, False)
    assert IntensityStats.from_dict(s.to_dict()) == s
