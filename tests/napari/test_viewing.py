"""A result far larger than what a viewer can hold opens as pyramids: zoomed out in 2D and in
3D, napari reads coarse levels only (the full resolution is never allocated)."""

from __future__ import annotations

import gc
import os

import numpy as np
import psutil
import pytest

from napari_llmseg._demo_store import large_result_store

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    # 64 x 4096 x 4096 labels: 1 GiB at full resolution, a few MB on disk (mostly empty)
    return large_result_store(tmp_path_factory.mktemp("view") / "big.zarr")


def _screenshot(viewer, qtbot):
    """The canvas once napari has drawn what it is asked to (slicing may be asynchronous)."""
    shot = None
    for _ in range(20):
        qtbot.wait(100)
        shot = viewer.screenshot(canvas_only=True, flash=False)
        if shot[..., :3].std() > 0:
            break
    return shot


def test_a_1_gib_result_is_browsed_in_2d_and_3d_without_its_full_resolution(
    make_napari_viewer, big_store, qtbot
):
    process = psutil.Process(os.getpid())
    viewer = make_napari_viewer(show=True)  # a hidden canvas draws nothing
    gc.collect()
    before = process.memory_info().rss
    (layer,) = viewer.open(str(big_store), plugin="napari-llmseg")
    assert layer.multiscale and len(layer.data) == 5
    assert layer.data[0].shape == (64, 4096, 4096)
    assert tuple(layer.scale) == (2.0, 0.5, 0.5)
    viewer.reset_view()  # the whole image on screen: zoomed out
    coarse = np.asarray(layer.data[-1])  # find a plane with objects, from the coarsest level
    plane = int(np.argmax(coarse.reshape(len(coarse), -1).any(axis=1))) * 4
    viewer.dims.set_current_step(0, plane)
    shot_2d = _screenshot(viewer, qtbot)
    assert layer.data_level > 0  # napari chose a coarse level
    assert shot_2d.shape[2] == 4 and shot_2d[..., :3].std() > 0
    viewer.dims.ndisplay = 3
    shot_3d = _screenshot(viewer, qtbot)
    assert layer.data_level == len(layer.data) - 1  # 3D: the coarsest level
    assert shot_3d[..., :3].std() > 0
    grown = process.memory_info().rss - before
    # the full resolution is 1 GiB; the levels napari read are a few MB each
    assert grown < 300 * 1024**2, f"RSS grew by {grown / 1024**2:.0f} MiB"
    from skimage.io import imsave

    shots = os.environ.get("LLMSEG_SCREENSHOTS")  # a folder to keep the views in, to look at
    if shots:
        imsave(f"{shots}/big_zoomed_out.png", shot_2d, check_contrast=False)
        imsave(f"{shots}/big_3d.png", shot_3d, check_contrast=False)
