"""Models with named classes answer text prompts: matching prompts to classes, merging them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from napari_llmseg import segment
from napari_llmseg.backends.classes import (
    ClassMatch,
    check_class_names,
    class_probabilities,
    match_classes,
    merge_classes,
    parse_class_names,
    phrasings,
    words,
)
from napari_llmseg.cli import main
from napari_llmseg.options import SegmentOptions

ORGANS = {1: "liver", 2: "kidney_right", 3: "kidney_left"}


# --- matching ------------------------------------------------------------------------------
def test_names_and_prompts_are_read_as_singular_words():
    assert words("kidney_right") == ("kidney", "right")
    assert words("the Kidneys") == ("kidney",)
    assert words("LungUpperLobeLeft") == ("lung", "upper", "lobe", "left")
    assert words("vertebrae_L1") == ("vertebra", "l1")
    assert words("arteries") == ("artery",)
    assert words("pelvis") == ("pelvis",)  # not a plural
    assert phrasings("kidney_right") == ["kidney right", "right kidney"]
    assert phrasings("liver") == ["liver"]


@pytest.mark.parametrize(
    ("prompt", "channels", "how"),
    [
        ("kidneys", (2, 3), "words"),
        ("Kidney", (2, 3), "words"),
        ("liver", (1,), "words"),
        ("the livers", (1,), "words"),
        ("right kidney", (2,), "words"),
        ("left kidneys", (3,), "words"),
        ("renal", (2, 3), "meaning"),  # 0.79 and 0.76: within MARGIN of each other
        ("hepatic", (1,), "meaning"),  # 0.81; the next class 0.5
    ],
)
def test_prompts_match_classes_by_words_then_by_meaning(prompt, channels, how):
    (m,) = match_classes([prompt], ORGANS)
    assert (m.channels, m.how) == (channels, how)
    assert m.names == tuple(ORGANS[c] for c in channels)
    if how == "words":
        assert m.similarities == (1.0,) * len(channels) and m.note() is None
    else:
        assert all(0.7 < s < 0.9 for s in m.similarities)
        assert m.note().startswith(f"'{prompt}' is no class name; matched by meaning to ")


def test_a_prompt_matching_no_class_names_the_nearest_with_similarities():
    message = (
        "the prompt 'giraffe' matches none of the model's classes: the nearest are 'liver' "
        "(0.30), 'kidney_right' ("
    )
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        match_classes(["liver", "giraffe"], ORGANS)
    assert "at least 0.544" in str(err.value)
    assert str(err.value).endswith("classes: liver, kidney_right, kidney_left")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({-1: "liver"}, "class_names: channel -1 must be an integer >= 0"),
        ({"one": "liver"}, "class_names: channel 'one' must be an integer >= 0"),
        ({1: ""}, "class_names: channel 1 needs a non-empty name, got ''"),
        ({1: "liver", 2: "Liver"}, "class_names: 'Liver' names channels 1 and 2"),
        ({}, "class_names must name at least one class, got none"),
        ("liver", "class_names must be a mapping {channel: name} or a list of names"),
    ],
)
def test_bad_class_names_are_refused_naming_the_value(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_class_names(value)
    with pytest.raises(ValueError, match=re.escape(message)):
        SegmentOptions(model=lambda x: x, class_names=value)


def test_class_names_from_a_list_json_keys_a_file_or_pairs(tmp_path):
    assert check_class_names(["background", "liver"]) == {0: "background", 1: "liver"}
    assert check_class_names({"2": " kidney_right ", "1": "liver"}) == {
        1: "liver", 2: "kidney_right",
    }  # fmt: skip
    assert parse_class_names("1=liver, 2=kidney_right") == {1: "liver", 2: "kidney_right"}
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"0": "background", "1": "spleen"}))
    assert parse_class_names(str(path)) == {0: "background", 1: "spleen"}
    with pytest.raises(ValueError, match=r"class names file '.*missing\.json' does not exist"):
        parse_class_names(str(tmp_path / "missing.json"))
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"class names file '.*classes\.json' is not valid JSON"):
        parse_class_names(str(path))
    with pytest.raises(ValueError, match="expected a JSON file or CHANNEL=NAME pairs"):
        parse_class_names("liver")


# --- merging -------------------------------------------------------------------------------
def test_merge_sums_softmax_probabilities_of_each_prompts_classes():
    logits = np.array([0.0, 2.0, 1.0, -1.0], np.float32).reshape(1, 4, 1, 1)
    p = np.exp(logits[0, :, 0, 0]) / np.exp(logits[0, :, 0, 0]).sum()
    merged = merge_classes(logits, [(1,), (2, 3)])
    assert merged.shape == (1, 2, 1, 1) and merged.dtype == np.float32
    sig = 1 / (1 + np.exp(-merged[0, :, 0, 0].astype(np.float64)))
    np.testing.assert_allclose(sig, [p[1], p[2] + p[3]], rtol=1e-5)
    # an output that already is a softmax is used as it is
    probs = np.array([0.1, 0.6, 0.2, 0.1], np.float32).reshape(1, 4, 1, 1)
    np.testing.assert_allclose(class_probabilities(probs), probs)
    sig = 1 / (1 + np.exp(-merge_classes(probs, [(1,), (2, 3)])[0, :, 0, 0].astype(np.float64)))
    np.testing.assert_allclose(sig, [0.6, 0.3], rtol=1e-5)


def test_merge_refuses_an_output_with_too_few_channels():
    with pytest.raises(ValueError, match=re.escape(
        "the model returned an output of shape (2, 3, 8, 8), but its class names go up to "
        "channel 3: it must give (batch, 4 or more classes, *window)"
    )):  # fmt: skip
        merge_classes(np.zeros((2, 3, 8, 8), np.float32), [(1,), (2, 3)])


# --- end to end ----------------------------------------------------------------------------
class OracleNet(torch.nn.Module):
    """Channel k is 10 exactly where the input (a label image) is k, 0 elsewhere: a network
    that knows the answer, so that merged probabilities and labels can be checked by value."""

    def __init__(self, n_classes: int = 4, softmax: bool = False) -> None:
        super().__init__()
        self.n, self.softmax = n_classes, softmax

    def forward(self, x):  # MONAI style: the batch only
        out = torch.cat([(x.round() == k).float() * 10 for k in range(self.n)], dim=1)
        return torch.softmax(out, dim=1) if self.softmax else out


def organ_volume() -> np.ndarray:
    """(20, 40, 48) labels: liver (1), right kidney (2), left kidney (3), background 0."""
    vol = np.zeros((20, 40, 48), np.float32)
    vol[2:12, 4:20, 4:30] = 1
    vol[8:18, 24:34, 4:14] = 2
    vol[8:18, 24:34, 30:40] = 3
    return vol


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("roi", [(16, 16, 16), (32, 32)])  # 3D windows, and 2D plane by plane
def test_prompts_merge_classes_into_one_label_each(softmax, roi, tmp_path):
    vol = organ_volume()
    with pytest.warns(UserWarning, match="'renal' is no class name; matched by meaning"):
        result = segment(
            vol, ["liver", "kidneys", "renal"], model=OracleNet(softmax=softmax).eval(),
            class_names=ORGANS, roi_size=roi, overlap=0.25, out=tmp_path / "o.zarr",
        )  # fmt: skip
    assert result.label_names == {1: "liver", 2: "kidneys", 3: "renal"}
    labels = np.asarray(result.labels)
    expected = np.where(vol == 1, 1, np.where(vol >= 2, 2, 0))  # kidneys before renal: ties
    np.testing.assert_array_equal(labels, expected)
    prob = np.asarray(result.probabilities)
    assert prob.shape == (3, *vol.shape)
    high = np.exp(10) / (np.exp(10) + 3)  # one channel at 10, three at 0
    tol = 1 / 255  # stored as uint8
    assert abs(prob[0][vol == 1].min() - high) < tol and prob[0][vol != 1].max() < 0.01
    assert abs(prob[1][vol >= 2].min() - high) < tol
    np.testing.assert_allclose(prob[2], prob[1])  # the same classes
    assert abs(prob[1][vol == 0].max() - 2 / (np.exp(10) + 3)) < tol
    meta = result.metadata
    assert meta["class_names"] == {"1": "liver", "2": "kidney_right", "3": "kidney_left"}
    assert meta["prompt_classes"]["kidneys"] == {
        "channels": [2, 3], "classes": ["kidney_right", "kidney_left"], "how": "words",
    }  # fmt: skip
    assert meta["prompt_classes"]["renal"]["how"] == "meaning"


def test_a_random_network_gives_the_softmax_sum_of_its_classes():
    """A tiny random 3D network in one window (no blending): the probabilities are exactly
    the sums of its softmax, per prompt."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1)).eval()
    vol = np.random.default_rng(0).normal(size=(12, 24, 20)).astype(np.float32)
    result = segment(vol, ["kidneys", "liver"], model=net, class_names=ORGANS,
                     roi_size=vol.shape)  # fmt: skip
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(vol)[None, None]), dim=1)[0].numpy()
    prob = np.asarray(result.probabilities)
    np.testing.assert_allclose(prob[0], ref[2] + ref[3], atol=1e-5)
    np.testing.assert_allclose(prob[1], ref[1], atol=1e-5)
    labels = np.asarray(result.labels)
    winner = np.argmax(prob, axis=0) + 1
    np.testing.assert_array_equal(labels, np.where(prob.max(axis=0) > 0.5, winner, 0))
    assert 0 < (labels > 0).mean() < 1


