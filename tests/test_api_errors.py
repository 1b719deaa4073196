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


@pytest.mark.parametrize("roi", [8, 15, (32, 4), (None, 15)])
def test_backend_roi_below_16(roi):
    """A model backend's windows are at least 16 pixels (checked before the model loads)."""
    with pytest.raises(
        ValueError, match=re.escape(f"roi_size must be at least 16 pixels, got {roi!r}")
    ):
        run(roi_size=roi, model="llmseg-tiny")


def test_callable_takes_small_windows():
    """As in MONAI, a callable model takes windows of any size."""
    result = run(roi_size=(8, 4), model=lambda x: x[:, :1] - 0.5)
    assert result.info.windows == 11 * 21 and result.metadata["roi_size"] == [8, 4]


@pytest.mark.parametrize("roi", [(32.5, 32), "32", (32, "a"), (), True, 32.0, [32, True]])
def test_roi_entries_must_be_ints(roi):
    with pytest.raises(ValueError, match=re.escape(
        "roi_size must be an int or a sequence of ints (None or <= 0: the image's extent along "
        f"that axis), got {roi!r}"
    )):  # fmt: skip
        run(roi_size=roi)


def test_roi_with_more_axes_than_the_image():
    with pytest.raises(
        ValueError,
        match=r"roi_size \(32, 32, 32\) asks for 3D windows, but the image has 2 spatial axes "
        r"\(64, 64\)",
    ):
        run(roi_size=(32, 32, 32))
    with pytest.raises(ValueError, match=r"roi_size \(16, 16, 16, 16\) asks for 4D windows"):
        run(np.zeros((16, 16, 16), np.float32), roi_size=(16, 16, 16, 16))


def test_backend_roi_with_other_axes_than_the_model():
    with pytest.raises(
        ValueError,
        match=r"roi_size must be an int or 2 ints for the llmseg-tiny backend \(2D windows\), "
        r"got \(32, 32, 32\)",
    ):
        run(np.zeros((32, 32, 32), np.float32), roi_size=(32, 32, 32), model="llmseg-tiny")


@pytest.mark.parametrize(
    ("overlap", "message"),
    [
        ((0.5, 1.0), r"overlap must be in \[0.0, 1.0\) on every window axis, got \(0.5, 1.0\)"),
        ((0.5, -0.1), r"overlap must be in \[0.0, 1.0\) on every window axis, got \(0.5, -0.1\)"),
        ((0.5, 0.25, 0.1), r"overlap \(0.5, 0.25, 0.1\) has 3 entries for 2D windows"),
        ((), r"overlap must be a number or one number per window axis, got \(\)"),
    ],
)
def test_per_axis_overlap_errors(overlap, message):
    with pytest.raises(ValueError, match=message):
        run(overlap=overlap)


def test_per_axis_overlap_and_sigma_are_accepted():
    result = run(overlap=(0.5, 0.25), sigma_scale=(0.2, 0.1))
    assert result.metadata["overlap"] == (0.5, 0.25)
    assert result.metadata["sigma_scale"] == (0.2, 0.1)


@pytest.mark.parametrize("sigma", [0, -1, float("nan"), float("inf"), (0.1, 0.0)])
def test_sigma_scale_must_be_positive(sigma):
    with pytest.raises(ValueError, match=re.escape("sigma_scale must be > 0.0") + r".*got "):
        run(sigma_scale=sigma)
    with pytest.raises(ValueError, match=r"sigma_scale \(0.1, 0.1, 0.1\) has 3 entries"):
        run(sigma_scale=(0.1, 0.1, 0.1))


def test_cval_and_output_key_errors():
    with pytest.raises(TypeError, match=r"cval must be a number, got 'low'"):
        run(cval="low")
    with pytest.raises(ValueError, match=r"cval must be a finite number, got nan"):
        run(cval=float("nan"))
    with pytest.raises(ValueError, match=r"output_key='seg' picks an output of a callable model"):
        run(model="llmseg-tiny", output_key="seg")
    with pytest.raises(TypeError, match=r"output_key must be an int or a str, got 1.5"):
        run(output_key=1.5)
    with pytest.raises(ValueError, match=r"output_key=1 picks one output of a model that returns"):
        run(output_key=1)  # smooth_model returns one tensor


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
