"""The headless half of the interactive loop: what a model knows, previews of a view, and
where the model is least sure."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_llmseg import get_model, segment
from napari_llmseg.backends.knowledge import THRESHOLD, nearest_concepts, prompt_warnings
from napari_llmseg.cli import main
from napari_llmseg.interactive import (
    View,
    entropy,
    image_stats,
    most_uncertain,
    preview,
    scan_uncertainty,
    view_region,
)
from napari_llmseg.io.source import ImageSource
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tiny():
    return get_model("llmseg-tiny", device="cpu")


@pytest.fixture(scope="module")
def nuclei():
    return tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[20:30]


def test_unseen_phrasings_of_known_concepts_pass_and_unknown_concepts_are_flagged(tiny):
    known = ["cell nuclei", "the nucleus of a cell", "bones", "open water", "brain tissue"]
    unknown = ["liver", "tumor", "car"]
    matches = nearest_concepts(known + unknown, *tiny.concept_phrasings())
    assert [m.known for m in matches] == [True] * len(known) + [False] * len(unknown)
    assert [m.concept for m in matches[:4]] == ["nuclei", "nuclei", "bone", "water"]
    assert all(m.similarity < THRESHOLD for m in matches[len(known) :])
    notes = prompt_warnings(tiny, ["nuclei", "liver", "tumor"])
    assert len(notes) == 2 and notes[0].startswith("'liver' is far from what llmseg-tiny knows")
    assert "it was trained to find nothing for it" in notes[0]  # one of its training negatives
    tumor = matches[len(known) + 1]
    assert f"the nearest is '{tumor.concept}', text similarity {tumor.similarity:.2f}" in notes[1]
    assert "Teach it the concept" in notes[1] and "--model clipseg or sam3" in notes[1]


def test_the_warning_reaches_results_and_the_command_line(nuclei, tmp_path, capsys):
    result = segment(nuclei[:2], ["nuclei", "liver"])
    assert len(result.warnings) == 1 and "'liver' is far from" in result.warnings[0]
    np.save(tmp_path / "n.npy", nuclei[:2])
    code = main(["segment", str(tmp_path / "n.npy"), "-p", "liver", "-o",
                 str(tmp_path / "o.tif"), "--quiet"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "napari-llmseg: warning: 'liver' is far from what llmseg-tiny knows" in err
    # open-vocabulary models and plain callables say nothing
    assert prompt_warnings(lambda x: x, ["liver"]) == []


def test_models_list_what_they_know(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "llmseg-tiny knows: bone, brain, nuclei, soft tissue, vegetation, water" in out


def test_preview_is_the_view_of_a_full_run(tiny, nuclei):
    source = ImageSource(nuclei)
    stats = image_stats(nuclei)
    view = View(4, (40, 200), (60, 250))
    shown = preview(source, ["nuclei"], view, model=tiny, stats=stats)
    assert shown.labels.shape == (160, 190) and shown.stride == 1
    assert shown.probabilities.shape == (1, 160, 190)
    full = segment(nuclei, "nuclei", model=tiny).labels[4, 40:200, 60:250]
    # windows at the view's edge see padding instead of the image beyond, and windows start
    # at the view's corner, so the blend differs a little
    assert (shown.labels == full).mean() > 0.98
    inner = (slice(32, -32), slice(32, -32))
    assert (shown.labels[inner] == full[inner]).mean() > 0.99


def test_a_large_view_is_read_strided(nuclei):
    big = np.tile(nuclei[0], (8, 8))  # 2048 x 2048
    region, stride = view_region(ImageSource(big), View(None, (0, 2048), (0, 2048)), max_edge=512)
    assert stride == 4 and region.shape == (512, 512, 1)
    np.testing.assert_array_equal(region[..., 0], big[::4, ::4])
    with pytest.raises(ValueError, match=r"needs a plane in \[0, 10\), got 12"):
        view_region(ImageSource(nuclei), View(12, (0, 10), (0, 10)))


def test_most_uncertain_finds_the_planted_region():
    p = np.zeros((1, 3, 512, 512), np.float32)
    p[0, :, 100:200, 100:200] = 1.0  # certain
    p[0, 2, 300:420, 260:380] = 0.5  # unsure, on plane 2
    found = most_uncertain(p, tile=128)
    assert found.plane == 2
    assert found.rows == (256, 384) and found.cols == (256, 384)
    assert found.entropy == pytest.approx(entropy(p[:, 2, 256:384, 256:384]).mean(), rel=1e-5)
    assert entropy(np.array([[0.5, 0.0]]))[0] == pytest.approx(1.0)


def test_scan_uncertainty_points_at_an_ambiguous_plane(tiny, nuclei):
    vol = nuclei.astype(np.float32).copy()
    vol[7] = vol[7] * 0.35 + 0.65 * vol[7].mean()  # washed-out plane: the model hesitates
    found = scan_uncertainty(ImageSource(vol), ["nuclei"], model=tiny,
                             stats=image_stats(nuclei))  # fmt: skip
    assert 0 <= found.plane < len(vol) and 0 < found.entropy <= 1
    per_plane = segment(vol, "nuclei", model=tiny, probabilities="float32",
                        stats=image_stats(nuclei)).probabilities  # fmt: skip
    means = [entropy(per_plane[:, z]).mean() for z in range(len(vol))]
    assert found.plane == int(np.argmax(means))
