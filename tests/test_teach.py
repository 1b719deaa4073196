"""Teach: a concept learned in seconds from corrections painted on a few planes, then run
everywhere; saved as a model folder the CLI, the API and the widget load."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from napari_llmseg import segment, teach
from napari_llmseg.backends.registry import get_model
from napari_llmseg.backends.taught import FeatureConfig, filter_bank
from napari_llmseg.cli import main
from napari_llmseg.training.folders import MARKER
from napari_llmseg.training.teach import (
    PlaneCorrections,
    iter_teach,
    labels_to_corrections,
    points_to_corrections,
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def cerebellum():
    from napari_llmseg.training.data import load

    t1, masks = load("t1-mri-cerebellum")
    return t1, masks["cerebellum"]


PAINTED = [24, 32, 40, 48, 56]


@pytest.fixture(scope="module")
def taught_cerebellum(cerebellum, tmp_path_factory):
    t1, truth = cerebellum
    out = tmp_path_factory.mktemp("teach") / "cerebellum-model"
    steps = []
    model = teach(t1, labels_to_corrections(truth, PAINTED), "cerebellum", out=out,
                  progress=steps.append)  # fmt: skip
    return model, out, steps


def test_teaches_the_cerebellum_from_five_planes(cerebellum, taught_cerebellum):
    """llmseg-tiny does not know "cerebellum" (it labels much of the brain); five painted
    planes teach it, better than fine-tuning the network does (0.73 to 0.79)."""
    t1, truth = cerebellum
    model, _out, steps = taught_cerebellum
    others = [z for z in range(18, 63) if z not in PAINTED]  # planes with cerebellum in them
    before = segment(t1[others], "cerebellum").labels
    assert dice(before, truth[others]) < 0.5
    after = segment(t1, "cerebellum", model=model)
    assert dice(after.labels[others], truth[others]) >= 0.83  # measured 0.86
    # what it learned from, as the user painted it
    record = model.record
    assert record["planes"] == PAINTED
    assert record["concept_pixels"] == int(truth[PAINTED].sum())
    assert record["other_pixels"] == int((~truth[PAINTED].astype(bool)).sum())
    assert [s.stage for s in steps[:5]] == ["features"] * 5 and steps[-1].stage == "training"
    # other prompts are still answered by llmseg-tiny, from the same pass (over the taught
    # model's windows: a plane smaller than 256 px is not padded up to it)
    both = segment(t1[40:42], ["cerebellum", "brain"], model=model, probabilities="float32")
    alone = segment(t1[40:42], "brain", probabilities="float32", roi_size=t1.shape[1:])
    assert both.metadata["roi_size"] == list(t1.shape[1:]) == [217, 181]
    np.testing.assert_allclose(both.probabilities[1], alone.probabilities[0], atol=1e-5)
    assert model.concepts()[-1] == "cerebellum" and "brain" in model.concepts()
    assert not any("far from" in w for w in after.warnings)


def test_the_saved_folder_loads_everywhere_and_gives_the_same_result(
    cerebellum, taught_cerebellum, capsys, tmp_path
):
    t1, _truth = cerebellum
    model, out, _ = taught_cerebellum
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["config.json", "model.safetensors", MARKER])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llmseg-taught" and config["prompt"] == "cerebellum"
    assert config["taught"]["planes"] == PAINTED and config["base"]["folder"] == "embedded"
    loaded = get_model(out)
    assert loaded.prompt == "cerebellum" and loaded.record == json.loads(json.dumps(model.record))
    a = segment(t1[30:34], "cerebellum", model=model, probabilities="float32")
    b = segment(t1[30:34], "cerebellum", model=out, probabilities="float32")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    # the command line runs it by folder
    np.save(tmp_path / "t1.npy", t1[30:34])
    assert main(["segment", str(tmp_path / "t1.npy"), "-p", "cerebellum", "--model", str(out),
                 "-o", str(tmp_path / "o.tif"), "--quiet"]) == 0  # fmt: skip
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), a.labels)
    assert "cerebellum" in capsys.readouterr().out


def test_strokes_on_a_few_planes_and_a_second_round():
    """Strokes on two planes of the nuclei volume teach a concept llmseg-tiny does not know
    ("bright blobs": the brightest tenth, smoothed); a second round adds a plane and reuses
    the features of the others."""
    import tifffile
    from scipy import ndimage as ndi

    from tests.conftest import ROOT

    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[20:32]
    smooth = ndi.gaussian_filter(vol.astype(np.float32), (0, 1.5, 1.5))
    truth = smooth > np.percentile(smooth, 90)
    corrections = np.zeros(vol.shape, np.uint8)
    for plane in (2, 8):
        corrections[plane][ndi.binary_erosion(truth[plane], iterations=2)] = 1
        ring = ndi.binary_dilation(truth[plane], iterations=6)
        corrections[plane][ring & ~ndi.binary_dilation(truth[plane], iterations=3)] = 2
    steps = []
    first = teach(vol, corrections, "bright blobs", progress=steps.append)
    assert sum(s.stage == "features" for s in steps) == 2
    result = segment(vol, "bright blobs", model=first)
    others = [z for z in range(len(vol)) if z not in (2, 8)]
    assert dice(result.labels[others], truth[others]) > 0.8
    # round two: one more plane; only that plane's features are computed
    corrections[5][truth[5]] = 1
    steps.clear()
    second = drain_with(iter_teach(vol, corrections, "bright blobs", previous=first,
                                   stats=first.teacher.stats), steps)  # fmt: skip
    assert [s.done for s in steps if s.stage == "features"] == [0]
    assert second.record["rounds"] == 2 and second.record["planes"] == [2, 5, 8]
    assert second.record["steps"] == second.teacher.options.refit_steps


def test_a_run_computes_at_the_painted_pixels_what_training_fitted():
    """The classifier is trained on feature rows of the painted pixels; a run of the taught
    model must give those pixels exactly the probabilities training's function gives them. Two
    ways this broke: a plane narrower than the window was seen unpadded in training but padded
    by the engine (MONAI's way), and coarse levels were clipped before upsampling at run time
    but after it in training (CT strokes of benchmarks/teach.py: 0.78 Dice, 0.87 once equal)."""
    import tifffile
    import torch

    from napari_llmseg.backends.taught import DEEP_LEVELS, Z_CLIP, Classifier
    from tests.conftest import ROOT

    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")[20:26, 60:160, :90]  # < 256 px
    truth = vol > np.percentile(vol, 85)
    corrections = np.zeros(vol.shape, np.uint8)
    corrections[[1, 4]] = np.where(truth[[1, 4]], 1, 2)
    corrections[1, :, :30] = 0  # a part left unknown
    for roi in (None, 128):  # the default: the whole 100 x 90 plane; 128: padded to 128 x 128
        model = teach(vol, corrections, "bright", roi_size=roi)
        teacher = model.teacher
        run = segment(vol, "bright", model=model, probabilities="float32", roi_size=roi)
        assert run.metadata["roi_size"] == ([100, 90] if roi is None else [128, 128])
        probabilities = np.asarray(run.probabilities)[0]
        clf = model.classifier
        for z in (1, 4):
            painted = corrections[z] > 0
            fitted = torch.sigmoid(clf.logits_rows(teacher._planes[z].rows)).numpy()
            np.testing.assert_allclose(probabilities[z][painted], fitted, atol=2e-5)
    # every channel clipped at Z_CLIP; a classifier stored with coarse channels unclipped runs
    # their first layer at their own resolution, and still exactly the function of its rows
    assert (clf.arrays["clip"] == Z_CLIP).all()
    coarse = np.concatenate(
        [np.full(n, DEEP_LEVELS.get(g, 1) > 1) for g, n in teacher.extractor.layout()]
    )
    assert coarse.sum() > 200
    free = Classifier({**clf.arrays, "clip": np.where(coarse, np.inf, Z_CLIP)})
    old = Classifier({k: v for k, v in clf.arrays.items() if k != "clip"})  # before "clip"
    np.testing.assert_array_equal(old.arrays["clip"], clf.arrays["clip"])
    window = np.moveaxis(vol[1][..., None], -1, 0)[None].astype(np.float32)
    feats = teacher.extractor(teacher.base.preprocess(window, teacher.stats))
    everywhere = torch.ones((1, *vol.shape[1:]), dtype=torch.bool)
    for c in (clf, free):
        by_rows = c.logits_rows(feats.rows(everywhere)).reshape(vol.shape[1:])
        np.testing.assert_allclose(c.logits(feats)[0].numpy(), by_rows.numpy(), atol=1e-4)
    assert not np.allclose(free.logits(feats).numpy(), clf.logits(feats).numpy(), atol=1e-2)


def drain_with(gen, steps):
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return stop.value


def _painted(shape=(2, 64, 64)):
    c = np.zeros(shape, np.uint8)
    c[0, 10:20, 10:20] = 1
    c[0, 40:50, 40:50] = 2
    return c


@pytest.mark.parametrize(
    ("corrections", "message"),
    [
        (np.zeros((2, 64, 64), np.uint8), "corrections are empty"),
        (_painted() * (_painted() == 1), "no pixel painted 2 (not the concept)"),
        (np.where(_painted() == 2, 2, 0).astype(np.uint8), "no pixel painted 1 (the concept)"),
        (_painted() * 3, "corrections hold [3, 6] on plane 0; expected 0 (unknown), 1"),
        (_painted((2, 64, 63)), "corrections have shape (2, 64, 63), the image's spatial shape"),
        (_painted().astype(np.float32), "must be integer labels (0, 1, 2), got float32"),
    ],
)
def test_bad_corrections_are_named(rng, corrections, message):
    image = rng.random((2, 64, 64)).astype(np.float32)
    with pytest.raises(ValueError) as err:
        teach(image, corrections, "thing")
    assert message in str(err.value)


def test_bad_arguments_are_named(rng, tmp_path):
    image = rng.random((2, 64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="seconds must be positive, got -1"):
        teach(image, _painted(), "thing", seconds=-1)
    with pytest.raises(ValueError, match="teach builds on llmseg-tiny"):
        teach(image, _painted(), "thing", base="clipseg")
    with pytest.raises(ValueError, match="needs the folder a taught model was saved in"):
        get_model("llmseg-taught")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a model folder written by napari-llmseg"):
        teach(image, _painted(), "thing", out=tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cancel_returns_none_and_saves_nothing(rng, tmp_path):
    image = rng.random((2, 64, 64)).astype(np.float32)
    cancel = threading.Event()
    cancel.set()
    assert teach(image, _painted(), "thing", out=tmp_path / "m", cancel=cancel) is None
    assert not (tmp_path / "m").exists()


def test_a_time_budget_stops_training_early(rng):
    image = rng.random((2, 64, 64)).astype(np.float32)
    model = teach(image, _painted(), "thing", seconds=1e-6)
    assert model.record["steps"] == 50  # training checks the clock every 50 steps


def test_overwrite_replaces_our_own_folder_only(rng, tmp_path):
    image = rng.random((2, 64, 64)).astype(np.float32)
    teach(image, _painted(), "thing", out=tmp_path / "m")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        teach(image, _painted(), "thing", out=tmp_path / "m")
    teach(image, _painted(), "other thing", out=tmp_path / "m", overwrite=True)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["prompt"] == "other thing"


def test_cli_train_teaches_from_labels_or_corrections(rng, tmp_path, capsys):
    image = rng.normal(100, 5, (3, 64, 64)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 20:40, 20:40] = 1
    image[labels > 0] += 60
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    np.save(tmp_path / "cor.npy", _painted((3, 64, 64)))
    assert main(["train", "--image", str(tmp_path / "img.npy"), "--labels",
                 str(tmp_path / "lab.npy"), "--slices", "0:1", "--prompt", "square", "--out",
                 str(tmp_path / "m"), "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "m")
    assert out[1].startswith("square: taught from 400 concept and 3,696 other painted pixels on")
    result = segment(image, "square", model=tmp_path / "m")
    assert dice(result.labels[1:], labels[1:]) > 0.85  # measured 0.91
    assert main(["train", "--image", str(tmp_path / "img.npy"), "--corrections",
                 str(tmp_path / "cor.npy"), "--prompt", "thing", "--out",
                 str(tmp_path / "m2"), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    code = main(["train", "--image", str(tmp_path / "img.npy"), "--labels",
                 str(tmp_path / "lab.npy"), "--prompt", "x", "--out", str(tmp_path / "m3"),
                 "--epochs", "3"])  # fmt: skip
    assert code == 2
    assert "--epochs apply to --method finetune, not teach" in capsys.readouterr().err


def test_filter_bank_matches_scipy(rng):
    """The window-local filter bank is ilastik's (scipy's filters, reflect mode)."""
    from scipy import ndimage as ndi

    plane = rng.random((40, 50)).astype(np.float32)
    bank = filter_bank(__import__("torch").from_numpy(plane)[None, None], (1.0, 2.0))[0].numpy()
    assert bank.shape == (11, 40, 50)
    np.testing.assert_allclose(bank[0], plane)
    for i, s in enumerate((1.0, 2.0)):
        g = bank[1 + 5 * i : 6 + 5 * i]
        np.testing.assert_allclose(g[0], ndi.gaussian_filter(plane, s, mode="reflect"), atol=1e-5)
        np.testing.assert_allclose(
            g[1], ndi.gaussian_gradient_magnitude(plane, s, mode="reflect"), atol=1e-4
        )
        # the second-derivative kernel is made mean-free (no response to a constant): a
        # 1e-4 offset from scipy's
        np.testing.assert_allclose(
            g[2], ndi.gaussian_laplace(plane, s, mode="reflect"), atol=5e-4)  # fmt: skip


def test_feature_config_refuses_unknown_levels():
    with pytest.raises(ValueError, match=r"unknown feature levels \['dec9'\]"):
        FeatureConfig(levels=("dec9",))


def test_points_become_disks_on_their_own_plane_over_the_painted_corrections():
    painted = np.zeros((3, 16, 16), np.uint8)
    painted[1, 0, 0] = 2
    points = [[1, 8, 8], [1.4, 0.2, 15.3], [2, 8, 8]]
    out = points_to_corrections(points, ["concept", 2, np.int64(1)], painted.shape,
                                radius=2, corrections=painted)  # fmt: skip
    assert painted.sum() == 2  # the user's layer is not touched
    assert out.dtype == np.uint8 and out.shape == (3, 16, 16)
    yy, xx = np.mgrid[:16, :16]
    disk = (yy - 8) ** 2 + (xx - 8) ** 2 <= 4
    assert np.array_equal(out[1][disk], np.ones(13)) and np.array_equal(out[2] == 1, disk)
    corner = (yy**2 + (xx - 15) ** 2 <= 4) & ~disk
    assert np.all(out[1][corner] == 2)  # clipped at the border, over the painted pixel
    assert out[0].sum() == 0 and int((out[1] == 2).sum()) == int(corner.sum()) + 1
    assert int((out[1] == 1).sum()) == 13
    # a 2D image takes (y, x) points
    flat = points_to_corrections(np.array([[3.0, 3.0]]), [1], (8, 8), radius=1)
    assert int(flat.sum()) == 5 and flat[3, 3] == 1
    assert np.array_equal(points_to_corrections([], [], (4, 4)), np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize(
    ("points", "kinds", "message"),
    [
        ([[0, 9, 0]], [1], "point (0, 9, 0) is outside the image of shape (2, 8, 8)"),
        ([[0, 0]], [1], "points must be (N, 3) coordinates for an image of shape (2, 8, 8), got"),
        ([[0, 0, 0]], ["maybe"], "point kind 'maybe' is not 1 / 'concept' or 2 / 'not concept'"),
        ([[0, 0, 0]], [1, 2], "got 1 points but 2 kinds"),
    ],
)
def test_bad_points_are_named(points, kinds, message):
    with pytest.raises(ValueError) as err:
        points_to_corrections(points, kinds, (2, 8, 8))
    assert message in str(err.value)


def test_corrections_held_plane_by_plane_teach_the_same_model(rng):
    """PlaneCorrections (what the widget gives for a large volume: only painted planes held)
    teach exactly what the same corrections as one array teach, reading only those planes."""
    image = rng.random((6, 48, 48)).astype(np.float32)
    dense = np.zeros(image.shape, np.uint8)
    dense[1, 10:20, 10:20], dense[1, 30:40, 30:40] = 1, 2
    dense[4, 5:15, 30:40], dense[4, 0:5, :] = 1, 2
    sparse = PlaneCorrections(image.shape, {1: dense[1], 4: dense[4], 2: np.zeros((48, 48))})
    assert sparse.painted_planes() == [1, 4] and sparse[0].sum() == 0 and sparse[-2] is sparse[4]
    a, b = teach(image, dense, "thing"), teach(image, sparse, "thing")
    assert a.record["planes"] == b.record["planes"] == [1, 4]
    assert a.record["concept_pixels"] == b.record["concept_pixels"] == 200
    for name, value in a.classifier.arrays.items():
        np.testing.assert_array_equal(value, b.classifier.arrays[name])
    # clicked points drawn over them: the same as over the dense array, on a copy
    drawn = points_to_corrections([[3, 24, 24]], [2], image.shape, corrections=sparse)
    assert isinstance(drawn, PlaneCorrections) and sparse.painted_planes() == [1, 4]
    assert drawn.painted_planes() == [1, 3, 4]
    expected = points_to_corrections([[3, 24, 24]], [2], image.shape, corrections=dense)
    for z in range(6):
        np.testing.assert_array_equal(drawn[z], expected[z])
    with pytest.raises(ValueError, match=r"plane 9 of shape \(48, 48\) does not fit"):
        PlaneCorrections(image.shape, {9: dense[1]})
    with pytest.raises(ValueError, match=r"for volumes \(Z, Y, X\), got shape \(48, 48\)"):
        PlaneCorrections((48, 48))
    with pytest.raises(TypeError, match="read a plane at a time, got index"):
        sparse[1:3]
