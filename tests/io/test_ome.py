from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_llmseg._layers import zarr_layers as read_store
from napari_llmseg.io.ome import write_labels_store


def test_labels_roundtrip_keeps_names_scale_units_and_colours(tmp_path):
    data = np.zeros((3, 600, 520), np.uint8)
    data[:, 100:200, 100:300] = 1
    data[1, 400:500, 50:60] = 2
    names = {1: "nuclei", 2: "mitosis"}
    out = write_labels_store(tmp_path / "l.zarr", data, name="cells", label_names=names,
                             scale=(2.0, 0.5, 0.5), units=("micrometer",) * 3)  # fmt: skip
    meta = zarr.open_group(out / "labels" / "cells").attrs["ome"]
    assert meta["image-label"]["properties"] == [
        {"label-value": 1, "prompt": "nuclei"}, {"label-value": 2, "prompt": "mitosis"}
    ]  # fmt: skip
    assert [a["unit"] for a in meta["multiscales"][0]["axes"]] == ["micrometer"] * 3
    (layer,) = read_store(out)
    levels, kwargs, kind = layer
    assert kind == "labels" and kwargs["name"] == "cells" and kwargs["multiscale"]
    np.testing.assert_array_equal(np.asarray(levels[0]), data)
    assert levels[1].shape == (3, 300, 260)  # pyramid for large labels
    assert kwargs["scale"] == (2.0, 0.5, 0.5) and kwargs["units"] == ("micrometer",) * 3
    assert kwargs["features"]["prompt"] == ["background", "nuclei", "mitosis"]
    assert kwargs["colormap"][1][3] == 1.0


def test_existing_output_is_not_overwritten(tmp_path):
    data = np.ones((8, 8), np.uint8)
    write_labels_store(tmp_path / "l.zarr", data, name="a", label_names={1: "x"})
    with pytest.raises(FileExistsError, match="already exists"):
        write_labels_store(tmp_path / "l.zarr", data, name="a", label_names={1: "x"})


def test_plain_array_and_empty_group(tmp_path):
    z = zarr.create_array(tmp_path / "a.zarr", shape=(4, 4), dtype="u2")
    ((data, kwargs, kind),) = read_store(tmp_path / "a.zarr")
    assert kind == "image" and data.shape == (4, 4) and kwargs["name"] == "a"
    zarr.open_group(tmp_path / "e.zarr", mode="w")
    with pytest.raises(ValueError, match="holds no arrays, images or labels"):
        read_store(tmp_path / "e.zarr")
    del z
