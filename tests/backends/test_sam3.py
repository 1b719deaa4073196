from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from napari_llmseg import get_model, segment
from napari_llmseg.backends.base import WindowInstances
from napari_llmseg.backends.sam3 import Sam3Backend, semantic_logits

from .conftest import CallCounter
from .tiny_models import SAM3_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")


PROMPTS = ["cell nuclei", "water", "bone"]


@pytest.fixture(scope="module")
def sam3(sam3_dir) -> Sam3Backend:
    model = get_model(str(sam3_dir), device="cpu")  # folder alone: dispatched on model_type
    assert isinstance(model, Sam3Backend)
    return model


def raw_windows(n: int, size: int = SAM3_SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1200, size=(n, 1, size, size)).astype(np.float32)


def test_semantic_logits_is_max_of_score_weighted_masks():
    scores = torch.tensor([[0.9, 0.2]])  # one prompt, two queries
    masks = torch.tensor([[[[10.0, -10.0]], [[10.0, 10.0]]]])  # (1, Q=2, 1, 2)
    prob = torch.sigmoid(semantic_logits(scores, masks))
    np.testing.assert_allclose(prob.numpy(), [[[0.9, 0.2]]], atol=1e-4)
    empty = semantic_logits(torch.zeros(2, 0), torch.zeros(2, 0, 3, 3))
    assert empty.shape == (2, 3, 3) and float(empty.max()) < -13


def test_loaded_with_processor_settings(sam3, sam3_dir):
    assert sam3.default_roi == SAM3_SIZE and sam3.gives_instances
    assert sam3.image.size == {"height": SAM3_SIZE, "width": SAM3_SIZE}
    assert sam3.image.mean == (0.5, 0.5, 0.5) and sam3.image.std == (0.5, 0.5, 0.5)
    assert sam3.max_text == 32
    assert sam3.describe() == {"name": "sam3", "folder": str(sam3_dir), "score_threshold": 0.3}


