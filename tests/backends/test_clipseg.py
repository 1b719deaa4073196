from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from napari_llmseg import get_model, segment
from napari_llmseg.backends.clipseg import CLIPSegBackend
from napari_llmseg.backends.hf import PreparedWindows

from .conftest import CallCounter
from .tiny_models import CLIPSEG_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")


PROMPTS = ["cell nuclei", "water", "bone", "car"]


@pytest.fixture(scope="module")
def clipseg(clipseg_dir) -> CLIPSegBackend:
    model = get_model(f"clipseg:{clipseg_dir}", device="cpu")
    assert isinstance(model, CLIPSegBackend)
    return model


def raw_windows(n: int, size: int = CLIPSEG_SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1200, size=(n, 1, size, size)).astype(np.float32)


def test_loaded_from_the_folder_with_the_processor_settings(clipseg, clipseg_dir):
    assert clipseg.default_roi == CLIPSEG_SIZE
    assert clipseg.image.size == {"height": CLIPSEG_SIZE, "width": CLIPSEG_SIZE}
    assert clipseg.image.mean == pytest.approx((0.485, 0.456, 0.406))
    assert clipseg.image.std == pytest.approx((0.229, 0.224, 0.225))
    assert clipseg.image.rescale_factor == pytest.approx(1 / 255)
    assert clipseg.describe() == {"name": "clipseg", "folder": str(clipseg_dir)}
    assert not clipseg.gives_instances
    assert clipseg.model.training is False


def test_predict_shapes_dtype_and_determinism(clipseg, stats):
    enc = clipseg.encode_prompts(PROMPTS[:3])
    assert enc.shape == (3, clipseg.model.config.projection_dim)
    raw = raw_windows(2, size=80)  # windows larger than the model input: resized both ways
    batch = clipseg.preprocess(raw, stats)
    assert isinstance(batch, PreparedWindows)
    assert tuple(batch.pixels.shape) == (2, 3, CLIPSEG_SIZE, CLIPSEG_SIZE)
    a = clipseg.predict(batch, enc)
    b = clipseg.predict(clipseg.preprocess(raw, stats), enc)
    assert a.shape == (2, 3, 80, 80) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.isfinite(a).all() and a.std() > 0
    # a window alone gives what it gives inside a batch
    c = clipseg.predict(clipseg.preprocess(raw[1:], stats), enc)
    np.testing.assert_allclose(c[0], a[1], atol=1e-5)
    # prompts are independent: one prompt alone gives its slice of the multi-prompt output
    d = clipseg.predict(batch, clipseg.encode_prompts(PROMPTS[1:2]))
    np.testing.assert_allclose(d[:, 0], a[:, 1], atol=1e-5)


def test_shared_vision_pass_matches_the_full_transformers_forward(clipseg, stats):
    """Vision once + decoder for P prompts == CLIPSeg's own forward on each (window, prompt)."""
    batch = clipseg.preprocess(raw_windows(2), stats)
    ours = clipseg.predict(batch, clipseg.encode_prompts(PROMPTS[:3]))
    tokens = clipseg.tokenizer(PROMPTS[:3], padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = clipseg.model(
            input_ids=tokens["input_ids"].repeat(2, 1),
            attention_mask=tokens["attention_mask"].repeat(2, 1),
            pixel_values=batch.pixels.repeat_interleave(3, 0),
        ).logits
    np.testing.assert_allclose(ours, ref.reshape(2, 3, *ref.shape[-2:]).numpy(), atol=1e-5)


def test_text_encoded_once_per_run_and_each_window_once(clipseg, nuclei_plane, monkeypatch):
    text = CallCounter(monkeypatch, clipseg.model.clip.text_model)
    vision = CallCounter(monkeypatch, clipseg.model.clip.vision_model)
    decoder = CallCounter(monkeypatch, clipseg.model.decoder, lambda a, k: a[1])
    res = segment(nuclei_plane, PROMPTS, model=clipseg, batch_size=4)
    assert res.info.windows == 9
    assert text.sizes == [4]  # one call, one row per prompt
    assert vision.rows == 9 and vision.calls == res.info.batches == 3
    assert decoder.rows == 9 * 4 and decoder.calls == 3  # light decoder: window x prompt


def test_segment_end_to_end_records_the_model(clipseg, clipseg_dir, nuclei_plane):
    a = segment(nuclei_plane, ["cell nuclei", "water"], model=clipseg)
    b = segment(nuclei_plane, ["cell nuclei", "water"], model=f"clipseg:{clipseg_dir}")
    assert a.probabilities.shape == (2, 160, 150) and a.probabilities.dtype == np.float32
    assert a.labels.shape == (160, 150) and set(np.unique(a.labels)) <= {0, 1, 2}
    assert np.array_equal(a.probabilities, b.probabilities)
    assert a.metadata["model"] == {"name": "clipseg", "folder": str(clipseg_dir)}
    assert a.metadata["roi_size"] == [CLIPSEG_SIZE, CLIPSEG_SIZE]
    assert a.info.batch_size_used == 4 and a.metadata["batch_size_used"] == 4


def test_rgb_and_channel_checks(clipseg):
    rgb = np.random.default_rng(0).integers(0, 255, (70, 70, 3)).astype(np.uint8)
    res = segment(rgb, "car", model=clipseg, channel_axis=-1)
    assert res.probabilities.shape == (1, 70, 70)
    with pytest.raises(ValueError, match=r"clipseg takes 1 \(grayscale\) or 3 \(RGB\) channels"):
        segment(np.zeros((2, 70, 70), np.float32), "car", model=clipseg, channel_axis=0)


def test_cuda_out_of_memory_halves_the_batch_and_reports_it(
    clipseg, nuclei_plane, monkeypatch, caplog
):
    reference = segment(nuclei_plane, PROMPTS[:2], model=clipseg, batch_size=8)
    original = clipseg._logits
    seen: list[int] = []

    def tight_memory(pixels, encoded):
        seen.append(pixels.shape[0])
        if pixels.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(pixels, encoded)

    monkeypatch.setattr(clipseg, "_logits", tight_memory)
    try:
        with caplog.at_level(logging.WARNING, logger="napari_llmseg"):
            res = segment(nuclei_plane, PROMPTS[:2], model=clipseg, batch_size=8)
        assert res.info.batch_size_used == 2 and clipseg.batch_limit == 2
        assert res.metadata["batch_size_used"] == 2
        assert seen[:3] == [8, 4, 2] and max(seen[3:]) == 2  # later batches start at 2
        assert "CUDA out of memory with 8 windows at once; retrying with 4" in caplog.text
        np.testing.assert_allclose(res.probabilities, reference.probabilities, atol=1e-5)

        monkeypatch.setattr(
            clipseg,
            "_logits",
            lambda p, e: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory")),
        )
        with pytest.raises(RuntimeError, match="clipseg: one window does not fit in GPU memory"):
            segment(nuclei_plane, "water", model=clipseg, batch_size=1)
    finally:
        clipseg.batch_limit = None
