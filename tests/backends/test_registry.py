from __future__ import annotations

from types import SimpleNamespace

import pytest

from napari_llmseg import get_model, list_models
from napari_llmseg.backends import registry
from napari_llmseg.backends.base import PromptSegmenter
from napari_llmseg.backends.registry import ModelInfo, model_info

pytestmark = pytest.mark.usefixtures("one_thread")


def test_builtin_names_and_infos(hf_cache):
    builtin = ["llmseg-tiny", "clipseg", "grounded-sam", "llmseg-taught", "monai", "sam3"]
    assert list_models()[:6] == builtin
    assert model_info("clipseg") == ModelInfo(
        "clipseg",
        "CIDAS/clipseg-rd64-refined@325a839908143a34b409ae6f2910fa015ea390e6",
        False,
        False,
        "CLIPSeg: fast, coarse semantic masks (Apache-2.0)",
        can_finetune=True,
    )
    sam3 = model_info("sam3")
    assert (sam3.default_id, sam3.gives_instances, sam3.available_offline) == (
        "facebook/sam3",
        True,
        False,
    )
    assert "gated" in sam3.description
    gs = model_info("grounded-sam")
    assert gs.default_id == "IDEA-Research/grounding-dino-tiny+facebook/sam-vit-base"
    assert gs.gives_instances and not gs.available_offline
    assert model_info("llmseg-tiny").available_offline
    with pytest.raises(
        ValueError, match=r"unknown model 'sam9'; known models: llmseg-tiny, clipseg"
    ):
        model_info("sam9")


def test_grounded_sam_is_available_only_with_both_models(hf_cache, clipseg_dir):
    from .conftest import put_in_cache

    put_in_cache(hf_cache, "IDEA-Research/grounding-dino-tiny", folder=clipseg_dir)
    assert not model_info("grounded-sam").available_offline
    put_in_cache(hf_cache, "facebook/sam-vit-base", folder=clipseg_dir)
    assert model_info("grounded-sam").available_offline


def test_name_with_a_folder_of_another_architecture(sam3_dir, clipseg_dir):
    with pytest.raises(
        ValueError,
        match=r"holds a 'sam3' model, not a clipseg model \(config.json model_type must be "
        r"'clipseg'\)",
    ):
        get_model(f"clipseg:{sam3_dir}", device="cpu")
    with pytest.raises(ValueError, match=r"holds a 'clipseg' model, not a sam3 model"):
        get_model(f"sam3:{clipseg_dir}", device="cpu")


def test_entry_point_backends(monkeypatch):
    calls = []

    class Plugin(PromptSegmenter):
        name = "myseg"

        def encode_prompts(self, prompts):
            return prompts

        def preprocess(self, windows, stats):
            return windows

        def predict(self, batch, encoded):
            return batch[:, :1].repeat(len(encoded), axis=1)

    def load(spec, *, device, dtype=None):
        calls.append((spec, str(device), dtype))
        return Plugin()

    ep = SimpleNamespace(name="myseg", value="myseg_pkg:load", load=lambda: load)
    ours = registry._entry_points()
    monkeypatch.setattr(registry, "_entry_points", lambda: {**ours, "myseg": ep})
    assert list_models() == [
        "llmseg-tiny",
        "clipseg",
        "grounded-sam",
        "llmseg-taught",
        "monai",
        "sam3",
        "myseg",
    ]
    assert isinstance(get_model("myseg:some/weights", device="cpu", dtype="bf16"), Plugin)
    assert get_model("myseg", device="cpu").name == "myseg"
    assert calls == [("some/weights", "cpu", "bf16"), (None, "cpu", None)]
    assert model_info("myseg").description == "from entry point myseg_pkg:load"


def test_builtins_register_through_the_entry_point_group():
    """Built-in backends use the same entry-point group as third parties; each spec loads
    what its config.json model_type names."""
    eps = registry._entry_points()
    assert {n: eps[n].value for n in ("llmseg-tiny", "clipseg", "sam3", "grounded-sam")} == {
        "llmseg-tiny": "napari_llmseg.backends.tiny:BACKEND",
        "clipseg": "napari_llmseg.backends.clipseg:BACKEND",
        "sam3": "napari_llmseg.backends.sam3:BACKEND",
        "grounded-sam": "napari_llmseg.backends.grounded_sam:BACKEND",
    }
    assert registry.backend_spec("sam3").folder_types == ("sam3", "sam3_video")
    assert "llmseg-tiny" in registry.backend_spec("llmseg-tiny").folder_types
    assert model_info("llmseg-tiny").concepts == (
        "bone", "brain", "nuclei", "soft tissue", "vegetation", "water",
    )  # fmt: skip
