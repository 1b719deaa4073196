"""Windows of any number of axes: 3D windows for callables, torch modules and 3D backends,
1D windows, and how models are called and their outputs read."""

from __future__ import annotations

import itertools
import threading
import warnings

import numpy as np
import pytest
import torch
import zarr
from monai.inferers import sliding_window_inference

from napari_llmseg import segment
from napari_llmseg.backends.base import PromptSegmenter
from napari_llmseg.engine.predictor import select_output, takes_prompts
from tests.conftest import smooth_model


def monai_sigmoid(x: np.ndarray, roi, model, **kw) -> np.ndarray:
    """sigmoid(MONAI) for a single-channel image ``x`` -> (P, *x.shape)."""
    with torch.no_grad():
        out = sliding_window_inference(torch.from_numpy(x)[None, None], roi, 4, model, **kw)
    return torch.sigmoid(out)[0].numpy()


class Net3d(torch.nn.Module):
    """A small MONAI-style 3D network: forward(x) only, two output channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm3d(4)
        self.head = torch.nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_torch_module_gets_3d_windows_and_matches_monai(rng, mode):
    vol = rng.normal(size=(40, 50, 36)).astype(np.float32)
    net = Net3d().eval()
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    result = segment(
        vol, ["liver", "spleen"], model=net, roi_size=(24, 32, 32), overlap=0.25, blend=mode,
        chunks=16,
    )  # fmt: skip
    assert all(s[1:] == (1, 24, 32, 32) for s in seen) and seen[0][0] == 4
    assert result.info.windows == 2 * 2 * 2
    ref = monai_sigmoid(vol, (24, 32, 32), net, overlap=0.25, mode=mode)
    np.testing.assert_allclose(result.probabilities, ref, atol=1e-4, rtol=0)
    assert result.metadata["roi_size"] == [24, 32, 32]
    assert result.metadata["model"]["name"] == "callable"


def test_module_in_training_mode_warns():
    net = Net3d()  # training mode: batch statistics would change its output
    with pytest.warns(UserWarning, match=r"the model Net3d is in training mode.*model\.eval\(\)"):
        segment(np.zeros((16, 16, 16), np.float32), ["a", "b"], model=net, roi_size=(16,) * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segment(np.zeros((16, 16, 16), np.float32), ["a", "b"], model=net.eval(),
                roi_size=(16,) * 3)  # fmt: skip


def test_roi_entries_of_minus_one_or_none_are_the_image_extent(rng):
    vol = rng.normal(size=(12, 30, 20)).astype(np.float32)
    shapes = []

    def model(x):
        shapes.append(tuple(x.shape[2:]))
        return smooth_model(x, ["a"])

    result = segment(vol, "a", model=model, roi_size=(8, -1, None), overlap=(0.5, 0, 0))
    assert set(shapes) == {(8, 30, 20)}
    assert result.metadata["roi_size"] == [8, 30, 20]
    ref = monai_sigmoid(vol, (8, -1, -1), lambda t: smooth_model(t, ["a"]),
                        overlap=(0.5, 0, 0), mode="gaussian")  # fmt: skip
    np.testing.assert_allclose(result.probabilities, ref, atol=1e-4, rtol=0)
    whole = segment(vol, "a", model=model, roi_size=0)  # a scalar: every window axis
    assert shapes[-1] == (30, 20) and whole.info.windows == 12


def test_one_dimensional_windows_on_every_row_of_a_volume(rng):
    """1D windows over a (3, 4, 40) volume: 12 rows, two leading axes taken one at a time."""
    vol = rng.normal(size=(3, 4, 40)).astype(np.float32)

    def model(x):
        return torch.tanh(x[:, :1] * 2) + torch.linspace(-1, 1, x.shape[-1])

    result = segment(vol, "a", model=model, roi_size=(16,), overlap=0.5, batch_size=5)
    assert result.info.windows == 12 * 4
    for z, y in itertools.product(range(3), range(4)):
        with torch.no_grad():
            out = sliding_window_inference(
                torch.from_numpy(vol[z, y])[None, None], (16,), 5, model, 0.5, mode="gaussian"
            )
        ref = torch.sigmoid(out)[0].numpy()
        np.testing.assert_allclose(result.probabilities[:, z, y], ref, atol=1e-4, rtol=0)


def test_3d_windows_over_a_chunked_volume_read_each_slab_once(rng):
    """Bands of 3D windows are slabs along Z; with a chunked source they end on chunk
    boundaries and each stored chunk is decoded once; the output equals an in-memory run."""
    vol = rng.normal(size=(70, 48, 40)).astype(np.float32)
    vol[30:33, 5:9, 5:9] = np.nan
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=vol.shape, chunks=(16, 48, 40),
                          dtype="f4")  # fmt: skip
    z[...] = vol
    reads = []

    class Recording:
        shape, dtype, chunks = z.shape, z.dtype, z.chunks

        def __getitem__(self, idx):
            if threading.current_thread().name == "llmseg-reader":
                reads.append((idx[0].start, idx[0].stop))
            return z[idx]

    kw = dict(model=smooth_model, roi_size=(20, 32, 32), overlap=0.5, batch_size=3, chunks=16)
    chunked = segment(Recording(), ["a", "b"], **kw)
    reference = segment(vol, ["a", "b"], **kw)
    assert np.array_equal(chunked.probabilities, reference.probabilities)
    assert np.array_equal(chunked.labels, reference.labels)
    assert chunked.labels[np.isnan(vol)].max() == 0
    assert reads[0][0] == 0 and reads[-1][1] == 70
    assert all(a[1] == b[0] for a, b in itertools.pairwise(reads))  # every plane read once
    assert all(hi % 16 == 0 or hi == 70 for _, hi in reads)


class Backend3d(PromptSegmenter):
    """A backend that declares 3D windows: a box blur of the normalised volume per prompt."""

    name = "blur3d"
    spatial_dims = 3
    default_roi = 24

    def __init__(self) -> None:
        self.windows: list[tuple[int, ...]] = []

    def encode_prompts(self, prompts):
        return list(range(len(prompts)))

    def preprocess(self, windows, stats):
        low = np.asarray(stats.low, np.float32).reshape(1, -1, 1, 1, 1)
        high = np.asarray(stats.high, np.float32).reshape(1, -1, 1, 1, 1)
        return torch.from_numpy((windows - low) / np.maximum(high - low, 1e-6))

    def predict(self, batch, encoded):
        self.windows.append(tuple(batch.shape))
        return np.concatenate(
            [smooth_model(batch, ["p"] * (i + 1))[:, i : i + 1].numpy() for i in encoded], 1
        )


def test_backend_declaring_3d_windows(rng):
    vol = rng.normal(size=(30, 40, 40)).astype(np.float32)
    backend = Backend3d()
    result = segment(vol, ["a", "b"], model=backend)
    assert {s[2:] for s in backend.windows} == {(24, 24, 24)}  # its default, on 3 axes
    assert result.probabilities.shape == (2, 30, 40, 40)
    segment(vol, ["a", "b"], model=backend, roi_size=(16, -1, 20))
    assert backend.windows[-1][2:] == (16, 40, 20)
    with pytest.raises(
        ValueError,
        match=r"roi_size must be an int or 3 ints for the blur3d backend \(3D windows\), "
        r"got \(32, 32\)",
    ):
        segment(vol, "a", model=backend, roi_size=(32, 32))
    with pytest.raises(ValueError, match=r"the blur3d backend needs at least 16 pixels a side"):
        segment(vol[:, :, :10], "a", model=backend, roi_size=(16, 16, -1))


@pytest.mark.parametrize(
    ("fn", "style"),
    [
        (lambda x, prompts: x, True),
        (lambda x, p, scale=2: x, True),
        (lambda x: x, False),
        (lambda x, *args, **kwargs: x, False),  # MONAI's test models
        (lambda x, prompts=None: x, "keyword"),
        (lambda x, *, prompts: x, "keyword"),
        (torch.nn.Identity(), False),  # forward(input)
        (Net3d(), False),
        (max, True),  # no signature to read: the old convention
    ],
)
def test_how_a_callable_is_called(fn, style):
    assert takes_prompts(fn) == style


def test_prompts_reach_models_that_take_them():
    got = []

    def keyword_model(x, prompts=None):
        got.append(prompts)
        return x[:, :1].repeat(1, 2, 1, 1)

    segment(np.zeros((32, 32), np.float32), ["a", "b"], model=keyword_model, roi_size=32)
    assert got == [["a", "b"]]


def test_output_selection():
    a, b = np.zeros(1), np.ones(1)
    assert select_output((a, b), None) is a and select_output([a, b], -1) is b
    assert select_output({"seg": b, "aux": a}, None) is b
    assert select_output({"seg": b, "aux": a}, "aux") is a
    assert select_output(a, None) is a
    with pytest.raises(ValueError, match=r"output_key='x' is not a key of the model's output "
                                         r"\['seg'\]"):  # fmt: skip
        select_output({"seg": a}, "x")
    with pytest.raises(ValueError, match=r"output_key=2: the model returned a tuple of 2"):
        select_output((a, b), 2)
    with pytest.raises(ValueError, match=r"output_key='seg' picks one output of a model that "
                                         r"returns a tuple or dict; this model returned a single "
                                         r"ndarray"):  # fmt: skip
        select_output(a, "seg")
    with pytest.raises(ValueError, match="the model returned an empty dict"):
        select_output({}, None)


def test_output_channels_must_match_prompts():
    def three(x):
        return x.repeat(1, 3, 1, 1)

    with pytest.raises(
        ValueError,
        match=r"the model returned 3 output channels for 2 prompts; it must give one channel "
        r"per prompt, in order",
    ):
        segment(np.zeros((32, 32), np.float32), ["a", "b"], model=three, roi_size=32)
