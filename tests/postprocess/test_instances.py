"""Instances across windows and chunks: exact object counts, one id per object."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr
from skimage.draw import disk, ellipsoid
from skimage.measure import label

from napari_llmseg import segment
from napari_llmseg.postprocess.instances import label_instances, processing_block
from tests.conftest import threshold_model, write_zarr

CHUNK = 64
ROI = 48  # windows and chunks do not line up: objects cross both kinds of border


def disks_on_chunk_corners(shape=(256, 256), radius=13):
    """Disks centred on chunk corners (four chunks meet there), on chunk edges and inside."""
    img = np.zeros(shape, np.float32)
    centres = [
        (CHUNK * i, CHUNK * j)
        for i in range(1, shape[0] // CHUNK)
        for j in range(1, shape[1] // CHUNK)
    ]
    centres += [(CHUNK + 32, CHUNK * 2), (160, 96), (20, 20), (230, 240)]
    truth = np.zeros(shape, np.int32)
    for k, (y, x) in enumerate(centres, 1):
        rr, cc = disk((y, x), radius, shape=shape)
        img[rr, cc] = 1.0
        truth[rr, cc] = k
    return img, truth


def assert_matches_truth(instances, truth):
    ids = np.unique(instances)[1:]
    assert len(ids) == truth.max()  # every object found once, none split or merged
    for i in ids:
        m = instances == i
        t = np.bincount(truth[m]).argmax()
        assert t > 0
        tm = truth == t
        iou = (m & tm).sum() / (m | tm).sum()
        assert iou >= 0.95, (i, t, iou)


def test_2d_objects_across_window_and_chunk_corners():
    img, truth = disks_on_chunk_corners()
    res = segment(img, "bright", model=threshold_model, roi_size=ROI, chunks=CHUNK, instances=True)
    assert_matches_truth(res.instances, truth)
    assert res.instances.dtype == np.uint32
    assert set(res.instance_classes.values()) == {"bright"}
    assert len(res.instance_classes) == truth.max()
    # identical to labelling the whole semantic result at once
    np.testing.assert_array_equal(res.instances, label(res.labels, connectivity=1))


def test_3d_objects_span_planes_and_chunks(tmp_path):
    vol = np.zeros((24, 160, 160), np.float32)
    truth = np.zeros(vol.shape, np.int32)
    ball = ellipsoid(6, 14, 14)  # 13 planes deep
    for k, (z, y, x) in enumerate([(8, 50, 50), (10, 64, 128), (11, 128, 64), (15, 128, 128)], 1):
        zz, yy, xx = np.nonzero(ball)
        zz, yy, xx = zz + z - 7, yy + y - 15, xx + x - 15
        ok = (zz >= 0) & (zz < 24)
        vol[zz[ok], yy[ok], xx[ok]] = 1
        truth[zz[ok], yy[ok], xx[ok]] = k
    src = write_zarr(tmp_path / "v.zarr", vol, (4, 64, 64))
    res = segment(src, "bright", model=threshold_model, roi_size=ROI, chunks=CHUNK,
                  instances=True, out=tmp_path / "o.zarr")  # fmt: skip
    inst = np.asarray(res.instances[...])
    assert_matches_truth(inst, truth)
    # a 2D model ran plane by plane, yet every ball is one 3D object
    for i in np.unique(inst)[1:]:
        assert len(np.unique(np.nonzero(inst == i)[0])) >= 12
    store = zarr.open_group(tmp_path / "o.zarr", mode="r")
    ids = store["labels/instances/0"]
    assert ids.dtype == np.uint32 and ids.chunks == (1, 64, 64)
    attrs = store.attrs["napari_llmseg"]
    assert attrs["objects"] == {"count": 4, "removed": 0}
    assert attrs["instance_classes"] == {str(i): "bright" for i in range(1, 5)}
    assert "_instances_scratch" not in store and "_instances_seeds" not in store


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [((100, 130), (32, 40)), ((6, 50, 60), (1, 16, 16)), ((9, 40, 40), (4, 13, 7))],
)
def test_chunked_labelling_equals_whole_array(rng, shape, chunks):
    sem = ((rng.random(shape) > 0.6).astype(np.uint8) + (rng.random(shape) > 0.8)).astype(np.uint8)
    inst, scratch = np.zeros(shape, np.uint32), np.zeros(shape, np.uint32)
    out = np.zeros(shape, np.uint8)
    gen = label_instances(lambda r: sem[r], shape, chunks, scratch=scratch, instances=inst,
                          labels_out=out, min_size=3)  # fmt: skip
    result = _drain(gen)
    ref = label(sem, connectivity=1)
    sizes = np.bincount(ref.ravel())
    keep = sizes >= 3
    keep[0] = False
    cleaned = np.where(keep[ref], sem, 0)
    np.testing.assert_array_equal(inst, label(cleaned, connectivity=1))
    np.testing.assert_array_equal(out, cleaned)
    assert result.n_objects == inst.max() and result.removed == int((~keep[1:]).sum())


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_split_separates_touching_objects_across_chunks():
    img = np.zeros((120, 200), np.float32)
    truth = np.zeros(img.shape, np.int32)
    for k, x in enumerate((60, 94, 128), 1):  # three overlapping disks in a row, across chunks
        rr, cc = disk((64, x), 20, shape=img.shape)
        img[rr, cc] = 1
        truth[rr, cc] = np.where(truth[rr, cc] == 0, k, truth[rr, cc])
    whole = segment(img, "b", model=threshold_model, roi_size=ROI, chunks=CHUNK, instances=True)
    assert whole.instances.max() == 1  # one connected region without splitting
    res = segment(
        img, "b", model=threshold_model, roi_size=ROI, chunks=CHUNK, instances=True, split=True
    )
    assert res.instances.max() == 3
    for x in (60, 94, 128):
        assert res.instances[64, x] != 0
    assert len({res.instances[64, x] for x in (60, 94, 128)}) == 3


def test_min_size_fill_holes_and_smoothing(tmp_path):
    img = np.zeros((128, 128), np.float32)
    rr, cc = disk((40, 40), 20)
    img[rr, cc] = 1
    rr, cc = disk((40, 40), 6)
    img[rr, cc] = 0  # a hole
    img[100:103, 100:103] = 1  # a 9-pixel speck
    img[60, 90:120] = 1  # a 1-pixel-thin line (removed by smoothing)
    plain = segment(img, "b", model=threshold_model, roi_size=ROI, chunks=CHUNK, instances=True)
    assert plain.instances.max() == 3 and plain.labels[40, 40] == 0
    res = segment(img, "b", model=threshold_model, roi_size=ROI, chunks=CHUNK, instances=True,
                  min_size=10, fill_holes=True, smooth=1)  # fmt: skip
    assert res.instances.max() == 1
    assert res.labels[40, 40] == 1 and res.instances[40, 40] == 1  # hole filled
    assert res.labels[101, 101] == 0 and res.labels[60, 100] == 0
    assert res.metadata["objects"] == {"count": 1, "removed": 1}


def test_min_size_in_physical_units(tmp_path):
    root = zarr.open_group(tmp_path / "ome.zarr", mode="w", zarr_format=3)
    img = np.zeros((96, 96), np.float32)
    img[10:20, 10:20] = 1  # 100 px = 25 um^2 at 0.5 um pixels
    img[50:56, 50:56] = 1  # 36 px = 9 um^2
    root.create_array("0", data=img, chunks=(48, 48))
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.5, 0.5]}]}],
    }]}  # fmt: skip
    res = segment(tmp_path / "ome.zarr", "b", model=threshold_model, roi_size=32, instances=True,
                  min_size="10 um^2")  # fmt: skip
    assert res.instances.max() == 1 and res.instances[15, 15] == 1
    with pytest.raises(ValueError, match="has no physical scale; give it in pixels"):
        segment(img, "b", model=threshold_model, roi_size=32, instances=True, min_size="10 um^2")
    with pytest.raises(ValueError, match="is a 3D size but the image is 2D"):
        segment(tmp_path / "ome.zarr", "b", model=threshold_model, roi_size=32, min_size="1 um^3")
    with pytest.raises(ValueError, match="min_size 'big' is not a size"):
        segment(img, "b", model=threshold_model, roi_size=32, min_size="big")


def test_instances_resume_after_cancel_in_labelling(tmp_path):
    img, _ = disks_on_chunk_corners()
    src = write_zarr(tmp_path / "in.zarr", img, (64, 64))
    kw = dict(model=threshold_model, roi_size=ROI, chunks=CHUNK, instances=True)
    full = segment(src, "b", out=tmp_path / "full.zarr", **kw)
    cancel = threading.Event()
    from napari_llmseg.api import iter_segment

    gen = iter_segment(src, "b", out=tmp_path / "part.zarr", cancel=cancel, **kw)
    for step in gen:
        if step.stage.startswith("instances"):
            cancel.set()
    part = zarr.open_group(tmp_path / "part.zarr", mode="r")
    assert part.attrs["napari_llmseg"]["status"] == "cancelled"
    again = segment(src, "b", out=tmp_path / "part.zarr", resume=True, **kw)
    assert again.complete and again.info.windows == 0
    np.testing.assert_array_equal(
        np.asarray(again.instances[...]), np.asarray(full.instances[...])
    )


def test_processing_block_is_made_of_whole_chunks():
    assert processing_block((60, 256, 256), (1, 256, 256)) == (60, 256, 256)
    b = processing_block((32, 4096, 4096), (1, 256, 256))
    assert all(x % c == 0 for x, c in zip(b, (1, 256, 256))) and np.prod(b) <= 1 << 22


class FakeInstanceBackend:
    """An instance model: every bright connected region of a window is one object.

    Objects cut by a window's border come out partial in that window and whole in a
    neighbouring one, exactly the situation the cross-window merger must resolve.
    """

    name = "fake-instances"
    spatial_dims = 2
    default_roi = ROI
    gives_instances = True
    batch_limit = None

    def encode_prompts(self, prompts):
        return list(prompts)

    def check_channels(self, n):
        pass

    def pad_value(self, stats):
        return np.zeros(1, np.float32)

    def describe(self):
        return {"name": self.name}

    def preprocess(self, windows, stats):
        return windows

    def predict(self, batch, encoded):
        return self.predict_with_instances(batch, encoded)[0]

    def predict_with_instances(self, batch, encoded):
        from napari_llmseg.backends.base import WindowInstances

        logits = np.where(batch[:, :1] > 0.5, 8.0, -8.0).astype(np.float32)
        found = []
        for w in batch[:, 0]:
            comp = label(w > 0.5, connectivity=1)
            masks = (
                np.stack([comp == i for i in range(1, comp.max() + 1)])
                if comp.max()
                else np.zeros((0, *w.shape), bool)
            )
            n = len(masks)
            found.append(
                WindowInstances(
                    masks,
                    np.full(n, 0.9, np.float32),
                    np.zeros(n, np.int64),
                    np.zeros((n, 4), np.float32),
                )
            )
        return np.repeat(logits, len(encoded), axis=1), found


def _as_backend():
    from napari_llmseg.backends.base import PromptSegmenter

    PromptSegmenter.register(FakeInstanceBackend)
    return FakeInstanceBackend()


def test_instance_backend_objects_merged_across_windows_not_duplicated(tmp_path):
    img, truth = disks_on_chunk_corners()
    res = segment(
        img, "bright", model=_as_backend(), chunks=CHUNK, instances=True, out=tmp_path / "o.zarr"
    )
    inst = np.asarray(res.instances[...])
    assert_matches_truth(inst, truth)
    assert res.metadata["objects"]["count"] == truth.max()
    assert "_instances_scratch" not in zarr.open_group(tmp_path / "o.zarr", mode="r")


def test_without_matching_the_seam_objects_would_be_duplicated(monkeypatch):
    import napari_llmseg.postprocess.instances as inst_mod

    img, truth = disks_on_chunk_corners()
    monkeypatch.setattr(inst_mod, "MATCH_IOU", 2.0)  # nothing can match
    res = segment(img, "bright", model=_as_backend(), chunks=CHUNK, instances=True)
    assert res.instances.max() > truth.max()


def test_instance_backend_links_objects_through_planes():
    vol = np.zeros((16, 128, 128), np.float32)
    truth = np.zeros(vol.shape, np.int32)
    ball = ellipsoid(5, 12, 12)
    for k, (z, y, x) in enumerate([(7, 40, 40), (8, 64, 100), (8, 100, 50)], 1):
        zz, yy, xx = np.nonzero(ball)
        zz, yy, xx = zz + z - 6, yy + y - 13, xx + x - 13
        vol[zz, yy, xx] = 1
        truth[zz, yy, xx] = k
    res = segment(vol, "bright", model=_as_backend(), chunks=CHUNK, instances=True, min_size=20)
    assert_matches_truth(res.instances, truth)


def test_instance_backend_options_checked():
    with pytest.raises(ValueError, match="takes min_size= only"):
        segment(
            np.zeros((64, 64), np.float32), "b", model=_as_backend(), instances=True, split=True
        )
