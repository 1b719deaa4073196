from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_llmseg import open_image
from tests.conftest import SAMPLE, write_zarr


def test_numpy_dask_and_zarr_read_the_same(rng, tmp_path):
    vol = rng.integers(0, 1000, size=(4, 40, 50)).astype(np.uint16)
    sources = [
        open_image(vol),
        open_image(da.from_array(vol, chunks=(1, 20, 25))),
        open_image(write_zarr(tmp_path / "a.zarr", vol, (2, 16, 16))),
        open_image(tmp_path / "a.zarr"),
    ]
    region = (slice(1, 3), slice(5, 30), slice(0, 50))
    for s in sources:
        assert s.spatial_shape == (4, 40, 50) and s.n_channels == 1 and s.dtype == np.uint16
        out = s.read(region)
        assert out.shape == (2, 25, 50, 1)
        np.testing.assert_array_equal(out[..., 0], vol[region])
    assert sources[0].chunks is None
    assert sources[2].chunks == (2, 16, 16)
    assert sources[1].chunks == (1, 20, 25)


def test_channel_axis_is_moved_last(rng):
    img = rng.normal(size=(3, 20, 30)).astype(np.float32)
    s = open_image(img, channel_axis=0)
    assert s.spatial_shape == (20, 30) and s.n_channels == 3
    np.testing.assert_array_equal(s.read((slice(0, 5), slice(None)))[..., 2], img[2, :5])


def test_tiff_lazy_and_rgb_channel_from_metadata(tmp_path, rng):
    s = open_image(SAMPLE)
    assert s.spatial_shape == (60, 256, 256) and s.dtype == np.uint16 and s.n_channels == 1
    assert isinstance(s.array, zarr.Array)  # read chunk by chunk, not loaded
    rgb = rng.integers(0, 255, size=(40, 50, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    s = open_image(tmp_path / "rgb.tif")
    assert s.channel_axis == 2 and s.spatial_shape == (40, 50) and s.n_channels == 3
    np.testing.assert_array_equal(s.read((slice(None), slice(None))), rgb)


def test_npy_is_memory_mapped(tmp_path, rng):
    arr = rng.normal(size=(30, 40)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    s = open_image(tmp_path / "x.npy")
    assert isinstance(s.array, np.memmap)
    np.testing.assert_array_equal(s.read((slice(None), slice(None)))[..., 0], arr)


def test_ome_zarr_multiscale_opens_level_0_with_scale_and_channels(tmp_path, rng):
    root = zarr.open_group(tmp_path / "ome.zarr", mode="w", zarr_format=3)
    img = rng.integers(0, 100, size=(2, 8, 32, 32)).astype(np.uint8)  # c, z, y, x
    root.create_array("0", data=img, chunks=(1, 4, 16, 16))
    root.create_array("1", data=img[:, :, ::2, ::2], chunks=(1, 4, 16, 16))
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "z", "type": "space"},
                    {"name": "y", "type": "space"},
                    {"name": "x", "type": "space"},
                ],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1, 2.0, 0.5, 0.5]}
                        ],
                    },
                    {
                        "path": "1",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1, 2.0, 1.0, 1.0]}
                        ],
                    },
                ],
            }
        ],
    }
    s = open_image(tmp_path / "ome.zarr")
    assert s.channel_axis == 0 and s.spatial_shape == (8, 32, 32) and s.n_channels == 2
    assert s.metadata["scale"] == (1, 2.0, 0.5, 0.5)
    np.testing.assert_array_equal(
        s.read((slice(0, 1), slice(None), slice(None)))[0, ..., 1], img[1, 0]
    )


def test_zarr_group_without_multiscales_needs_an_array_path(tmp_path):
    root = zarr.open_group(tmp_path / "g.zarr", mode="w")
    root.create_array("a", shape=(8, 8), dtype="u1")
    root.create_array("b", shape=(8, 8), dtype="u1")
    with pytest.raises(
        ValueError, match=r"zarr group with arrays \['a', 'b'\].*pass the path of one array"
    ):
        open_image(tmp_path / "g.zarr")
    assert open_image(tmp_path / "g.zarr" / "a").spatial_shape == (8, 8)


def test_not_a_zarr_store(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(ValueError, match="is not a readable zarr store"):
        open_image(tmp_path / "x.zarr")
