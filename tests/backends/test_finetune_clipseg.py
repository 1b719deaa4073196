"""Fine-tuning CLIPSeg: only its decoder trains, and the folder loads as a CLIPSeg model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_llmseg import get_model, segment
from napari_llmseg.backends.clipseg import CLIPSegBackend
from napari_llmseg.training.finetune import RECORD_FILE, finetune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_clipseg_decoder_learns_and_reloads(clipseg_dir, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, (4, 64, 64)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 16:48, 8:40] = 1
    image[labels > 0] += 80
    base = get_model(f"clipseg:{clipseg_dir}")
    snapshot = {k: v.clone() for k, v in base.model.state_dict().items()}  # type: ignore[attr-defined]
    result = finetune(image, labels, "bright square", base=base, out=tmp_path / "cs",
                      epochs=6, steps_per_epoch=4, batch_size=4, lr=3e-3)  # fmt: skip
    assert result.base == "clipseg"
    assert result.trainable_parameters == sum(
        p.numel()
        for p in base.model.decoder.parameters()  # type: ignore[attr-defined]
    )
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.val_dice > result.val_dice_before

    tuned = get_model(tmp_path / "cs")
    assert isinstance(tuned, CLIPSegBackend)
    after = tuned.model.state_dict()
    changed = {k for k in snapshot if not np.array_equal(snapshot[k].numpy(), after[k].numpy())}
    assert changed and all(k.startswith("decoder.") for k in changed), changed
    # the caller's model was not modified by training
    current = base.model.state_dict()  # type: ignore[attr-defined]
    assert all(np.array_equal(snapshot[k].numpy(), current[k].numpy()) for k in snapshot)
    files = {p.name for p in (tmp_path / "cs").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert json.loads((tmp_path / "cs" / RECORD_FILE).read_text())["prompt"] == "bright square"
    res = segment(image[:1], "bright square", model=tmp_path / "cs")
    assert res.labels.shape == (1, 64, 64)
