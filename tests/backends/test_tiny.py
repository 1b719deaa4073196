from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from napari_llmseg import get_model, list_models, segment
from napari_llmseg.backends.text import encode_texts
from napari_llmseg.backends.tiny import WEIGHTS_DIR, LLMSegTiny
from napari_llmseg.engine.normalize import compute_stats
from napari_llmseg.io.open import open_image


@pytest.fixture(scope="module")
def tiny() -> LLMSegTiny:
    return get_model("llmseg-tiny", device="cpu")


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_embedded_weights_are_small_safetensors():
    files = sorted(p.name for p in WEIGHTS_DIR.iterdir())
    assert files == ["config.json", "model.safetensors"]
    config = json.loads((WEIGHTS_DIR / "config.json").read_text())
    assert config["model_type"] == "llmseg-tiny"
    assert config["parameters"] <= 5_000_000
    assert (WEIGHTS_DIR / "model.safetensors").stat().st_size < 10 * 1024**2
    assert "llmseg-tiny" in list_models()


def test_text_embeddings_are_meaningful():
    e = encode_texts(["cell nuclei", "the nucleus of a cell", "water"])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > 0.8 and e[0] @ e[2] < 0.3


def test_predict_shapes_dtype_and_determinism(tiny, rng):
    raw = rng.uniform(0, 1000, size=(3, 1, 40, 52)).astype(np.float32)
    stats = compute_stats(open_image(raw[:, 0]))
    enc = tiny.encode_prompts(["nuclei", "car"])
    a = tiny.predict(tiny.preprocess(raw, stats), enc)
    b = tiny.predict(tiny.preprocess(raw, stats), enc)
    assert a.shape == (3, 2, 40, 52) and a.dtype == np.float32
    assert np.array_equal(a, b)
    # a batch of one gives the same logits as inside a batch of three (no batch coupling)
    c = tiny.predict(tiny.preprocess(raw[1:2], stats), enc)
    np.testing.assert_allclose(c[0], a[1], atol=1e-4)


def test_fused_channels_last_prediction_matches_the_trained_network(tiny, sample_volume):
    """predict() runs inference_net (BatchNorm folded, channels-last); logits() the network as
    trained. Same function up to float rounding, and the same labels."""
    from napari_llmseg.backends.tiny import inference_net

    raw = sample_volume[20:24, None, :128, :96].astype(np.float32)
    stats = compute_stats(open_image(sample_volume))
    enc = tiny.encode_prompts(["nuclei", "bone"])
    x = tiny.preprocess(raw, stats)
    fast = tiny.predict(x, enc)
    with torch.inference_mode():
        slow = tiny.logits(x, enc).numpy()
    assert fast.flags.c_contiguous and fast.shape == slow.shape == (4, 2, 128, 96)
    np.testing.assert_allclose(fast, slow, atol=1e-3)
    assert np.mean((fast > 0) != (slow > 0)) < 1e-4
    net = inference_net(tiny.net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny.net.modules())  # untouched


def test_inference_copy_follows_in_place_training(sample_volume):
    """Fine-tuning trains model.net in place: predictions must use the new weights."""
    model = LLMSegTiny()
    raw = sample_volume[20:22, None, :64, :64].astype(np.float32)
    stats = compute_stats(open_image(sample_volume))
    enc = model.encode_prompts(["nuclei"])
    x = model.preprocess(raw, stats)
    before = model.predict(x, enc)
    assert np.array_equal(model.predict(x, enc), before)  # cached copy reused
    with torch.no_grad():
        model.net.proj.bias += 1.0  # what an optimiser step does
    after = model.predict(x, enc)
    with torch.inference_mode():
        np.testing.assert_allclose(after, model.logits(x, enc).numpy(), atol=1e-3)
    assert np.abs(after - before).max() > 0.01


def test_text_is_encoded_once_and_each_window_once_for_all_prompts(
    tiny, sample_volume, monkeypatch
):
    text_calls, feature_calls = [], []
    net_class = type(tiny.net)  # prediction runs a fused copy of tiny.net (inference_net)
    orig_encode, orig_features = tiny.encode_prompts, net_class.features
    monkeypatch.setattr(
        tiny, "encode_prompts", lambda p: text_calls.append(list(p)) or orig_encode(p)
    )
    monkeypatch.setattr(
        net_class,
        "features",
        lambda self, x: feature_calls.append(x.shape[0]) or orig_features(self, x),
    )
    res = segment(
        sample_volume[:6], ["nuclei", "giraffe", "bone"], model=tiny, roi_size=128, batch_size=4
    )
    assert text_calls == [["nuclei", "giraffe", "bone"]]
    assert sum(feature_calls) == res.info.windows == 6 * 9


