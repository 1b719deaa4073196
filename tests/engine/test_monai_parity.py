"""MONAI's own sliding-window tests, ported: ``segment()`` and the engine against
``monai.inferers.sliding_window_inference`` (then a sigmoid) to 1e-4.

Source: Project-MONAI/MONAI, ``tests/inferers/test_sliding_window_inference.py``.

Every case runs through the public API (``segment(image, prompts, model=callable, ...)``) and
through the engine directly (``WindowPlan`` + ``engine.stream.run``). A MONAI input
``(B, C, *S)`` becomes our image ``(B, *S, C)`` with ``channel_axis=-1``: the batch axis is a
leading axis, taken one index at a time as MONAI does. The public API takes 2D and 3D images,
so with 3D windows each batch element is segmented on its own, and 4D windows run through the
engine only (which takes any number of axes). MONAI's scalar roi means "every spatial axis",
ours "the model's default window axes", so scalar rois are passed as tuples.

Two changes to the cases, so that they can fail: inputs are random normal values rather than
``arange`` (whose sigmoid is 1 almost everywhere) or ones, and the model adds to MONAI's
``data + 1`` (or ``2 * data``) a term that depends on where a pixel lies in its window, so
that every window predicts something different at a shared pixel and any mistake in window
placement, padding or weights shows. The model's output channels are the input's (one per
prompt, ``C`` prompts).

Ported
    * ``TEST_CASES`` (17): 16 ported, 1D, 2D, 3D and 4D windows, rois with -1 and 1 entries,
      rois larger than the image, constant and gaussian; the API path runs 15 of them (not
      the 4D one). Skipped: the ``cuda:0`` case, which is case 13 again on a machine without
      CUDA (MONAI itself falls back to the CPU) and devices are no engine parameter here.
    * ``test_buffers`` (``_windows``, 10 geometries, 7 quick + 3 marked slow as MONAI marks
      them): each geometry once, with MONAI's dtype rule (float64 when ``roi[0]`` is odd) and
      mode rule (gaussian for 3 channels); per-axis overlaps. MONAI varies ``buffer_steps``,
      ``buffer_dim`` and devices over these geometries (90 cases): options of MONAI's
      full-image output buffer that do not change the result and have no counterpart in a
      streaming engine.
    * ``test_sigma``: ``sigma_scale=1.0`` and ``(1.0, 1.0)``, ``cval=-1``, constant and
      gaussian, with MONAI's stateful model (its output depends on the batch number, so the
      batches must be MONAI's); checked against MONAI and its hard-coded expected values.
    * ``test_cval``: a window larger than the image, padded with ``cval=-1``.
    * ``test_multioutput``: tuple and dict outputs. We blend one output per run, the first
      by default or ``output_key=``; MONAI's outputs at other resolutions are refused with a
      message (our output is at the input's resolution).
    * ``test_strict_shape_validation``: a roi with more axes than the image is refused. (A
      3D roi on a (16, 16, 16) array is a 3D volume here: we need no batch or channel axis.)

Skipped
    * ``test_args_kwargs`` and ``TestSlidingWindowInferenceCond`` (``condition=``): extra
      arguments for the network. A callable gets the batch and, if it asks, the prompts;
      bind anything else with ``functools.partial``.
    * ``test_default_device``, ``test_sw_device``: MetaTensor inputs, autograd and CUDA
      devices; our outputs are numpy or zarr arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from napari_llmseg import segment
from napari_llmseg.engine.predictor import CallablePredictor
from napari_llmseg.engine.stream import MemorySink, drain, run
from napari_llmseg.engine.windows import WindowPlan, resolve_roi
from napari_llmseg.io.source import ImageSource


def window_model(x: torch.Tensor, base=lambda t: t + 1) -> torch.Tensor:
    """MONAI's model (``base``), plus a ramp over each window axis."""
    out = base(x)
    for axis, n in enumerate(x.shape[2:]):
        shape = [1] * x.ndim
        shape[2 + axis] = n
        ramp = torch.linspace(-1.0, 1.0, n, dtype=x.dtype).reshape(shape)
        out = out + ramp * (axis + 1) / 2
    return out


def times_two(x: torch.Tensor) -> torch.Tensor:
    return window_model(x, base=lambda t: 2 * t)


