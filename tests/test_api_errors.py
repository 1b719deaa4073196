"""Every bad input gets an error naming the value and what was expected."""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_llmseg import segment
from tests.conftest import smooth_model

IMG = np.zeros((64, 64), np.float32)


def run(image=IMG, prompts="a", **kw):
    kw.setdefault("model", smooth_model)
    kw.setdefault("roi_size", 32)
    return segment(image, prompts, **kw)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input path does not exist: '.*nope\.tif'"):
        run(tmp_path / "nope.tif")


def test_unsupported_file_type(tmp_path):
    p = tmp_path / "image.png"
    p.write_bytes(b"\x89PNG")
    with pytest.raises(
        ValueError,
        match=r"unsupported file type '\.png'.*expected one of \.zarr, \.tif, \.tiff, "
        r"\.vrt, \.jp2, \.npy",
    ):
        run(p)


@pytest.mark.parametrize("shape", [(64,), (2, 3, 32, 32), (1, 1, 1, 1, 1)])
def test_wrong_number_of_axes(shape):
    msg = (
        f"expected a 2D (Y, X) or 3D (Z, Y, X) image, got {len(shape)} spatial axes "
        f"with shape {shape}"
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        run(np.zeros(shape, np.float32))


def test_four_axes_with_channel_axis_is_fine_and_error_mentions_channels():
    run(np.zeros((2, 32, 32, 3), np.float32), channel_axis=-1)
    with pytest.raises(ValueError, match="plus a channel axis"):
        run(np.zeros((2, 2, 32, 32, 3), np.float32), channel_axis=-1)
    with pytest.raises(
        ValueError, match=r"channel_axis=5 is out of range for an image with 3 axes"
    ):
        run(np.zeros((32, 32, 3), np.float32), channel_axis=5)


@pytest.mark.parametrize("prompts", ["", "   ", ["nuclei", ""], []])
def test_empty_or_blank_prompt(prompts):
    with pytest.raises(ValueError, match=r"must not be empty or blank|non-empty string or list"):
        run(prompts=prompts)


def test_prompt_types_and_duplicates():
    with pytest.raises(TypeError, match=r"every prompt must be a string, got 3 \(int\)"):
        run(prompts=["a", 3])
    with pytest.raises(ValueError, match="repeated: 'a'"):
        run(prompts=["a", "b", "a"])


@pytest.mark.parametrize("overlap", [1.0, -0.1, 1.5, float("nan")])
def test_overlap_outside_range(overlap):
    with pytest.raises(ValueError, match=rf"overlap must be in \[0.0, 1.0\), got {overlap}"):
        run(overlap=overlap)


@pytest.mark.parametrize("roi", [8, 15, (32, 4), 0])
def test_roi_below_16(roi):
    with pytest.raises(
        ValueError, match=re.escape(f"roi_size must be at least 16 pixels, got {roi!r}")
    ):
        run(roi_size=roi)


def test_roi_bad_form():
    with pytest.raises(ValueError, match=r"roi_size must be an int or 2 ints, got \(32, 32, 32\)"):
        run(roi_size=(32, 32, 32))


def test_threshold_and_batch_and_blend():
    with pytest.raises(ValueError, match=r"threshold must be in \[0.0, 1.0\], got 2"):
        run(threshold=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        run(batch_size=0)
    with pytest.raises(ValueError, match="blend must be 'gaussian' or 'constant', got 'median'"):
        run(blend="median")


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'sam9'; known models: llmseg-tiny"):
        run(model="sam9")
    with pytest.raises(ValueError, match=r"model folder '\./no/such/folder' does not exist"):
        run(model="./no/such/folder")


def test_unknown_or_missing_device():
    with pytest.raises(
        ValueError,
        match=r"unknown device 'gpu0'; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
    ):
        run(device="gpu0")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(
            ValueError,
            match=r"device 'cuda:1' was requested but CUDA is not available.*available: cpu",
        ):
            run(device="cuda:1")


def test_not_an_array():
    with pytest.raises(TypeError, match=r"image must be an array .* got dict"):
        run({"a": 1})


def test_non_numeric_dtype():
    with pytest.raises(TypeError, match="dtype <U1; expected an integer or float image"):
        run(np.full((32, 32), "a"))


def test_npy_with_objects_is_refused_not_unpickled(tmp_path):
    p = tmp_path / "objects.npy"
    np.save(p, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"holds Python objects \(dtype object\).*never loaded"):
        run(p)