def test_unmatched_prompt_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="the prompt 'giraffe' matches none of the model's"):
        segment(organ_volume(), ["liver", "giraffe"], model=OracleNet().eval(),
                class_names=ORGANS, roi_size=(16, 16, 16), out=tmp_path / "o.zarr")  # fmt: skip
    assert not (tmp_path / "o.zarr").exists()


def test_class_names_for_a_prompted_backend_are_refused():
    with pytest.raises(ValueError, match=re.escape(
        "class_names= names the output channels of a model with fixed classes (a callable, a "
        "torch module or a MONAI bundle); the llmseg-tiny backend takes text prompts itself"
    )):  # fmt: skip
        segment(np.zeros((32, 32), np.float32), "liver", class_names=ORGANS)


def test_resume_needs_the_same_class_names(tmp_path):
    out = tmp_path / "o.zarr"
    kw = dict(model=OracleNet().eval(), roi_size=(16, 16, 16), out=out)
    segment(organ_volume(), ["liver"], class_names=ORGANS, **kw)
    with pytest.raises(ValueError, match="it was started with class_names="):
        segment(organ_volume(), ["liver"], class_names={1: "liver"}, resume=True, **kw)


def test_cli_class_names_flag(tmp_path, capsys):
    np.save(tmp_path / "v.npy", organ_volume())
    code = main(["segment", str(tmp_path / "v.npy"), "-p", "liver", "--class-names",
                 "1=liver", "-o", str(tmp_path / "o.zarr")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "the llmseg-tiny backend takes text prompts itself" in err
    code = main(["segment", str(tmp_path / "v.npy"), "-p", "liver", "--class-names", "liver",
                 "-o", str(tmp_path / "o.zarr")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "expected a JSON file or CHANNEL=NAME pairs" in err
    assert not (tmp_path / "o.zarr").exists()


def test_models_command_lists_what_one_model_knows(capsys):
    assert main(["models", "llmseg-tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("llmseg-tiny (llmseg-tiny) knows: bone, brain, nuclei")


def test_class_match_describes_itself():
    m = ClassMatch("renal", (2, 3), ("kidney_right", "kidney_left"), (0.79, 0.76), "meaning")
    assert m.describe() == "renal -> kidney_right (0.79), kidney_left (0.76) (by meaning)"
    assert m.to_dict() == {"channels": [2, 3], "classes": ["kidney_right", "kidney_left"],
                           "how": "meaning"}  # fmt: skip
