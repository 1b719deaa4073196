from __future__ import annotations

import numpy as np
import pytest

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


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int8", "int16", "float32", "int32"])
@pytest.mark.parametrize("size", [1, 2, 3, 1001, 40_000])
def test_percentiles_equal_numpys_to_the_last_bit(rng, dtype, size):
    """8/16-bit integers take a histogram path; the result must be numpy's, bit for bit."""
    from napari_llmseg.engine.normalize import percentiles

    info = np.iinfo(dtype) if dtype[0] in "iu" else None
    for trial in range(3):
        if info is None:
            v = rng.normal(size=size).astype(dtype)
        elif trial == 0:  # the whole range, extremes included
            v = rng.integers(info.min, info.max, size=size, endpoint=True).astype(dtype)
        elif trial == 1:  # a narrow band, many ties
            v = rng.integers(0, 7, size=size).astype(dtype)
        else:  # a constant image
            v = np.full(size, info.min if dtype.startswith("int") else 3, dtype)
        qs = (0.0, 1.0, 2.5, 50.0, 99.8, 100.0)
        expected = [float(x) for x in np.percentile(v.astype(np.float64), qs)]
        got = percentiles(v.reshape(1, -1), qs)
        assert got == expected, (dtype, size, trial)


def test_statistics_of_a_uint16_volume_are_numpys(rng):
    vol = rng.integers(0, 4096, size=(3, 50, 60)).astype(np.uint16)
    stats = compute_stats(open_image(vol))
    lo, hi = np.percentile(vol.astype(np.float64), [1.0, 99.8])
    assert stats.exact and stats.low == (lo,) and stats.high == (hi,)
