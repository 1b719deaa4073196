"""The engine must reproduce MONAI's sliding_window_inference (then a sigmoid) to 1e-4."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from napari_llmseg import segment
from tests.conftest import smooth_model, write_zarr

PROMPTS = ["a", "b"]


def monai_reference(
    image2d: np.ndarray, roi, batch, overlap, mode, model=smooth_model, channels_first=None
):
    x = torch.from_numpy(np.ascontiguousarray(image2d, dtype=np.float32))
    x = x[None, None] if channels_first is None else x[None]
    roi = roi if isinstance(roi, tuple) else (roi, roi)
    out = sliding_window_inference(x, roi, batch, lambda t: model(t, PROMPTS), overlap, mode=mode)
    return torch.sigmoid(out)[0].numpy()


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "batch"),
    [
        ((300, 257), 64, 0.25, 4),
        ((100, 90), 128, 0.5, 3),
        ((130, 260), (48, 32), 0.1, 5),
        ((97, 101), 32, 0.0, 1),
        ((64, 200), 40, 0.75, 7),
    ],
)
def test_2d_matches_monai(rng, shape, roi, overlap, batch, mode):
    image = rng.normal(size=shape).astype(np.float32)
    result = segment(
        image,
        PROMPTS,
        model=smooth_model,
        roi_size=roi,
        overlap=overlap,
        batch_size=batch,
        blend=mode,
        chunks=64,
    )
    ref = monai_reference(image, roi, batch, overlap, mode)
    assert result.probabilities.shape == (2, *shape)
    np.testing.assert_allclose(result.probabilities, ref, atol=1e-4, rtol=0)
    # labels: the more probable prompt above threshold, else background
    expected = np.where(ref.max(0) > 0.5, ref.argmax(0) + 1, 0)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.labels.dtype == np.uint8


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_3d_slicewise_matches_monai(rng, tmp_path, kind, mode):
    vol = rng.normal(size=(5, 100, 120)).astype(np.float32)
    if kind == "dask":
        image = da.from_array(vol, chunks=(2, 50, 60))
    elif kind == "zarr":
        image = write_zarr(tmp_path / "in.zarr", vol, (2, 64, 64))
    else:
        image = vol
    result = segment(
        image,
        PROMPTS,
        model=smooth_model,
        roi_size=64,
        overlap=0.25,
        batch_size=3,
        blend=mode,
        chunks=48,
    )
    for z in range(vol.shape[0]):
        ref = monai_reference(vol[z], 64, 3, 0.25, mode)
        np.testing.assert_allclose(result.probabilities[:, z], ref, atol=1e-4, rtol=0)


def test_channels_axis_matches_monai_multichannel(rng):
    image = rng.normal(size=(3, 90, 110)).astype(np.float32)  # (C, Y, X)
    moved = np.moveaxis(image, 0, -1).copy()  # (Y, X, C)
    result = segment(moved, PROMPTS, model=smooth_model, roi_size=48, channel_axis=-1)
    ref = monai_reference(image, 48, 4, 0.25, "gaussian", channels_first=True)
    np.testing.assert_allclose(result.probabilities, ref, atol=1e-4, rtol=0)


def test_window_larger_than_image_is_padded_like_monai(rng):
    image = rng.normal(size=(20, 37)).astype(np.float32)
    result = segment(image, PROMPTS, model=smooth_model, roi_size=64)
    ref = monai_reference(image, 64, 4, 0.25, "gaussian")
    assert result.info.windows == 1
    np.testing.assert_allclose(result.probabilities, ref, atol=1e-4, rtol=0)


def test_batches_mix_planes(rng):
    """A 2D model on a volume batches windows across planes: 3 planes x 1 window = 1 batch."""
    seen = []

    def model(x, prompts):
        seen.append(x.shape[0])
        return smooth_model(x, prompts)

    vol = rng.normal(size=(3, 32, 32)).astype(np.float32)
    segment(vol, "a", model=model, roi_size=32, batch_size=4)
    assert seen == [3]