# MONAI's TEST_CASES: (image shape, roi, sw_batch_size, overlap, mode); case 15 (cuda) skipped
TEST_CASES = [
    ((2, 3, 16), (4,), 3, 0.25, "constant"),  # 1D small roi
    ((2, 3, 16, 15, 7, 9), 4, 3, 0.25, "constant"),  # 4D small roi
    ((1, 3, 16, 15, 7), (4, -1, 7), 3, 0.25, "constant"),  # 3D small roi
    ((2, 3, 16, 15, 7), (4, -1, 7), 3, 0.25, "constant"),
    ((3, 3, 16, 15, 7), (4, -1, 7), 3, 0.25, "constant"),
    ((2, 3, 16, 15, 7), (4, -1, 7), 3, 0.25, "constant"),
    ((1, 3, 16, 15, 7), (4, 10, 7), 3, 0.25, "constant"),
    ((1, 3, 16, 15, 7), (20, 22, 23), 10, 0.25, "constant"),  # 3D large roi
    ((2, 3, 15, 7), (2, 6), 1000, 0.25, "constant"),  # 2D small roi, large batch
    ((1, 3, 16, 7), (80, 50), 7, 0.25, "constant"),  # 2D large roi
    ((1, 3, 16, 15, 7), (20, 22, 23), 10, 0.5, "constant"),  # 3D large overlap
    ((1, 3, 16, 7), (80, 50), 7, 0.5, "gaussian"),  # 2D large overlap, gaussian
    ((1, 3, 16, 15, 7), (4, 10, 7), 3, 0.25, "gaussian"),  # 3D small roi, gaussian
    ((3, 3, 16, 15, 7), (4, 10, 7), 3, 0.25, "gaussian"),
    ((1, 3, 16, 15, 7), (4, 1, 7), 3, 0.25, "constant"),  # 3D small roi
    ((5, 3, 16, 15, 7), (4, 1, 7), 3, 0.25, "constant"),
]

# MONAI's _windows of test_buffers: (image shape, roi, overlap, sw_batch_size)
WINDOWS = [
    ((2, 3, 10, 11), (7, 10), 0.8, 5),
    ((2, 3, 10, 11), (15, 12), 0, 2),
    ((2, 3, 10, 11), (10, 11), 0, 3),
    ((2, 3, 511, 237), (96, 80), 0.4, 5),
    ((2, 3, 512, 245), (96, 80), 0, 5),
    ((2, 3, 512, 245), (512, 80), 0.125, 5),
    ((2, 3, 10, 11, 12), (7, 8, 10), 0.2, 2),
    pytest.param((2, 1, 125, 512, 200), (96, 97, 98), (0.4, 0.32, 0), 20, marks=pytest.mark.slow),
    pytest.param((2, 1, 10, 512, 200), (96, 97, 98), (0.4, 0.12, 0), 21, marks=pytest.mark.slow),
    pytest.param((2, 3, 100, 100, 200), (50, 50, 100), 0, 8, marks=pytest.mark.slow),
]


def as_tuple(roi, n):
    return roi if isinstance(roi, tuple) else (roi,) * n


def monai_probabilities(x, roi, batch, model, overlap, mode, **kw) -> np.ndarray:
    """sigmoid(MONAI's blended output), (B, C, *S) float64."""
    with torch.no_grad():
        out = sliding_window_inference(
            torch.from_numpy(x), roi, batch, model, overlap, mode=mode, **kw
        )
    return torch.sigmoid(out.double()).numpy()


def api_probabilities(x, roi, batch, model, overlap, mode, **kw) -> np.ndarray:
    """segment()'s probabilities for a MONAI input, in MONAI's layout (B, C, *S)."""
    prompts = [f"c{i}" for i in range(x.shape[1])]
    common = dict(model=model, roi_size=roi, batch_size=batch, overlap=overlap, blend=mode, **kw)
    if len(roi) < 3:  # (B, *S, C): the batch is a leading axis
        result = segment(np.moveaxis(x, 1, -1), prompts, channel_axis=-1, **common)
        return np.swapaxes(result.probabilities, 0, 1)
    # 3D windows: one volume per batch element
    return np.stack(
        [
            segment(np.moveaxis(x[b], 0, -1), prompts, channel_axis=-1, **common).probabilities
            for b in range(x.shape[0])
        ]
    )


def engine_probabilities(
    x, roi, batch, model, overlap, mode, chunk=5, sigma_scale=0.125, cval=None
) -> np.ndarray:
    """The engine's probabilities for a MONAI input, the batch axis as the leading axis."""
    source = ImageSource(np.moveaxis(x, 1, -1), channel_axis=-1)
    shape = source.spatial_shape
    plan = WindowPlan(
        shape,
        resolve_roi(roi, shape[1:]),
        overlap,
        (1, *(min(chunk, s) for s in shape[1:])),
        blend=mode,
        sigma_scale=sigma_scale,
    )
    prompts = [f"c{i}" for i in range(x.shape[1])]
    sink = MemorySink(shape, len(prompts), np.dtype(np.uint8))
    predictor = CallablePredictor(model, prompts, source.n_channels, cval=cval)
    info = drain(
        run(source, predictor, plan, sink, weights=plan.weights(), batch_size=batch, threshold=0.5)
    )
    assert info.windows == plan.n_windows and not info.cancelled
    return np.swapaxes(sink.probabilities, 0, 1)


