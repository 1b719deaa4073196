"""Pyramid levels: the label reduction against a per-block count, and result stores whose
levels are each the level below reduced; statistics are not sampled for callable models."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_llmseg import iter_segment, segment
from napari_llmseg.engine.store import OutputStore
from napari_llmseg.io.pyramid import reduce_labels, reduce_mean
from napari_llmseg.io.source import ImageSource
from tests.conftest import smooth_model


def _mode_per_block(data: np.ndarray, step: tuple[int, ...]) -> np.ndarray:
    """The reference: every block's most frequent value counted one block at a time, ties
    to the larger value, edges padded by repeating the last row."""
    lead = data.ndim - len(step)
    pad = [(0, 0)] * lead + [(0, (-n) % k) for n, k in zip(data.shape[lead:], step, strict=True)]
    data = np.pad(data, pad, mode="edge")
    shape = data.shape[:lead] + tuple(n // k for n, k in zip(data.shape[lead:], step, strict=True))
    out = np.empty(shape, data.dtype)
    for index in np.ndindex(*shape):
        cell = index[:lead] + tuple(
            slice(i * k, (i + 1) * k) for i, k in zip(index[lead:], step, strict=True)
        )
        values, counts = np.unique(data[cell], return_counts=True)
        out[index] = values[np.flatnonzero(counts == counts.max())[-1]]
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32])
@pytest.mark.parametrize(
    ("shape", "step"),
    [((7, 9), (2, 2)), ((5, 7, 9), (2, 2, 2)), ((5, 7, 9), (1, 2, 2)), ((3, 6, 5), (2, 2))],
)
def test_reduce_labels_is_the_mode_of_every_block(dtype, shape, step):
    rng = np.random.default_rng(1)
    for n_values in (1, 2, 3, 6):
        data = (rng.integers(0, n_values, shape) * 7).astype(dtype)
        reduced = reduce_labels(data, step)
        np.testing.assert_array_equal(reduced, _mode_per_block(data, step))
        assert reduced.dtype == data.dtype


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32])
def test_reduce_mean_is_the_mean_of_every_block(dtype):
    rng = np.random.default_rng(2)
    data = (rng.random((2, 5, 7, 9)) * 200).astype(dtype)  # a leading prompt axis
    step = (2, 2, 2)
    padded = np.pad(data, [(0, 0), (0, 1), (0, 1), (0, 1)], mode="edge").astype(np.float64)
    expected = padded.reshape(2, 3, 2, 4, 2, 5, 2).mean(axis=(2, 4, 6))
    reduced = reduce_mean(data, step)
    assert reduced.dtype == data.dtype and reduced.shape == (2, 3, 4, 5)
    if data.dtype.kind == "u":
        np.testing.assert_array_equal(reduced, np.rint(expected).astype(dtype))
    else:
        np.testing.assert_allclose(reduced, expected, rtol=2e-3 if dtype == np.float16 else 1e-6)


def test_ties_go_to_the_larger_label_so_thin_objects_stay_visible():
    data = np.zeros((4, 4), np.uint8)
    data[:, 1] = 3  # a one-pixel-wide line: 2 of every 2 x 2 block in column 0
    np.testing.assert_array_equal(reduce_labels(data, (2, 2)), [[3, 0], [3, 0]])


@pytest.mark.parametrize("probabilities", ["uint8", "none"])
def test_every_level_is_the_one_below_reduced(tmp_path, probabilities):
    """Without probabilities the root image is the class map: its levels are the labels'."""
    image = np.random.default_rng(0).random((4, 700, 600)).astype(np.float32)
    out = tmp_path / "r.zarr"
    segment(ImageSource(image), ["a", "b"], model=smooth_model, roi_size=64, out=out,
            probabilities=probabilities, report=False)  # fmt: skip
    group = zarr.open_group(out, mode="r")
    levels = OutputStore(zarr.open_group(out, mode="r+")).levels
    assert [lv.shape for lv in levels] == [(4, 700, 600), (2, 350, 300), (1, 175, 150)]
    for k in range(1, len(levels)):
        assert np.asarray(group[f"napari_llmseg/pyramid_done_{k}"][...]).all()
        below = np.asarray(group[f"labels/segmentation/{k - 1}"][...])
        here = np.asarray(group[f"labels/segmentation/{k}"][...])
        np.testing.assert_array_equal(here, reduce_labels(below, levels[k].step))
        image_below, image_here = np.asarray(group[str(k - 1)][...]), np.asarray(group[str(k)])
        if probabilities == "none":
            np.testing.assert_array_equal(image_here, here)
        else:
            step = (1, *levels[k].step)
            np.testing.assert_array_equal(image_here, reduce_mean(image_below, step))


def test_a_callable_model_gets_no_statistics_and_its_run_resumes(tmp_path):
    """Plain callables get the pixels as they are: no percentiles are sampled for them, and a
    store without statistics resumes."""
    image = np.random.default_rng(0).random((2, 300, 300)).astype(np.float32)
    out = tmp_path / "r.zarr"
    first = iter_segment(image, "a", model=smooth_model, roi_size=64, out=out, report=False)
    next(first)
    next(first)
    first.close()  # interrupted after one batch
    group = zarr.open_group(out, mode="r")
    assert group.attrs["napari_llmseg"]["stats"] is None
    result = segment(image, "a", model=smooth_model, roi_size=64, out=out, resume=True,
                     report=False)  # fmt: skip
    assert result.complete and result.stats is None
    expected = segment(image, "a", model=smooth_model, roi_size=64, report=False)
    np.testing.assert_array_equal(np.asarray(result.labels), np.asarray(expected.labels))