def test_segments_unseen_part_of_the_sample(tiny, sample_volume, sample_labels):
    """Slab x >= 176 of the bundled volume was held out of training."""
    held = np.ascontiguousarray(sample_volume[:, :, 176:])
    truth = sample_labels[:, :, 176:] > 0
    res = segment(held, ["nuclei", "giraffe"], model=tiny)
    assert dice(res.labels == 1, truth) > 0.8
    assert (res.labels == 2).mean() < 0.01  # absent concept: (near) empty
    assert res.probabilities[1].max() < 0.9


def test_model_folder_roundtrip_and_pickle_refusal(tmp_path):
    folder = tmp_path / "mymodel"
    shutil.copytree(WEIGHTS_DIR, folder)
    model = get_model(str(folder), device="cpu")
    assert isinstance(model, LLMSegTiny) and model.describe()["folder"] == str(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"only pickle-based weights \(pytorch_model.bin\); they are refused"
    ):
        get_model(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(ValueError, match="holds a 'resnet' model, which no backend loads"):
        get_model(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match=r"has no config\.json"):
        get_model(str(folder))


def test_channels_checked_early(tiny):
    with pytest.raises(
        ValueError, match="takes 1 \\(grayscale\\) or 3 \\(RGB\\) channels, the image has 2"
    ):
        segment(np.zeros((2, 64, 64), np.float32), "nuclei", model=tiny, channel_axis=0)
    out = segment(np.zeros((64, 64, 3), np.uint8), "nuclei", model=tiny, channel_axis=-1)
    assert out.labels.shape == (64, 64)


def test_device_auto_is_cpu_here():
    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    assert get_model(device="auto").device == torch.device("cpu")


# -- the concepts of the three domains, on held-out data (regions from configs/llmseg-tiny.json)


def test_ct_is_windowed_not_stretched(tiny):
    """Hounsfield units get the model's own CT window unless the caller chose one."""
    from napari_llmseg.backends.tiny import model_stats
    from napari_llmseg.engine.normalize import IntensityStats

    ct = IntensityStats(low=(-1024.0,), high=(1650.0,))
    windowed = model_stats(ct, tiny.config)
    level, width = tiny.config["normalization"]["ct_window"]
    assert windowed.low == (level - width / 2,) and windowed.high == (level + width / 2,)
    chosen = IntensityStats.from_window(40, 400, 1)  # --window soft-tissue wins
    assert model_stats(chosen, tiny.config) is chosen
    mri = IntensityStats(low=(0.0,), high=(120.0,))
    assert model_stats(mri, tiny.config) is mri


@pytest.mark.slow
def test_bone_and_soft_tissue_in_held_out_ct_planes(tiny):
    from napari_llmseg.training.data import load

    ct, masks = load("head-ct")
    held = slice(80, 108)  # never seen in training (z < 72)
    res = segment(ct[held], ["bone", "soft tissue", "giraffe"], model=tiny)
    assert dice(res.labels == 1, masks["bone"][held]) > 0.85
    assert dice(res.labels == 2, masks["soft tissue"][held]) > 0.8
    assert (res.labels == 3).mean() < 0.01


def test_brain_in_held_out_mri_planes(tiny):
    from napari_llmseg.training.data import load

    t1, masks = load("t1-mri")
    held = slice(120, 170)  # never seen in training (z < 100)
    res = segment(t1[held], ["brain", "car", "water"], model=tiny)
    assert dice(res.labels == 1, masks["brain"][held]) > 0.75
    assert (res.labels == 2).mean() < 0.01 and (res.labels == 3).mean() < 0.01


def test_water_in_the_held_out_part_of_the_landsat_rgb(tiny):
    from napari_llmseg.training.data import load

    rgb, masks = load("landsat")
    held = slice(216, 352)  # rows never seen in training (y < 200)
    res = segment(rgb[held], ["water", "giraffe"], model=tiny, channel_axis=-1)
    assert dice(res.labels == 1, masks["water"][held]) > 0.5
    assert (res.labels == 2).mean() < 0.01