@pytest.mark.parametrize(("shape", "roi", "batch", "overlap", "mode"), TEST_CASES)
def test_monai_test_cases(rng, shape, roi, batch, overlap, mode):
    x = rng.normal(size=shape).astype(np.float32)
    roi = as_tuple(roi, len(shape) - 2)
    ref = monai_probabilities(x, roi, batch, window_model, overlap, mode)
    assert ref.shape == shape
    ours = engine_probabilities(x, roi, batch, window_model, overlap, mode)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    if len(roi) <= 3:
        ours = api_probabilities(x, roi, batch, window_model, overlap, mode)
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("shape", "roi", "overlap", "batch"), WINDOWS)
def test_monai_buffer_windows(rng, shape, roi, overlap, batch):
    dtype = [np.float32, np.float64][roi[0] % 2]  # MONAI's dtype and mode rules
    mode = ["constant", "gaussian"][shape[1] % 2]
    x = rng.normal(size=shape).astype(dtype)
    ref = monai_probabilities(x, roi, batch, times_two, overlap, mode)
    ours = api_probabilities(x, roi, batch, times_two, overlap, mode, chunks=64)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    ours = engine_probabilities(x, roi, batch, times_two, overlap, mode, chunk=37)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


class _Pred:
    """MONAI's test_sigma model: adds 2 on its first call, 3 on the second..."""

    add = 1

    def compute(self, data):
        self.add += 1
        return data + self.add


# MONAI's expected values for test_sigma (before our sigmoid), one row each (rows are equal)
SIGMA_EXPECTED = {
    "constant": [3.0, 3.0, 3.3333, 3.6667, 4.3333, 4.5, 5.0],
    "gaussian": [3.0, 3.0, 3.3271623, 3.6728377, 4.3271623, 4.513757, 5.0],
}


@pytest.mark.parametrize("sigma", [1.0, (1.0, 1.0)])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_monai_sigma(mode, sigma):
    x = np.ones((1, 1, 7, 7), np.float32)
    kw = dict(sigma_scale=sigma, cval=-1.0)
    ref = monai_probabilities(x, (3, 3), 10, _Pred().compute, 0.5, mode, **kw)
    ours = api_probabilities(x, (3, 3), 10, _Pred().compute, 0.5, mode, **kw)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    expected = np.repeat(np.asarray(SIGMA_EXPECTED[mode])[:, None], 7, axis=1)
    np.testing.assert_allclose(ours[0, 0], 1 / (1 + np.exp(-expected)), atol=1e-4, rtol=0)
    ours = engine_probabilities(x, (3, 3), 10, _Pred().compute, 0.5, mode, **kw)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_monai_cval():
    """A 5 x 5 window on a 3 x 3 image: 16 padded pixels of -1; data.sum() = 9 - 16."""

    def compute(data):
        return data + data.sum()

    x = np.ones((1, 1, 3, 3), np.float32)
    ref = monai_probabilities(x, (5, 5), 10, compute, 0.5, "constant", cval=-1.0)
    ours = api_probabilities(x, (5, 5), 10, compute, 0.5, "constant", cval=-1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours, 1 / (1 + np.exp(6.0)), atol=1e-6, rtol=0)
    with_zero = api_probabilities(x, (5, 5), 10, compute, 0.5, "constant")
    np.testing.assert_allclose(with_zero, 1 / (1 + np.exp(-10.0)), atol=1e-6, rtol=0)


def _multi(data):
    return window_model(data), data[:, ::3, ::2, ::2] + 2, data[:, ::2, ::4, ::4] + 3


def _multi_dict(data):
    return dict(zip((1, 2, 3), _multi(data), strict=True))


@pytest.mark.parametrize(("model", "key"), [(_multi, None), (_multi, 0), (_multi_dict, None),
                                            (_multi_dict, 1)])  # fmt: skip
def test_monai_multioutput_first_or_named_output(rng, model, key):
    x = rng.normal(size=(1, 6, 20, 20)).astype(np.float32)
    with torch.no_grad():
        out = sliding_window_inference(torch.from_numpy(x), (8, 8), 10, model, 0.5, "constant")
    first = out[0] if isinstance(out, tuple) else out[1]
    ref = torch.sigmoid(first).numpy()
    ours = api_probabilities(x, (8, 8), 10, model, 0.5, "constant", output_key=key)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("model", "key"), [(_multi, 1), (_multi_dict, 2)])
def test_monai_multioutput_other_resolutions_are_refused(model, key):
    x = np.ones((20, 20, 6), np.float32)
    with pytest.raises(
        ValueError, match=r"the model returned logits of shape \(10, 2, 4, 4\) for a batch of 10"
    ):
        segment(x, list("abcdef"), model=model, roi_size=(8, 8), overlap=0.5, batch_size=10,
                channel_axis=-1, output_key=key)  # fmt: skip


def test_monai_strict_shape_validation():
    with pytest.raises(
        ValueError,
        match=r"roi_size \(16, 16, 16\) asks for 3D windows, but the image has 2 spatial axes",
    ):
        segment(np.zeros((16, 16), np.float32), "a", model=lambda x: x, roi_size=(16, 16, 16))
