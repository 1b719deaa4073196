"""Nothing lost, nothing mixed, never a traceback: bad input, faults and concurrent runs.

The inventory at the end walks more than forty bad inputs and options through the command
line and checks that each ends with exit code 2, one line naming the problem, no traceback,
and the input unchanged. The tests before it cover what the inventory cannot: overwrite
rules, resume fingerprints, the store lock, damaged chunks, signals and debris.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_llmseg import segment
from napari_llmseg.backends.tiny import WEIGHTS_DIR
from napari_llmseg.cli import main
from napari_llmseg.engine.lock import LOCK_NAME, StoreLockedError, StoreReplacedError
from tests.conftest import ROOT, result_arrays, smooth_model, write_zarr

KW = dict(model=smooth_model, roi_size=64, overlap=0.25, batch_size=4, chunks=64)


def digest(path: Path) -> str:
    """SHA-256 over every file under ``path`` (names and bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def volume(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    return write_zarr(
        tmp_path / "a.zarr", rng.normal(size=(8, 128, 128)).astype(np.float32), (2, 64, 64)
    ).store.root


def _cancel_after(n: int) -> tuple[threading.Event, object]:
    cancel = threading.Event()
    return cancel, (lambda d, t: cancel.set() if d >= n else None)


# --- 1. overwrite replaces only what this package wrote -----------------------------------
@pytest.mark.parametrize(
    "method", [["--method", "teach"], ["--method", "finetune", "--epochs", "1"]]
)
def test_train_overwrite_never_deletes_the_users_project_folder(tmp_path, capsys, method):
    proj = tmp_path / "proj"
    proj.mkdir()
    rng = np.random.default_rng(0)
    np.save(proj / "img.npy", rng.random((64, 64)).astype(np.float32))
    np.save(proj / "lab.npy", (rng.random((64, 64)) > 0.5).astype(np.uint8))
    (proj / "config.json").write_text('{"model_type": "llmseg-tiny"}')
    (proj / "notes.txt").write_text("my notes")
    before = digest(proj)
    code = main(
        [
            "train",
            "--image",
            str(proj / "img.npy"),
            "--labels",
            str(proj / "lab.npy"),
            "--prompt",
            "nuclei",
            "--out",
            str(proj),
            *method,
            "--overwrite",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "overlaps the input" in err and len(err.strip().splitlines()) == 1
    assert digest(proj) == before
    # a folder of the user's own (no inputs inside) is refused too, even with --overwrite
    other = tmp_path / "other"
    shutil.copytree(proj, other)
    (other / "img.npy").unlink()
    (other / "lab.npy").unlink()
    code = main(
        [
            "train",
            "--image",
            str(proj / "img.npy"),
            "--labels",
            str(proj / "lab.npy"),
            "--prompt",
            "nuclei",
            "--out",
            str(other),
            *method,
            "--overwrite",
        ]
    )
    assert code == 2 and "not a model folder written by napari-llmseg" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "my notes"


def test_a_model_folder_of_ours_is_replaced_but_not_with_strangers_in_it(tmp_path):
    from napari_llmseg.training.folders import (
        MARKER,
        check_output_folder,
        clear_model_folder,
        mark_model_folder,
    )

    folder = tmp_path / "m"
    shutil.copytree(WEIGHTS_DIR, folder)  # written before the marker existed: recognised
    check_output_folder(folder, overwrite=True)
    mark_model_folder(folder, "test")
    assert json.loads((folder / MARKER).read_text())["files"] == [
        "config.json",
        "model.safetensors",
    ]
    (folder / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"holds 'mine.txt', which napari-llmseg did not"):
        check_output_folder(folder, overwrite=True)
    (folder / "mine.txt").unlink()
    clear_model_folder(folder)
    assert list(folder.iterdir()) == []


def test_store_overwrite_refuses_a_store_holding_other_files(volume, tmp_path):
    out = tmp_path / "o.zarr"
    segment(volume, "a", out=out, **KW)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"it holds 'notes.txt', which this package did"):
        segment(volume, "a", out=out, overwrite=True, **KW)
    assert (out / "notes.txt").read_text() == "mine"


def test_output_through_a_symlink_is_not_replaced(volume, tmp_path):
    out = tmp_path / "real.zarr"
    segment(volume, "a", out=out, **KW)
    (tmp_path / "link.zarr").symlink_to(out)
    before = digest(out)
    with pytest.raises(FileExistsError, match=r"'.*link.zarr' is a symbolic link \(to "):
        segment(volume, "a", out=tmp_path / "link.zarr", overwrite=True, **KW)
    assert digest(out) == before


# --- 2-3. resume checks what it resumes ---------------------------------------------------
def test_resume_with_another_input_or_changed_weights_is_refused(volume, tmp_path):
    b = tmp_path / "b.zarr"
    shutil.copytree(volume, b)
    arr = zarr.open_array(b, mode="r+")
    arr[0, :8, :8] = 99.0  # same shape and dtype, different content
    out = tmp_path / "o.zarr"
    cancel, stop = _cancel_after(8)
    assert not segment(volume, "a", out=out, cancel=cancel, progress=stop, **KW).complete
    with pytest.raises(ValueError, match=r"the input's path was '.*a.zarr', this run's is"):
        segment(b, "a", out=out, resume=True, **KW)
    # a copy at the same path with changed contents is refused too
    shutil.rmtree(volume)
    shutil.copytree(b, volume)
    with pytest.raises(ValueError, match=r"the input's contents changed \(content hash "):
        segment(volume, "a", out=out, resume=True, **KW)
    # on a complete store as well
    shutil.rmtree(volume)
    shutil.copytree(b, volume)
    segment(volume, "a", out=tmp_path / "c.zarr", **KW)
    with pytest.raises(ValueError, match=r"cannot resume into '.*c.zarr': the input's path"):
        segment(b, "a", out=tmp_path / "c.zarr", resume=True, **KW)


def test_resume_after_the_model_weights_changed_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(WEIGHTS_DIR, model)
    image = np.random.default_rng(1).random((2, 256, 256)).astype(np.float32)
    out = tmp_path / "o.zarr"
    cancel, stop = _cancel_after(1)
    kw = dict(model=model, batch_size=1, chunks=128)
    assert not segment(image, "nuclei", out=out, cancel=cancel, progress=stop, **kw).complete
    state = load_file(model / "model.safetensors")
    state["proj.bias"] = state["proj.bias"] + 0.5
    save_file(state, str(model / "model.safetensors"))
    with pytest.raises(ValueError, match=r"the model's weights or code changed \(hash "):
        segment(image, "nuclei", out=out, resume=True, **kw)


# --- 4. array inputs backed by a store are inputs too ------------------------------------
def test_a_zarr_array_input_is_never_deleted_by_its_own_output(volume, tmp_path):
    out = tmp_path / "o.zarr"
    segment(volume, "a", out=out, **KW)
    probs = zarr.open_array(out / "0", mode="r")
    before = digest(out)
    with pytest.raises(ValueError, match=r"output '.*o.zarr' overlaps the input"):
        segment(probs, ["a", "b"], out=out, overwrite=True, **{**KW, "channel_axis": 0})
    assert digest(out) == before


# --- 5. one writer per store --------------------------------------------------------------
def test_a_store_being_written_is_locked_and_a_stale_lock_is_taken_over(volume, tmp_path):
    out = tmp_path / "o.zarr"
    started, release = threading.Event(), threading.Event()

    def slow(x, prompts):
        started.set()
        release.wait(20)
        return smooth_model(x, prompts)

    errors: list[BaseException] = []
    result: list = []

    def run_a():
        try:
            result.append(segment(volume, "a", out=out, **{**KW, "model": slow}))
        except BaseException as err:
            errors.append(err)

    a = threading.Thread(target=run_a)
    a.start()
    assert started.wait(20)
    with pytest.raises(StoreLockedError, match=r"is being written by another run \(process "):
        segment(volume, "a", out=out, overwrite=True, **KW)
    release.set()
    a.join(30)
    assert not errors and result[0].complete
    assert not (out / LOCK_NAME).exists()
    # a lock left by a killed process (here: a pid that no longer exists) is stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (out / LOCK_NAME).write_text(
        json.dumps(
            {
                "pid": dead.pid,
                "host": socket.gethostname(),
                "started": 1.0,
                "run_id": "x",
                "created": 0.0,
            }
        )
    )
    assert segment(volume, "a", out=out, overwrite=True, **KW).complete


def test_a_run_whose_store_is_taken_from_it_fails_instead_of_reporting_success(volume, tmp_path):
    out = tmp_path / "o.zarr"

    def thief(x, prompts):
        (out / LOCK_NAME).unlink(missing_ok=True)  # someone else takes the store
        return smooth_model(x, prompts)

    with pytest.raises(StoreReplacedError, match=r"was replaced or unlocked by someone else"):
        segment(volume, "a", out=out, **{**KW, "model": thief})
    assert zarr.open_group(out).attrs["napari_llmseg"]["status"] != "complete"


# --- 6. values a float32 model cannot see -------------------------------------------------
def test_float64_values_beyond_float32_are_refused(tmp_path):
    image = np.full((64, 64), 1.0)
    image[5, 5] = 2.5e302
    with pytest.raises(ValueError, match=r"holds values up to 2.5e\+302, beyond the float32"):
        segment(image, "x", model=smooth_model, roi_size=32)
    # also when the statistics are fixed by a window and never see the values
    from napari_llmseg.backends.tiny import LLMSegTiny

    with pytest.raises(ValueError, match=r"beyond the float32 range"):
        segment(image, "x", model=LLMSegTiny(), window="bone", roi_size=32)


# --- 7. damaged chunks are recomputed, not trusted ---------------------------------------
def test_deleted_and_corrupted_chunks_are_recomputed_on_resume(volume, tmp_path):
    full = segment(volume, ["a", "b"], out=tmp_path / "full.zarr", **KW)
    out = tmp_path / "o.zarr"
    segment(volume, ["a", "b"], out=out, **KW)
    chunk_files = sorted((out / "labels" / "segmentation" / "0" / "c").rglob("*"))
    chunk_files = [f for f in chunk_files if f.is_file()]
    chunk_files[0].unlink()  # deleted by hand
    chunk_files[3].write_bytes(b"garbage")  # corrupted
    prob_files = [f for f in sorted((out / "0" / "c").rglob("*")) if f.is_file()]
    data = bytearray(prob_files[5].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    prob_files[5].write_bytes(bytes(data))
    again = segment(volume, ["a", "b"], out=out, resume=True, **KW)
    assert again.complete and again.info.windows > 0
    assert any("were missing, damaged or changed" in w for w in again.warnings)
    expected, found = result_arrays(tmp_path / "full.zarr"), result_arrays(out)
    assert sorted(expected) == sorted(found)
    for name, a in expected.items():
        assert np.array_equal(a, found[name]), name
    assert full.complete


def test_a_store_missing_its_labels_metadata_is_refused_as_damaged(volume, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    cancel, stop = _cancel_after(8)
    segment(volume, "a", out=out, cancel=cancel, progress=stop, **KW)
    (out / "labels" / "segmentation" / "0" / "zarr.json").unlink()
    with pytest.raises(ValueError, match=r"the store is damaged"):
        segment(volume, "a", out=out, resume=True, **KW)


# --- 9. debris ----------------------------------------------------------------------------
def test_resume_removes_a_partial_file_left_by_a_killed_export(tmp_path):
    image = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    np.save(tmp_path / "in.npy", image)
    out = tmp_path / "o.tif"
    segment(tmp_path / "in.npy", "a", model=smooth_model, roi_size=32, out=out)
    out.unlink()
    partial = tmp_path / ".o.tif.ab12cd.tif"
    partial.write_bytes(b"half a tiff")
    segment(tmp_path / "in.npy", "a", model=smooth_model, roi_size=32, out=out, resume=True)
    assert out.is_file() and not partial.exists()


def test_probabilities_never_replace_a_file_the_user_did_not_name(tmp_path):
    image = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    (tmp_path / "user_probabilities.tif").write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match=r"was not written by napari-llmseg"):
        segment(
            image,
            "a",
            model=smooth_model,
            roi_size=32,
            out=tmp_path / "user.tif",
            probabilities=True,
            overwrite=True,
        )
    assert (tmp_path / "user_probabilities.tif").read_bytes() == b"the user's own file"
    # its own probabilities file from an earlier run is replaced
    (tmp_path / "user_probabilities.tif").unlink()
    segment(
        image, "a", model=smooth_model, roi_size=32, out=tmp_path / "mine.tif", probabilities=True
    )
    segment(
        image,
        "a",
        model=smooth_model,
        roi_size=32,
        out=tmp_path / "mine.tif",
        probabilities=True,
        overwrite=True,
    )


def test_rgba_and_channel_first_arrays_say_what_was_assumed(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    with pytest.warns(
        UserWarning,
        match=r"shape \(64, 64, 4\): it is read as a 3D volume of "
        r"64 planes; if its last axis holds RGBA channels, pass channel_axis=-1",
    ):
        result = segment(rgba, "x", model=smooth_model, roi_size=32)
    assert "channel_axis=-1" in result.warnings[0]
    np.save(tmp_path / "c.npy", np.zeros((3, 64, 64), np.uint8))
    with pytest.warns(UserWarning, match=r"first axis holds RGB channels, pass channel_axis=0"):
        segment(tmp_path / "c.npy", "x", model=smooth_model, roi_size=32)


SIGNAL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import napari_llmseg.api as api
from napari_llmseg.cli import main
from tests.conftest import paced_model

real = api.resolve_model  # the CLI names models; "paced" is the slowed test model
paced = (None, paced_model, {{"name": "paced"}})
api.resolve_model = lambda m, d: paced if m == "paced" else real(m, d)
sys.exit(main(["segment", {src!r}, "-p", "a", "-o", {out!r}, "--model", "paced", "--roi",
               "64", "--chunks", "64", "--batch", "1", "--quiet"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_cancel_cleanly_and_the_run_resumes(volume, tmp_path, sig):
    """SIGTERM and SIGHUP are handled like Ctrl-C: the current batch ends, the store says
    "cancelled", the exit code is 128 + N, and --resume completes the run identically."""
    out = tmp_path / "o.zarr"
    script = tmp_path / "run.py"
    script.write_text(SIGNAL_SCRIPT.format(root=str(ROOT), src=str(volume), out=str(out)))
    env = {**os.environ, "LLMSEG_TEST_PACE": "0.1"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and not _some_chunks_done(out):
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + int(sig), err
    assert "complete them with the same command and --resume" in err and "Traceback" not in err
    attrs = zarr.open_group(out).attrs["napari_llmseg"]
    assert attrs["status"] == "cancelled"
    assert not (out / LOCK_NAME).exists()
    done = np.asarray(zarr.open_array(out / "napari_llmseg" / "chunks_done")[...])
    assert 0 < done.sum() < done.size


def _some_chunks_done(out: Path) -> bool:
    try:
        marks = zarr.open_array(out / "napari_llmseg" / "chunks_done", mode="r")
        return bool(np.asarray(marks[...]).any())
    except Exception:  # not created yet
        return False


# --- 8. the inventory ---------------------------------------------------------------------
def _garbage_tiff(d: Path) -> Path:
    p = d / "garbage.tif"
    p.write_bytes(b"II*\x00" + struct.pack("<I", 8) + os.urandom(200))
    return p


def _npy(d: Path, name: str, array: np.ndarray) -> Path:
    np.save(d / name, array)
    return d / name


def _model(d: Path, change: str) -> Path:
    m = d / f"model-{change}"
    shutil.copytree(WEIGHTS_DIR, m)
    weights = m / "model.safetensors"
    if change == "symlink":
        (d / "notes.txt").write_text("not weights")
        weights.unlink()
        weights.symlink_to(d / "notes.txt")
    elif change == "header":
        weights.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    elif change == "widths":
        cfg = json.loads((m / "config.json").read_text())
        cfg["architecture"]["widths"] = [2**20] * 5
        (m / "config.json").write_text(json.dumps(cfg))
    elif change == "json":
        (m / "config.json").write_text("{not json")
    elif change == "pickle":
        weights.rename(m / "model.pt")
    return m


def _nifti(d: Path, kind: str) -> Path:
    import nibabel as nib

    path = d / f"{kind}.nii"
    nib.save(nib.Nifti2Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    dims = list(struct.unpack("<8q", raw[16:80]))
    dims[1] = 0 if kind == "zero" else 2**31
    raw[16:80] = struct.pack("<8q", *dims)
    path.write_bytes(bytes(raw))
    return path


def _ome(d: Path, kind: str) -> Path:
    root = zarr.open_group(d / f"{kind}.zarr", mode="w", zarr_format=3)
    root.create_array("0", shape=(32, 32), dtype=np.float32)
    datasets = {"abs": [{"path": "/etc"}], "none": []}.get(kind)
    root.attrs["ome"] = (
        5
        if kind == "ome5"
        else {
            "version": "0.5",
            "multiscales": [{"axes": [{"name": "y"}, {"name": "x"}], "datasets": datasets}],
        }
    )
    return d / f"{kind}.zarr"


def _stale_store(d: Path, src: Path, what: str) -> Path:
    out = d / f"{what}.zarr"
    cancel, stop = _cancel_after(8)
    segment(src, "a", out=out, cancel=cancel, progress=stop, **KW)
    if what == "nolabels":
        (out / "labels" / "segmentation" / "0" / "zarr.json").unlink()
    return out


def _dicom_less(d: Path) -> Path:
    (d / "notdicom").mkdir()
    (d / "notdicom" / "readme.txt").write_text("hello")
    return d / "notdicom"


GOOD = "good.npy"
CASES: dict[str, tuple] = {
    # name: (input maker, extra args, text expected in the message)
    "missing input": (lambda d: d / "missing.tif", [], "input path does not exist"),
    "garbage TIFF body": (_garbage_tiff, [], "is not a readable TIFF"),
    "zero-size axis": (
        lambda d: _npy(d, "z.npy", np.zeros((0, 128), np.float32)),
        [],
        "empty spatial axis",
    ),
    "roi 1e9": (None, ["--roi", "1000000000"], "not enough memory for these windows"),
    "chunks 0": (None, ["--chunks", "0"], "chunks must be an integer >= 16"),
    "chunks -1": (None, ["--chunks", "-1"], "chunks must be an integer >= 16"),
    "overlap 1.5": (None, ["--overlap", "1.5"], "overlap must be in [0.0, 1.0)"),
    "overlap text": (
        None,
        ["--overlap", "lots"],
        "overlap must be a number or one per window axis, got 'lots'",
    ),
    "threshold 2": (None, ["--threshold", "2"], "threshold must be in [0.0, 1.0]"),
    "batch 0": (None, ["--batch", "0"], "batch_size must be a positive integer"),
    "device tpu": (None, ["--device", "tpu"], "unknown device 'tpu'"),
    "unknown model": (None, ["--model", "sam9"], "unknown model 'sam9'"),
    "missing model folder": (None, ["--model", "/no/such/model"], "does not exist"),
    "weights symlinked to text": (
        None,
        ["--model", ("model", "symlink")],
        "is not a valid safetensors file",
    ),
    "weights with a bad header": (
        None,
        ["--model", ("model", "header")],
        "is not a valid safetensors file",
    ),
    "absurd widths": (None, ["--model", ("model", "widths")], "architecture.widths must be"),
    "config not JSON": (None, ["--model", ("model", "json")], "is not valid JSON"),
    "pickle weights": (None, ["--model", ("model", "pickle")], "only pickle-based weights"),
    "NIfTI zero axis": (lambda d: _nifti(d, "zero"), [], "with an empty axis"),
    "NIfTI-2 with 2^31 voxels": (lambda d: _nifti(d, "huge"), [], "but holds only"),
    "OME absolute dataset path": (lambda d: _ome(d, "abs"), [], "expected a relative path"),
    'OME "ome": 5': (lambda d: _ome(d, "ome5"), [], "has an 'ome' attribute that is not"),
    "OME without datasets": (lambda d: _ome(d, "none"), [], "without datasets"),
    "split without instances": (None, ["--split"], "needs instances=True"),
    "simplify without vector": (None, ["--simplify", "2"], "--simplify applies to --vector"),
    "vector from a volume": (
        lambda d: _npy(d, "v.npy", np.zeros((4, 32, 32), np.float32)),
        ["--vector", "OUT.gpkg"],
        "needs a 2D image",
    ),
    "unsupported output": (None, ["-o", "OUT.png"], "unsupported output"),
    "output inside the input": (
        lambda d: write_zarr(d / "in.zarr", np.zeros((32, 32), np.float32), (16, 16)).store.root,
        ["-o", "INPUT/o.zarr"],
        "overlaps the input",
    ),
    "existing output": (None, ["-o", "EXISTING"], "already exists; pass overwrite=True"),
    "overwrite a user folder": (
        None,
        ["-o", "USERDIR", "--overwrite"],
        "is not a napari-llmseg output store",
    ),
    "resume a non-store": (None, ["-o", "USERDIR", "--resume"], "is not a napari-llmseg output"),
    "resume another prompt": (
        None,
        ["-o", "STALE", "--resume", "-p", "b"],
        "it was started with prompts=",
    ),
    "resume a damaged store": (None, ["-o", "NOLABELS", "--resume"], "the store is damaged"),
    "blank prompt": (None, ["-p", "  "], "prompts must not be empty or blank"),
    "repeated prompt": (None, ["-p", "a"], "each prompt must be given once"),
    "bad window": (None, ["--window", "bonez"], "window must be a preset"),
    "negative window width": (None, ["--window", "40,-5"], "window width must be a positive"),
    "bands on npy": (None, ["--bands", "1"], "bands= selects bands of a TIFF/GeoTIFF file"),
    "channel axis out of range": (None, ["--channel-axis", "5"], "channel_axis=5 is out of range"),
    "4D without channels": (
        lambda d: _npy(d, "4d.npy", np.zeros((2, 3, 32, 32), np.float32)),
        [],
        "expected a 2D (Y, X) or 3D (Z, Y, X) image",
    ),
    "object dtype": (
        lambda d: _npy(d, "obj.npy", np.array([[1, "a"]], dtype=object)),
        [],
        "holds Python objects",
    ),
    "complex dtype": (
        lambda d: _npy(d, "cx.npy", np.zeros((32, 32), np.complex64)),
        [],
        "expected an integer or float image",
    ),
    "unknown size unit": (None, ["--instances", "--min-size", "5 parsecs"], "unknown unit"),
    "negative smoothing": (None, ["--smooth", "-1"], "smooth must be a radius"),
    "values beyond float32": (
        lambda d: _npy(d, "big.npy", np.full((32, 32), 2.5e302)),
        [],
        "beyond the float32 range",
    ),
    "folder without DICOM": (_dicom_less, [], "holds no DICOM image files"),
    "bogus scheduler": (None, ["--scheduler", "bogus"], "scheduler must be 'local:N'"),
    "zero workers": (None, ["--workers", "0"], "expected 'local:N' with N >= 1"),
}


@pytest.fixture(scope="module")
def inventory_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inventory")
    np.save(d / GOOD, np.random.default_rng(0).random((64, 64)).astype(np.float32))
    segment(d / GOOD, "a", model=smooth_model, roi_size=32, out=d / "existing.zarr")
    (d / "userdir").mkdir()
    (d / "userdir" / "notes.txt").write_text("mine")
    _stale_store(d, d / GOOD, "stale")
    _stale_store(d, d / GOOD, "nolabels")
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_inventory_of_bad_inputs(case, inventory_dir, tmp_path, capsys):
    make, extra, expected = CASES[case]
    d = tmp_path
    src = make(d) if make is not None else inventory_dir / GOOD
    args: list[str] = []
    out = str(d / "o.zarr")
    for a in extra:
        if isinstance(a, tuple):
            a = str(_model(d, a[1]))
        a = {
            "OUT.png": str(d / "o.png"),
            "OUT.gpkg": str(d / "o.gpkg"),
            "EXISTING": str(inventory_dir / "existing.zarr"),
            "USERDIR": str(inventory_dir / "userdir"),
            "STALE": str(inventory_dir / "stale.zarr"),
            "NOLABELS": str(inventory_dir / "nolabels.zarr"),
        }.get(a, a)
        if a.startswith("INPUT/"):
            a = str(Path(src) / a[len("INPUT/") :])
        args.append(a)
    if "-o" in args:
        out = args[args.index("-o") + 1]
        del args[args.index("-o") : args.index("-o") + 2]
    hashed = [Path(src)] + [inventory_dir / n for n in ("existing.zarr", "userdir", "stale.zarr")]
    before = {p: digest(p) for p in hashed if p.exists()}
    try:
        code = main(["segment", str(src), "-p", "a", "-o", out, "--roi", "32", *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "warning:" not in line]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("napari-llmseg: error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert {p: digest(p) for p in before} == before  # inputs and other outputs untouched
    if case in ("chunks -1", "chunks 0", "roi 1e9", "split without instances"):
        assert not Path(out).exists()  # nothing left behind


def test_the_inventory_is_large():
    assert len(CASES) >= 40


@pytest.fixture
def small_fs(tmp_path):
    """A tiny file system of its own (tmpfs), read-only or nearly full; skipped where this
    user may not mount (the project's machines run as root)."""
    mounts = []

    def make(name: str, options: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_read_only_and_full_file_systems_give_one_line(small_fs, tmp_path, capsys):
    src = _npy(tmp_path, "in.npy", np.random.default_rng(0).random((256, 256)).astype(np.float32))
    before = digest(src)
    ro = small_fs("ro", "size=1m,ro")
    code = main(
        ["segment", str(src), "-p", "nuclei", "-o", str(ro / "o.zarr"), "--roi", "32", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Read-only file system" in err and len(err.strip().splitlines()) == 1
    full = small_fs("full", "size=48k")
    code = main(
        ["segment", str(src), "-p", "nuclei", "-o", str(full / "o.zarr"), "--roi", "32", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert digest(src) == before
    status = zarr.open_group(full / "o.zarr").attrs["napari_llmseg"]["status"]
    assert status != "complete"  # "failed" when the disk still had room to say so
    assert not (full / "o.zarr" / LOCK_NAME).exists()
