"""Resume after cancel or kill -9, overwrite safety, and never writing to the input."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_llmseg import segment
from tests.conftest import ROOT, paced_model, result_arrays, smooth_model, write_zarr

KW = dict(model=smooth_model, roi_size=64, overlap=0.25, batch_size=4, chunks=64)
#: 3D windows over the same volume: 4 x 5 x 5 windows, output chunks of 16^3 (2 along Z)
KW3 = dict(model=smooth_model, roi_size=(8, 64, 64), overlap=0.25, batch_size=4, chunks=16)


def _volume(path: Path) -> Path:
    rng = np.random.default_rng(7)
    write_zarr(path, rng.normal(size=(24, 256, 256)).astype(np.float32), (4, 128, 128))
    return path


def _assert_identical(a: Path, b: Path) -> None:
    gb = zarr.open_group(b, mode="r")
    xs, ys = result_arrays(a), result_arrays(b)
    assert sorted(xs) == sorted(ys) and "labels/segmentation/0" in xs and "0" in xs
    for name, x in xs.items():
        y = ys[name]
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), f"{name} differs"  # bit-identical, not just close
    assert np.asarray(gb["napari_llmseg/chunks_done"][...]).all()


@pytest.mark.parametrize(
    ("kw", "stop_at", "label_chunks"), [(KW, 100, (1, 64, 64)), (KW3, 80, (16, 16, 16))]
)
def test_resume_after_cancel_is_bit_identical(tmp_path, kw, stop_at, label_chunks):
    src = _volume(tmp_path / "in.zarr")
    full = segment(src, ["a", "b"], out=tmp_path / "full.zarr", **kw)
    cancel = threading.Event()
    part = segment(
        src,
        ["a", "b"],
        out=tmp_path / "part.zarr",
        cancel=cancel,
        progress=lambda d, t: cancel.set() if d >= stop_at else None,
        **kw,
    )
    assert not part.complete
    done = np.asarray(
        zarr.open_group(tmp_path / "part.zarr", mode="r")["napari_llmseg/chunks_done"][...]
    )
    assert 0 < done.sum() < done.size
    calls = []
    rest = segment(
        src,
        ["a", "b"],
        out=tmp_path / "part.zarr",
        resume=True,
        progress=lambda d, t: calls.append((d, t)),
        **kw,
    )
    assert rest.complete
    # only windows touching unfinished chunks ran again
    assert 0 < rest.info.total < part.info.total == full.info.windows
    _assert_identical(tmp_path / "full.zarr", tmp_path / "part.zarr")
    group = zarr.open_group(tmp_path / "part.zarr")
    assert group.attrs["napari_llmseg"]["status"] == "complete"
    assert group.attrs["napari_llmseg"]["roi_size"] == list(
        (kw["roi_size"],) * 2 if isinstance(kw["roi_size"], int) else kw["roi_size"]
    )
    assert group["labels/segmentation/0"].chunks == label_chunks
    assert group["0"].chunks == (1, *label_chunks)  # probabilities: c = prompt, one chunk each
    # 3D chunks reach the pyramid: every level is chunked like level 0, resumed levels done
    levels = group.attrs["napari_llmseg"]["layout"]["level_chunks"]
    assert levels[0] == list(label_chunks) and len(levels) >= 1
    assert all(np.asarray(group[f"napari_llmseg/pyramid_done_{k}"][...]).all()
               for k in range(1, len(levels)))  # fmt: skip


KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.conftest import paced_model
from napari_llmseg import segment

segment({src!r}, ["a", "b"], model=paced_model, roi_size={roi!r}, overlap=0.25, batch_size=4,
        chunks={chunks!r}, out={out!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize(("kw", "pace"), [(KW, 0.03), (KW3, 0.15)])
def test_kill_9_then_resume_is_bit_identical(tmp_path, kw, pace):
    src = _volume(tmp_path / "in.zarr")
    out = tmp_path / "killed.zarr"
    script = KILL_SCRIPT.format(
        root=str(ROOT), src=str(src), out=str(out), roi=kw["roi_size"], chunks=kw["chunks"]
    )
    env = {**os.environ, "LLMSEG_TEST_PACE": str(pace)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    done = total = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "napari_llmseg" / "chunks_done" / "zarr.json").exists():
                marks = zarr.open_array(out / "napari_llmseg" / "chunks_done", mode="r")
                arr = np.asarray(marks[...])
                done, total = int(arr.sum()), arr.size
                if done >= total // 4:
                    break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < done < total, (done, total)
    group = zarr.open_group(out, mode="r")
    assert group.attrs["napari_llmseg"]["status"] == "running"  # it never got to finish
    kw = {**kw, "model": paced_model}  # same model as the killed run, unpaced here
    resumed = segment(src, ["a", "b"], out=out, resume=True, **kw)
    full = segment(src, ["a", "b"], out=tmp_path / "full.zarr", **kw)
    assert resumed.complete and resumed.info.total < full.info.windows
    _assert_identical(tmp_path / "full.zarr", out)


def test_resume_of_a_complete_store_runs_nothing(tmp_path):
    src = _volume(tmp_path / "in.zarr")
    first = segment(src, "a", out=tmp_path / "o.zarr", **KW)
    again = segment(src, "a", out=tmp_path / "o.zarr", resume=True, **KW)
    assert again.info.windows == 0 and again.complete
    assert np.array_equal(np.asarray(first.labels[...]), np.asarray(again.labels[...]))


def test_resume_without_existing_store_starts_fresh(tmp_path):
    src = _volume(tmp_path / "in.zarr")
    result = segment(src, "a", out=tmp_path / "new.zarr", resume=True, **KW)
    assert result.complete and result.info.windows == 24 * 25


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"overlap": 0.5}, "overlap"),
        ({"threshold": 0.3}, "threshold"),
        ({"batch_size": 2}, "batch_size"),
    ],
)
def test_resume_with_other_settings_is_refused(tmp_path, change, key):
    src = _volume(tmp_path / "in.zarr")
    cancel = threading.Event()
    cancel.set()
    segment(src, "a", out=tmp_path / "o.zarr", cancel=cancel, **KW)
    kw = {**KW, **change}
    with pytest.raises(ValueError, match=f"started with {key}=.*this run has {key}="):
        segment(src, "a", out=tmp_path / "o.zarr", resume=True, **kw)
    with pytest.raises(ValueError, match="started with prompts="):
        segment(src, "b", out=tmp_path / "o.zarr", resume=True, **KW)


def test_existing_output_needs_overwrite(tmp_path):
    src = _volume(tmp_path / "in.zarr")
    out = tmp_path / "o.zarr"
    segment(src, "a", out=out, **KW)
    before = np.asarray(zarr.open_group(out)["0"][...])
    with pytest.raises(
        FileExistsError, match=r"output '.*o\.zarr' already exists; pass overwrite=True"
    ):
        segment(src, "b", out=out, **KW)
    assert np.array_equal(before, np.asarray(zarr.open_group(out)["0"][...]))
    replaced = segment(src, "b", out=out, overwrite=True, **KW)
    assert replaced.prompts == ["b"]
    assert zarr.open_group(out).attrs["napari_llmseg"]["prompts"] == ["b"]


def test_overwrite_never_deletes_foreign_data(tmp_path):
    src = _volume(tmp_path / "in.zarr")
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a napari-llmseg output store"):
        segment(src, "a", out=foreign, overwrite=True, **KW)
    assert (foreign / "chapter1.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="exists but is not a napari-llmseg output store"):
        segment(src, "a", out=foreign, resume=True, **KW)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_input_is_never_written(tmp_path):
    src = _volume(tmp_path / "in.zarr")
    before = _digest(src)
    with pytest.raises(ValueError, match="overlaps the input"):
        segment(src, "a", out=src, overwrite=True, **KW)
    with pytest.raises(ValueError, match="overlaps the input"):
        segment(src, "a", out=src / "labels.zarr", **KW)
    segment(src, "a", out=tmp_path / "o.zarr", **KW)
    assert _digest(src) == before


def test_default_output_chunks_are_512_pixel_tiles(tmp_path, rng):
    vol = rng.normal(size=(2, 600, 300)).astype(np.float32)
    segment(vol, "x", model=smooth_model, roi_size=64, out=tmp_path / "d.zarr")
    group = zarr.open_group(tmp_path / "d.zarr", mode="r")
    assert group["labels/segmentation/0"].chunks == (1, 512, 300)
    assert group["0"].chunks == (1, 1, 512, 300)
    assert group["labels/segmentation/0"].compressors[0].level == 1
    segment(vol, "x", model=smooth_model, roi_size=64, out=tmp_path / "c.zarr", chunks=128)
    group = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert group["labels/segmentation/0"].chunks == (1, 128, 128)


@pytest.mark.parametrize(
    ("shape", "grid_chunks"), [((2, 600, 300), (1, 3, 2)), ((600, 300), (1, 2))]
)
def test_done_marker_chunks_hold_one_entry_of_the_first_grid_axis(
    tmp_path, rng, shape, grid_chunks
):
    """Distributed tasks split the chunk grid along its first axis; with one entry of that
    axis per marker chunk, no two tasks read-modify-write the same marker chunk."""
    vol = rng.normal(size=shape).astype(np.float32)
    segment(vol, "x", model=smooth_model, roi_size=64, out=tmp_path / "d.zarr", chunks=256)
    done = zarr.open_group(tmp_path / "d.zarr", mode="r")["napari_llmseg/chunks_done"]
    assert done.chunks == grid_chunks
    assert np.asarray(done[...]).all()
