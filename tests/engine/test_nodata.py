"""Pixels without data (ImageSource.nodata / mask) in the engine and the statistics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_llmseg import segment
from napari_llmseg.engine.normalize import compute_stats
from napari_llmseg.io.source import ImageSource
from tests.conftest import smooth_model


def test_mask_on_an_array_is_never_labelled_and_left_out_of_stats(rng):
    img = rng.uniform(0, 1, (2, 70, 90)).astype(np.float32)
    valid = np.ones((70, 90), bool)
    valid[:, :25] = False
    img[:, :, :25] = 100.0  # would dominate the percentiles if counted
    source = ImageSource(img, channel_axis=0, mask=valid)
    assert source.may_be_invalid
    stats = compute_stats(source)
    assert max(stats.high) <= 1.0 and stats.n_values == int(valid.sum())
    res = segment(source, ["a", "b"], model=smooth_model, roi_size=32, overlap=0.5)
    assert not res.labels[~valid].any() and (res.probabilities[:, ~valid] == 0).all()
    # the valid part sees exactly what it would see if the masked pixels held the pad value
    padded = img.copy()
    padded[:, ~valid] = 0.0  # a callable model's pad value
    ref = segment(padded, ["a", "b"], model=smooth_model, roi_size=32, overlap=0.5,
                  channel_axis=0)  # fmt: skip
    np.testing.assert_array_equal(res.probabilities[:, valid], ref.probabilities[:, valid])


def test_nodata_per_channel_in_3d(rng):
    vol = rng.integers(1, 50, (3, 40, 40)).astype(np.int16)
    vol[1, 10:20, 10:20] = -1
    source = ImageSource(vol, nodata=(-1,))
    region = (slice(0, 3), slice(0, 40), slice(0, 40))
    bad = source.invalid(region, source.read(region))
    assert bad is not None and bad.sum() == 100 and bad[1, 10:20, 10:20].all()
    assert source.invalid((slice(0, 1), slice(None), slice(None)), source.read(region)[:1]) is None
    res = segment(source, "x", model=lambda x, p: x[:, :1] * 0 + 5, roi_size=32)
    assert res.labels.sum() == vol.size - 100 and not res.labels[1, 10:20, 10:20].any()
    assert not ImageSource(vol).may_be_invalid


def test_bad_nodata_and_mask_shapes():
    with pytest.raises(ValueError, match=r"nodata has 2 values for an image with 3 channels; "
                       r"give one value \(or None\) per channel"):  # fmt: skip
        ImageSource(np.zeros((3, 8, 8)), channel_axis=0, nodata=(0, 0))
    with pytest.raises(ValueError, match=r"mask has shape \(8, 9\), expected the spatial shape "
                       r"\(8, 8\)"):  # fmt: skip
        ImageSource(np.zeros((8, 8)), mask=np.ones((8, 9), bool))
