"""OME-Zarr (NGFF 0.5): result stores and the napari writer's labels, checked with the tools
users have (ome-zarr-models, ome-zarr-py's Reader) and read back with their placement."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from napari_llmseg import segment
from napari_llmseg._layers import zarr_layers
from napari_llmseg.io.ome import write_labels_store
from napari_llmseg.io.pyramid import plan_levels, reduce_labels
from tests.conftest import smooth_model


def _labels(shape=(3, 600, 520)) -> np.ndarray:
    data = np.zeros(shape, np.uint8)
    data[..., 100:200, 100:300] = 1
    data[..., 400:500, 50:60] = 2
    return data


def _reader_nodes(path) -> list[tuple[str, set[str], int]]:
    return [
        (str(n.metadata.get("name")), {type(s).__name__ for s in n.specs}, len(n.data))
        for n in Reader(parse_url(str(path)))()
    ]


def test_result_store_is_valid_ome_zarr_with_pyramids(tmp_path):
    image = np.random.default_rng(0).random((2, 1100, 700)).astype(np.float32)
    from napari_llmseg.io.source import ImageSource

    source = ImageSource(image, metadata={"scale": (2.0, 0.5, 0.5), "units": ("um",) * 3,
                                          "translate": (10.0, 20.0, 30.0)})  # fmt: skip
    out = tmp_path / "r.zarr"
    result = segment(source, ["a", "b"], model=smooth_model, roi_size=64, out=out,
                     instances=True)  # fmt: skip
    group = zarr.open_group(out, mode="r")
    assert isinstance(open_ome_zarr(group), Image)  # ome-zarr-models validates the whole store
    assert isinstance(open_ome_zarr(group["labels/segmentation"]), ImageLabel)
    assert isinstance(open_ome_zarr(group["labels/instances"]), ImageLabel)
    nodes = _reader_nodes(out)  # ome-zarr-py finds the image and both label images
    assert ("probabilities", {"Multiscales"}, 4) in nodes
    assert ("segmentation", {"Label", "Multiscales"}, 4) in nodes
    assert ("instances", {"Label", "Multiscales"}, 4) in nodes
    ome = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ome["axes"]] == ["c", "z", "y", "x"]
    assert [a.get("unit") for a in ome["axes"]] == [None] + ["micrometer"] * 3
    level1 = ome["datasets"][1]["coordinateTransformations"]
    assert level1[0]["scale"] == [1.0, 2.0, 1.0, 1.0]  # Z is kept: 2 um planes, 0.5 um pixels
    assert level1[1]["translation"] == [0.0, 10.0, 20.25, 30.25]  # pixel centres of level 1
    seg = group["labels/segmentation"]
    assert seg.attrs["ome"]["image-label"]["properties"] == [
        {"label-value": 1, "prompt": "a"}, {"label-value": 2, "prompt": "b"}
    ]  # fmt: skip
    shapes = [seg[str(k)].shape for k in range(4)]
    # Z is halved once pixels are as coarse as the 2 um planes (level 3: 2 um pixels)
    assert shapes == [(2, 1100, 700), (2, 550, 350), (2, 275, 175), (1, 138, 88)]
    # every level is the one below reduced: labels by their most frequent value
    base, one = np.asarray(seg["0"][...]), np.asarray(seg["1"][...])
    np.testing.assert_array_equal(one, reduce_labels(base, (1, 2, 2)))
    assert set(np.unique(one)) <= set(np.unique(base))
    # probabilities are kept as uint8, read back as 0..1
    assert group["0"].dtype == np.uint8 and result.probabilities.dtype == np.float32
    assert float(np.asarray(result.probabilities[0]).max()) <= 1.0
    # napari layers: multiscale, placed and measured like the input
    layers = {kw["name"]: (data, kw, kind) for data, kw, kind in zarr_layers(out)}
    data, kw, kind = layers["r labels"]
    assert kind == "labels" and kw["multiscale"] and len(data) == 4
    assert kw["scale"] == (2.0, 0.5, 0.5) and kw["translate"] == (10.0, 20.0, 30.0)
    assert kw["units"] == ("um", "um", "um")
    assert kw["features"]["prompt"] == ["background", "a", "b"]
    assert layers["a probability"][1]["contrast_limits"] == (0.0, 255.0)
    assert layers["r instances"][2] == "labels"


def test_probabilities_none_float16_and_float32(tmp_path):
    image = np.random.default_rng(1).random((300, 280)).astype(np.float32)
    kw = dict(model=smooth_model, roi_size=64)
    memory = segment(image, "a", **kw)
    for kind, dtype in (("float32", np.float32), ("float16", np.float16), ("uint8", np.uint8)):
        res = segment(image, "a", out=tmp_path / f"{kind}.zarr", probabilities=kind, **kw)
        stored = zarr.open_array(tmp_path / f"{kind}.zarr" / "0", mode="r")
        assert stored.dtype == dtype
        tolerance = {"float32": 0, "float16": 1e-3, "uint8": 0.5 / 255}[kind]
        np.testing.assert_allclose(np.asarray(res.probabilities[...]), memory.probabilities,
                                   atol=tolerance + 1e-7)  # fmt: skip
        np.testing.assert_array_equal(np.asarray(res.labels), memory.labels)  # labels exact
    res = segment(image, "a", out=tmp_path / "none.zarr", probabilities="none", **kw)
    assert res.probabilities is None
    group = zarr.open_group(tmp_path / "none.zarr", mode="r")
    assert isinstance(open_ome_zarr(group), Image)
    assert group.attrs["ome"]["multiscales"][0]["name"] == "classes"  # the root image
    np.testing.assert_array_equal(np.asarray(group["0"][...]), memory.labels)
    assert [kw["name"] for _, kw, _ in zarr_layers(tmp_path / "none.zarr")] == ["none labels"]


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr", "multiscale"])
def test_napari_writer_round_trip_keeps_data_names_and_placement(tmp_path, kind):
    from napari_llmseg._writer import write_labels

    data = _labels()
    if kind == "dask":
        layer_data = da.from_array(data, chunks=(1, 256, 256))
    elif kind == "zarr":
        layer_data = zarr.create_array(
            tmp_path / "src.zarr", shape=data.shape, chunks=(1, 128, 128), dtype=data.dtype
        )
        layer_data[...] = data
    elif kind == "multiscale":
        layer_data = [data, np.ascontiguousarray(data[:, ::2, ::2])]
    else:
        layer_data = data
    attributes = {
        "name": "cells", "scale": (2.0, 0.5, 0.5), "translate": (5.0, -3.0, 7.5),
        "units": ("micrometer",) * 3,
        "features": {"index": [0, 1, 2], "prompt": ["background", "nuclei", "mitosis"]},
    }  # fmt: skip
    (path,) = write_labels(str(tmp_path / "out.zarr"), layer_data, attributes)
    group = zarr.open_group(path, mode="r")
    assert isinstance(open_ome_zarr(group), ImageLabel)
    n_levels = 2 if kind == "multiscale" else 3  # down to about 256 px: 600, 300, 150
    assert ("cells", {"Label", "Multiscales"}, n_levels) in _reader_nodes(path)
    meta = group.attrs["ome"]
    assert meta["image-label"]["properties"] == [
        {"label-value": 1, "prompt": "nuclei"}, {"label-value": 2, "prompt": "mitosis"}
    ]  # fmt: skip
    first = meta["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert first == [{"type": "scale", "scale": [2.0, 0.5, 0.5]},
                     {"type": "translation", "translation": [5.0, -3.0, 7.5]}]  # fmt: skip
    ((levels, kwargs, layer_kind),) = zarr_layers(path)
    assert layer_kind == "labels" and kwargs["multiscale"] and kwargs["name"] == "cells"
    np.testing.assert_array_equal(np.asarray(levels[0]), data)
    assert levels[1].shape == (3, 300, 260)
    if kind == "multiscale":  # the layer's own levels are written as they are
        np.testing.assert_array_equal(np.asarray(levels[1]), data[:, ::2, ::2])
    assert kwargs["scale"] == (2.0, 0.5, 0.5) and kwargs["translate"] == (5.0, -3.0, 7.5)
    assert kwargs["units"] == ("micrometer",) * 3
    assert kwargs["features"]["prompt"] == ["background", "nuclei", "mitosis"]


def test_writer_refuses_to_replace_what_it_did_not_write(tmp_path):
    data = np.ones((8, 8), np.uint8)
    write_labels_store(tmp_path / "l.zarr", data, name="a", label_names={1: "x"})
    with pytest.raises(FileExistsError, match="already exists"):
        write_labels_store(tmp_path / "l.zarr", data, name="a", label_names={1: "x"})
    write_labels_store(tmp_path / "l.zarr", data, name="a", label_names={1: "x"}, overwrite=True)
    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["mine"] = 1
    with pytest.raises(FileExistsError, match="not an OME-Zarr labels store written by"):
        write_labels_store(tmp_path / "other.zarr", data, name="a", label_names={1: "x"},
                           overwrite=True)  # fmt: skip


def test_pyramid_levels_keep_planes_until_the_pixels_catch_up():
    ct = plan_levels((108, 2048, 2048), (1, 512, 512), (1.5, 0.957, 0.957))
    assert [lv.step for lv in ct] == [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert ct[-1].shape == (27, 256, 256)
    iso = plan_levels((256, 1024, 1024), (64, 256, 256), None)
    assert [lv.shape for lv in iso] == [(256, 1024, 1024), (128, 512, 512), (64, 256, 256)]
    assert (
        len(plan_levels((300, 200), (512, 512))) == 2
        and len(plan_levels((256, 256), (512, 512))) == 1
    )


def test_plain_array_and_empty_group(tmp_path):
    z = zarr.create_array(tmp_path / "a.zarr", shape=(4, 4), dtype="u2")
    ((data, kwargs, kind),) = zarr_layers(tmp_path / "a.zarr")
    assert kind == "image" and data.shape == (4, 4) and kwargs["name"] == "a"
    zarr.open_group(tmp_path / "e.zarr", mode="w")
    with pytest.raises(ValueError, match="holds no arrays, images or labels"):
        zarr_layers(tmp_path / "e.zarr")
    del z


def test_reader_specs_are_ome_zarr_py_types():
    assert Label.__name__ == "Label" and Multiscales.__name__ == "Multiscales"


def test_3d_windows_write_an_ome_zarr_store_with_pyramids(tmp_path):
    """3D windows (chunks 32 x 256 x 256 by default, here 16^3 with chunks=16) fill the same
    OME-Zarr layout: validated, every level reduced from the one below, Z halved where the
    spacing allows (isotropic voxels: at once), and identical to 2D windows' layout."""
    from napari_llmseg.io.pyramid import reduce_mean
    from napari_llmseg.io.source import ImageSource

    image = np.random.default_rng(1).random((40, 600, 300)).astype(np.float32)
    source = ImageSource(image, metadata={"scale": (1.0, 1.0, 1.0), "units": ("mm",) * 3})
    out = tmp_path / "v.zarr"
    result = segment(source, ["a", "b"], model=smooth_model, roi_size=(16, 64, 64), out=out,
                     chunks=32)  # fmt: skip
    group = zarr.open_group(out, mode="r")
    assert isinstance(open_ome_zarr(group), Image)
    assert isinstance(open_ome_zarr(group["labels/segmentation"]), ImageLabel)
    assert group.attrs["napari_llmseg"]["roi_size"] == [16, 64, 64]
    seg = group["labels/segmentation"]
    n = group.attrs["napari_llmseg"]["layout"]["levels"]
    assert n == 3 and seg["0"].chunks == (32, 32, 32) and group["0"].chunks == (1, 32, 32, 32)
    assert [seg[str(k)].shape for k in range(n)] == [(40, 600, 300), (20, 300, 150),
                                                     (10, 150, 75)]  # fmt: skip
    for k in range(1, n):
        below, level = np.asarray(seg[str(k - 1)][...]), np.asarray(seg[str(k)][...])
        np.testing.assert_array_equal(level, reduce_labels(below, (2, 2, 2)))
        pb, pl = np.asarray(group[str(k - 1)][...]), np.asarray(group[str(k)][...])
        np.testing.assert_array_equal(pl, reduce_mean(pb, (2, 2, 2)))
    np.testing.assert_array_equal(np.asarray(seg["0"][...]), np.asarray(result.labels))
    assert {1, 2} <= set(np.unique(np.asarray(result.labels)))  # reductions pick between them
