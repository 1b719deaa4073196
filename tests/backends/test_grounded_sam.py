from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_llmseg import get_model, segment
from napari_llmseg.backends.grounded_sam import (
    GroundedSamBackend,
    GroundedWindows,
    box_iou,
    nms,
    resolve_pair,
)

from .conftest import CallCounter
from .tiny_models import DINO_SIZE, SAM_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")


PROMPTS = ["cell nuclei", "water", "bone"]


@pytest.fixture(scope="module")
def grounded(grounded_dir) -> GroundedSamBackend:
    model = get_model(f"grounded-sam:{grounded_dir}", device="cpu")
    assert isinstance(model, GroundedSamBackend)
    return model


def raw_windows(n: int, size: int = DINO_SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1200, size=(n, 1, size, size)).astype(np.float32)


def test_box_iou_and_nms():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 5, 10.0]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == pytest.approx(81 / 100) and iou[0, 2] == 0 and iou[0, 3] == 0.5
    keep = nms(boxes, torch.tensor([0.5, 0.9, 0.7, 0.6]), 0.8)
    assert keep.tolist() == [1, 2, 3]  # box 0 overlaps the better box 1 by 0.81
    # box 3 overlaps box 1 by 36 / 95 = 0.38
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.7, 0.6]), 0.3).tolist() == [1, 2]


def test_loaded_from_a_grounded_sam_folder(grounded, grounded_dir):
    assert json.loads((grounded_dir / "config.json").read_text()) == {
        "model_type": "grounded-sam",
        "detector": "detector",
        "segmenter": "segmenter",
    }
    assert grounded.default_roi == DINO_SIZE and grounded.gives_instances
    assert grounded.detector_image.size == {"shortest_edge": DINO_SIZE, "longest_edge": 160}
    assert grounded.segmenter_image.size == {"longest_edge": SAM_SIZE}
    assert grounded.segmenter_image.pad_size == (SAM_SIZE, SAM_SIZE)
    desc = grounded.describe()
    assert desc["detector"] == {"folder": str(grounded_dir / "detector")}
    assert desc["segmenter"] == {"folder": str(grounded_dir / "segmenter")}
    assert desc["box_threshold"] == 0.3 and desc["max_objects"] == 100


def test_caption_tokens_and_members(grounded):
    cap = grounded.caption(["Cell nuclei", "water."])
    tok = grounded.tokenizer
    ids = cap.input_ids[0].tolist()
    assert tok.convert_ids_to_tokens(ids) == [
        "[CLS]",
        "cell",
        "nuclei",
        ".",
        "water",
        ".",
        "[SEP]",
    ]
    assert cap.members.tolist() == [
        [False, True, True, False, False, False, False],
        [False, False, False, False, True, False, False],
    ]
    with pytest.raises(
        ValueError,
        match=r"the 6 prompts make a caption of 68 tokens; Grounding DINO reads at most 64",
    ):
        grounded.caption(["a b c d e f g h i j"] * 6)


def test_predict_shapes_determinism_and_cached_text(grounded, stats):
    raw = raw_windows(2, size=100)
    batch = grounded.preprocess(raw, stats)
    assert isinstance(batch, GroundedWindows)
    assert tuple(batch.detector.pixels.shape) == (2, 3, DINO_SIZE, DINO_SIZE)
    assert tuple(batch.segmenter.pixels.shape) == (2, 3, SAM_SIZE, SAM_SIZE)
    enc = grounded.encode_prompts(PROMPTS)
    a = grounded.predict(batch, enc)
    assert a.shape == (2, 3, 100, 100) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, grounded.predict(grounded.preprocess(raw, stats), enc))
    np.testing.assert_allclose(
        grounded.predict(grounded.preprocess(raw[1:], stats), enc)[0], a[1], atol=1e-4
    )
    # the stored caption features are exactly what the detector computes itself
    with torch.inference_mode():
        scores, boxes = grounded._detect(batch.detector.pixels, enc)
        stored = grounded.text.ids
        grounded.text.ids = None  # forget: the real backbone runs inside the detector
        try:
            scores_ref, boxes_ref = grounded._detect(batch.detector.pixels, enc)
        finally:
            grounded.text.ids = stored
    assert scores.shape == (2, grounded.detector.config.num_queries, 3)
    torch.testing.assert_close(scores, scores_ref)
    torch.testing.assert_close(boxes, boxes_ref)


