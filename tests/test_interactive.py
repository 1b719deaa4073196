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
    slab_metadata,
    view_region,
    view_slab,
    window_depth,
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


def _depth_mean(batch):
    """A 3D model: each voxel's logit is its value plus 40 x the mean of its column of the
    window along Z, so a plane's labels depend on the planes around it."""
    return (batch - 0.5) + 40 * (batch.mean(dim=2, keepdim=True) - 0.5)


def test_a_3d_model_previews_a_plane_with_the_planes_around_it():
    vol = np.random.default_rng(0).random((8, 48, 40)).astype(np.float32)
    roi = (8, 32, 32)  # one window deep: the slab is the whole volume, as in a full run
    stats = image_stats(vol)
    view = View(3, (0, 48), (0, 40))
    shown = preview(ImageSource(vol), ["x"], view, model=_depth_mean, stats=stats, roi_size=roi)
    full = segment(vol, "x", model=_depth_mean, roi_size=roi, probabilities="float32")
    assert shown.labels.shape == (48, 40) and shown.stride == 1 and shown.view.plane == 3
    np.testing.assert_array_equal(shown.labels, full.labels[3])
    np.testing.assert_allclose(shown.probabilities, np.asarray(full.probabilities)[:, 3])
    # what a model fed that plane alone (a window one plane deep) gives: not the same
    alone = preview(ImageSource(vol), ["x"], view, model=_depth_mean, stats=stats,
                    roi_size=(1, 32, 32))  # fmt: skip
    assert (alone.labels != full.labels[3]).mean() > 0.2
    # None (MONAI's "the whole axis") is the volume's depth
    assert window_depth(_depth_mean, vol.shape, (None, 32, 32)) == 8
    assert window_depth(_depth_mean, vol.shape, (32, 32)) is None  # 2D windows
    assert window_depth(_depth_mean, vol.shape[1:], roi) is None  # a 2D image


def test_a_3d_model_scans_for_uncertainty_over_evenly_strided_neighbouring_planes():
    """The scan feeds a 3D model every k-th plane as one volume (neighbours at k times the
    spacing), not a stack of planes spread unevenly; what it finds is that run's most
    uncertain plane and region, in full-resolution coordinates."""
    rng = np.random.default_rng(3)
    vol = rng.random((40, 64, 64)).astype(np.float32)
    vol[20:24] = 0.5 + 0.02 * (vol[20:24] - 0.5)  # planes where every logit is near 0
    roi = (8, 32, 32)
    stats = image_stats(vol)
    found = scan_uncertainty(ImageSource(vol), ["x"], model=_depth_mean, stats=stats,
                             max_edge=32, max_planes=10, roi_size=roi)  # fmt: skip
    coarse = segment(vol[::4, ::2, ::2], "x", model=_depth_mean, roi_size=roi, stats=stats,
                     probabilities="float32")  # fmt: skip
    expected = most_uncertain(np.asarray(coarse.probabilities), stride=2)
    assert found.plane == 4 * expected.plane and found.plane in (20,)
    assert (found.rows, found.cols) == (expected.rows, expected.cols)
    assert found.entropy == pytest.approx(expected.entropy, rel=1e-6)


def test_a_slab_is_centred_on_the_plane_and_shifted_at_the_ends():
    vol = np.arange(10 * 6 * 6, dtype=np.float32).reshape(10, 6, 6)
    slab, stride, first = view_slab(ImageSource(vol), View(5, (0, 6), (0, 6)), 4)
    assert first == 3 and stride == 1 and slab.shape == (4, 6, 6, 1)
    np.testing.assert_array_equal(slab[..., 0], vol[3:7])
    assert view_slab(ImageSource(vol), View(9, (0, 6), (0, 6)), 4)[2] == 6  # the last 4
    assert view_slab(ImageSource(vol), View(0, (0, 6), (0, 6)), 4)[2] == 0
    assert view_slab(ImageSource(vol), View(2, (0, 6), (0, 6)), 30)[0].shape[0] == 10
    slab, stride, _ = view_slab(ImageSource(vol), View(2, (1, 6), (0, 6)), 3, max_edge=3)
    assert stride == 2 and slab.shape == (3, 3, 3, 1)
    np.testing.assert_array_equal(slab[..., 0], vol[1:4, 1:6:2, 0:6:2])
    with pytest.raises(ValueError, match=r"a slab is read from a volume .* got shape \(6, 6\)"):
        view_slab(ImageSource(vol[0]), View(None, (0, 6), (0, 6)), 4)
    with pytest.raises(ValueError, match="a depth of at least 1 plane, got 0"):
        view_slab(ImageSource(vol), View(2, (0, 6), (0, 6)), 0)