def test_predict_shapes_dtype_determinism_and_full_forward(sam3, stats):
    enc = sam3.encode_prompts(PROMPTS)
    assert tuple(enc.features.shape[:2]) == (3, 32) and tuple(enc.mask.shape) == (3, 32)
    batch = sam3.preprocess(raw_windows(2), stats)
    a = sam3.predict(batch, enc)
    assert a.shape == (2, 3, SAM3_SIZE, SAM3_SIZE) and a.dtype == np.float32
    assert np.array_equal(a, sam3.predict(sam3.preprocess(raw_windows(2), stats), enc))
    # shared vision features + stored text == Sam3Model's forward on every (window, prompt)
    tokens = sam3.tokenizer(PROMPTS, padding="max_length", max_length=32, return_tensors="pt")
    with torch.inference_mode():
        out = sam3.model(
            pixel_values=batch.pixels.repeat_interleave(3, 0),
            input_ids=tokens["input_ids"].repeat(2, 1),
            attention_mask=tokens["attention_mask"].repeat(2, 1),
        )
    scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()
    ref = semantic_logits(scores, out.pred_masks)
    ref = torch.nn.functional.interpolate(
        ref[:, None], size=(SAM3_SIZE, SAM3_SIZE), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(a, ref.reshape(2, 3, SAM3_SIZE, SAM3_SIZE).numpy(), atol=1e-4)
    # one window alone, one prompt alone
    np.testing.assert_allclose(
        sam3.predict(sam3.preprocess(raw_windows(2)[1:], stats), enc)[0], a[1], atol=1e-4
    )
    np.testing.assert_allclose(
        sam3.predict(batch, sam3.encode_prompts(PROMPTS[2:]))[:, 0], a[:, 2], atol=1e-4
    )


def test_instances_per_window(sam3, stats):
    enc = sam3.encode_prompts(PROMPTS[:2])
    batch = sam3.preprocess(raw_windows(3, size=90), stats)
    logits, found = sam3.predict_with_instances(batch, enc)
    assert logits.shape == (3, 2, 90, 90) and len(found) == 3
    assert all(len(w) == 0 and w.masks.shape == (0, 90, 90) for w in found)  # random weights
    sam3.score_threshold = 0.0  # keep every query
    try:
        found = sam3.predict_instances(batch, enc)
        logits_again, found_again = sam3.predict_with_instances(batch, enc)
    finally:
        sam3.score_threshold = 0.3
    assert np.array_equal(logits_again, logits)
    n_queries = sam3.model.config.detr_decoder_config.num_queries
    for w, w2 in zip(found, found_again, strict=True):
        assert isinstance(w, WindowInstances) and len(w) == 2 * n_queries
        assert w.masks.dtype == bool and w.masks.shape == (2 * n_queries, 90, 90)
        assert w.scores.dtype == np.float32 and ((w.scores > 0) & (w.scores < 1)).all()
        assert np.array_equal(np.bincount(w.prompt_index), [n_queries, n_queries])
        assert w.boxes.shape == (2 * n_queries, 4) and (w.boxes >= -1e-3).all()
        assert (w.boxes <= 90 + 1e-3).all()
        assert np.array_equal(w.masks, w2.masks) and np.array_equal(w.scores, w2.scores)
    # semantic and instance outputs agree: inside an instance's mask (mask probability
    # > 0.5), the prompt's semantic probability is at least half the instance's score
    prob = 1 / (1 + np.exp(-logits))
    for i, w in enumerate(found):
        for j in range(len(w)):
            inside = prob[i, w.prompt_index[j]][w.masks[j]]
            assert inside.size == 0 or inside.min() >= 0.5 * w.scores[j] - 1e-3


def test_text_once_per_run_and_vision_once_per_window(sam3, nuclei_plane, monkeypatch):
    text = CallCounter(monkeypatch, sam3.model.text_encoder)
    vision = CallCounter(monkeypatch, sam3.model.vision_encoder)
    detr = CallCounter(monkeypatch, sam3.model.detr_encoder, lambda a, k: k["text_features"])
    res = segment(nuclei_plane, PROMPTS, model=sam3, batch_size=3)
    assert res.info.windows == 4 and res.probabilities.shape == (3, 160, 150)
    assert text.sizes == [3]
    assert vision.rows == 4 and vision.calls == 2
    assert detr.rows == 4 * 3  # the prompt-dependent part runs per (window, prompt)


def test_sam3_video_folder_loads_its_detector(sam3, sam3_dir, tmp_path, stats):
    """facebook/sam3 ships a sam3_video config whose detector is the image model."""
    from safetensors.torch import load_file, save_file

    video = tmp_path / "sam3-video"
    shutil.copytree(sam3_dir, video)
    detector = json.loads((sam3_dir / "config.json").read_text())
    config = {"model_type": "sam3_video", "detector_config": detector}
    (video / "config.json").write_text(json.dumps(config))
    weights = load_file(sam3_dir / "model.safetensors")
    save_file(
        {f"detector_model.{k}": v for k, v in weights.items()}
        | {"tracker_model.x": torch.ones(1)},
        video / "model.safetensors",
        metadata={"format": "pt"},
    )
    model = get_model(str(video), device="cpu")
    assert isinstance(model, Sam3Backend)
    batch = sam3.preprocess(raw_windows(1), stats)
    enc = ["water"]
    np.testing.assert_allclose(
        model.predict(batch, model.encode_prompts(enc)),
        sam3.predict(batch, sam3.encode_prompts(enc)),
        atol=1e-6,
    )


def test_instances_through_segment_have_global_ids(sam3, nuclei_plane, monkeypatch):
    """The real SAM 3 code path end to end: per-window objects merged into global ids."""
    monkeypatch.setattr(sam3, "score_threshold", 0.0)  # random weights: keep every query
    res = segment(nuclei_plane[:96, :96], ["nuclei", "cells"], model=sam3, roi_size=64,
                  instances=True)  # fmt: skip
    inst = res.instances
    assert inst.shape == (96, 96) and inst.dtype == np.uint32
    ids = np.unique(inst)[1:]
    assert list(ids) == list(range(1, len(ids) + 1))  # sequential from 1
    assert set(res.instance_classes) == set(int(i) for i in ids)
    assert set(res.instance_classes.values()) <= {"nuclei", "cells"}
    assert res.metadata["objects"]["count"] == len(ids) > 0