def test_instances_match_the_semantic_output(grounded, stats):
    batch = grounded.preprocess(raw_windows(2, size=80), stats)
    enc = grounded.encode_prompts(PROMPTS[:2])
    logits, found = grounded.predict_with_instances(batch, enc)
    assert np.array_equal(logits, grounded.predict(batch, enc))
    assert len(found) == 2 and sum(map(len, found)) > 0
    prob = 1 / (1 + np.exp(-logits))
    for i, w in enumerate(found):
        n = len(w)
        assert w.masks.shape == (n, 80, 80) and w.masks.dtype == bool
        assert (w.scores > grounded.box_threshold).all() and (w.scores <= 1).all()
        assert set(w.prompt_index.tolist()) <= {0, 1}
        assert w.boxes.shape == (n, 4) and (w.boxes[:, 2:] >= w.boxes[:, :2]).all()
        for k in (0, 1):  # per prompt: best first, at most max_objects, no big overlaps
            mine = w.prompt_index == k
            assert (np.diff(w.scores[mine]) <= 0).all() and mine.sum() <= grounded.max_objects
            iou = box_iou(torch.from_numpy(w.boxes[mine]), torch.from_numpy(w.boxes[mine]))
            assert (iou.triu(1) <= grounded.nms_threshold + 1e-6).all()
        for j in range(n):
            inside = prob[i, w.prompt_index[j]][w.masks[j]]
            assert inside.size == 0 or inside.min() >= 0.5 * w.scores[j] - 1e-3
    # no box above the threshold: empty instances, probability ~0 everywhere
    grounded.box_threshold = 1.0
    try:
        logits, found = grounded.predict_with_instances(batch, enc)
    finally:
        grounded.box_threshold = 0.3
    assert all(len(w) == 0 for w in found) and logits.max() < -13


def test_text_once_per_run_and_each_window_once(grounded, nuclei_plane, monkeypatch):
    text = CallCounter(monkeypatch, grounded.text.backbone)
    swin = CallCounter(monkeypatch, grounded.detector.model.backbone)
    sam_vision = CallCounter(monkeypatch, grounded.segmenter.vision_encoder)
    res = segment(nuclei_plane, PROMPTS, model=grounded, batch_size=3)
    assert res.info.windows == 4 and res.probabilities.shape == (3, 160, 150)
    assert text.sizes == [1]  # one caption holding all prompts, once per run
    assert swin.rows == 4 and swin.calls == 2
    assert sam_vision.rows == 4 and sam_vision.calls == 2


def test_pair_spec_and_folder_errors(grounded_dir, tmp_path, stats):
    det, seg = resolve_pair(f"{grounded_dir / 'detector'}+{grounded_dir / 'segmenter'}")
    assert det.folder == grounded_dir / "detector" and seg.folder == grounded_dir / "segmenter"
    with pytest.raises(ValueError, match=r"bad grounded-sam model 'just-one': expected DETECTOR"):
        get_model("grounded-sam:just-one")
    bad = tmp_path / "gs"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "grounded-sam", "detector": 3}))
    with pytest.raises(ValueError, match=r"config.json needs a 'detector' entry .* got 3"):
        get_model(str(bad))
    with pytest.raises(ValueError, match=r"holds only a Grounding DINO detector; grounded-sam"):
        get_model(str(grounded_dir / "detector"))
    with pytest.raises(ValueError, match=r"holds only a SAM segmenter"):
        get_model(str(grounded_dir / "segmenter"))
    swapped = f"{grounded_dir / 'segmenter'}+{grounded_dir / 'detector'}"
    with pytest.raises(ValueError, match=r"holds a 'sam' model, not a grounded-sam detector"):
        get_model(f"grounded-sam:{swapped}")