def test_slab_metadata_scales_the_strided_axes_and_moves_the_affine():
    affine = np.array([[-0.75, 0, 0, 10], [0, 0.75, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
    meta = {"scale": [2.0, 0.75, 0.75], "units": ["mm"] * 3, "affine": affine.tolist(),
            "spacing": [2.0, 0.75, 0.75], "modality": "CT"}  # fmt: skip
    out = slab_metadata(meta, 2, (4, 10, 20))
    assert out["scale"] == [2.0, 1.5, 1.5] and out["units"] == ["mm"] * 3
    assert out["modality"] == "CT" and "spacing" not in out  # the whole volume's, dropped
    a = np.asarray(out["affine"])
    # slab voxel (i, j, k) = volume voxel (20 + 2i, 10 + 2j, 4 + k): same world point
    for ijk in [(0, 0, 0), (3, 1, 2)]:
        volume = (20 + 2 * ijk[0], 10 + 2 * ijk[1], 4 + ijk[2], 1)
        np.testing.assert_allclose(a @ (*ijk, 1), affine @ volume)
    # strided along Z too (the uncertainty scan of a 3D model): every 3rd plane
    out = slab_metadata(meta, 2, (0, 0, 0), z_stride=3)
    assert out["scale"] == [6.0, 1.5, 1.5]
    np.testing.assert_allclose(np.asarray(out["affine"]) @ (1, 2, 5, 1), affine @ (2, 4, 15, 1))
    assert slab_metadata(None, 2, (0, 0, 0)) == {}
    with pytest.raises(ValueError, match=r"affine must be 4 x 4, got shape \(3, 3\)"):
        slab_metadata({"affine": np.eye(3).tolist()}, 1, (0, 0, 0))
    with pytest.raises(ValueError, match=r"scale must have 3 entries \(Z, Y, X\), got \[1.0\]"):
        slab_metadata({"scale": [1.0]}, 1, (0, 0, 0))


@pytest.fixture(scope="module")
def bundle_folder(tmp_path_factory):
    from tests.backends.test_monai_bundle import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.mark.parametrize("max_edge", [None, 20])
def test_a_bundle_preview_is_that_plane_of_a_full_run(bundle_folder, max_edge):
    """A MONAI bundle (3D windows of 32^3 at 1.5 x 1.5 x 2 mm, RAS) previews a plane of a
    volume at 2 x 0.75 x 0.75 mm whose X axis runs right to left: it receives the voxel size
    (no warning; windows of 32 x 64 x 64 input voxels, resampled) and the orientation, and
    the preview is that plane of a full run. Strided (max_edge=20), it equals a full run on
    the strided volume with twice the Y/X spacing."""
    import warnings

    model = get_model(bundle_folder)
    vol = np.random.default_rng(0).normal(40, 80, size=(32, 40, 36)).astype(np.float32)
    affine = np.diag([-0.75, 0.75, 2.0, 1.0])
    meta = {"scale": [2.0, 0.75, 0.75], "units": ["mm"] * 3, "affine": affine.tolist()}
    prompts = ["liver", "kidneys"]
    view = View(10, (0, 40), (0, 36))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "the input has no voxel size in mm" would raise
        shown = preview(ImageSource(vol), prompts, view, model=model, stats=image_stats(vol),
                        metadata=meta, max_edge=max_edge)  # fmt: skip
        if max_edge is None:
            full = segment(ImageSource(vol, metadata=meta), prompts, model=str(bundle_folder),
                           probabilities="float32")  # fmt: skip
            assert full.metadata["roi_size"] == [32, 64, 64]
        else:
            strided = {**meta, "scale": [2.0, 1.5, 1.5],
                       "affine": (affine @ np.diag([2.0, 2.0, 1.0, 1.0])).tolist()}  # fmt: skip
            full = segment(ImageSource(vol[:, ::2, ::2], metadata=strided), prompts,
                           model=str(bundle_folder), probabilities="float32")  # fmt: skip
            assert full.metadata["roi_size"] == [32, 32, 32]
    stride = 1 if max_edge is None else 2
    assert shown.stride == stride and shown.labels.shape == (40 // stride, 36 // stride)
    np.testing.assert_array_equal(shown.labels, full.labels[10])
    np.testing.assert_allclose(shown.probabilities, np.asarray(full.probabilities)[:, 10],
                               atol=1e-6)  # fmt: skip
    assert set(np.unique(shown.labels)) <= {0, 1, 2}
    # without the voxel size the bundle says so, as a full run does
    with pytest.warns(UserWarning, match="the input has no voxel size in mm"):
        preview(ImageSource(vol), prompts, view, model=model, stats=image_stats(vol))
