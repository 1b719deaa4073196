from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zarr

from napari_llmseg.cli import main


@pytest.fixture
def small_npy(tmp_path, sample_volume):
    p = tmp_path / "small.npy"
    np.save(p, sample_volume[28:32])
    return p


def test_segment_writes_store_and_prints_summary(small_npy, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    code = main(
        [
            "segment",
            str(small_npy),
            "-p",
            "nuclei",
            "-p",
            "giraffe",
            "-o",
            str(out),
            "--roi",
            "128",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert lines[:2] == [f"wrote {out}", f"wrote {tmp_path / 'out_report.html'}"]
    assert lines[2].startswith("nuclei: ") and lines[3].startswith("giraffe: ")
    group = zarr.open_group(out, mode="r")
    labels = np.asarray(group["labels/segmentation/0"][...])
    n_nuclei = int((labels == 1).sum())
    assert lines[2].startswith(
        f"nuclei: {n_nuclei:,} voxels ({100 * n_nuclei / labels.size:.2f} % of the volume), "
    )
    assert group["0"].shape == (2, 4, 256, 256)
    attrs = group.attrs["napari_llmseg"]
    assert attrs["prompts"] == ["nuclei", "giraffe"] and attrs["roi_size"] == [128, 128]
    assert attrs["label_names"] == {"1": "nuclei", "2": "giraffe"}
    assert attrs["model"]["name"] == "llmseg-tiny" and attrs["status"] == "complete"
    assert "segmenting" in captured.err  # the progress bar


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overlap", "1.5"], "overlap must be in [0.0, 1.0), got 1.5"),
        (["--roi", "8"], "roi_size must be at least 16 pixels, got 8"),
        (
            ["--roi", "32.5"],
            "roi_size must be an int or a sequence of ints (None or <= 0: the "
            "image's extent along that axis), got '32.5'",
        ),
        (
            ["--roi", "96,96,96"],
            "roi_size must be an int or 2 ints for the llmseg-tiny backend "
            "(2D windows), got (96, 96, 96)",
        ),
        (["--overlap", "lots"], "overlap must be a number or one per window axis, got 'lots'"),
        (
            ["--overlap", "0.5,1"],
            "overlap must be in [0.0, 1.0) on every window axis, got (0.5, 1.0)",
        ),
        (["--sigma-scale", "0"], "sigma_scale must be > 0.0, got 0.0"),
        (
            ["--sigma-scale", "0.1,0.1,0.1"],
            "sigma_scale (0.1, 0.1, 0.1) has 3 entries for 2D windows",
        ),
        (
            ["--batch", "100000", "--roi", "4096"],
            "not enough memory for these windows: a batch of 100000 windows of 4096 x 4096",
        ),
        (["--model", "nonexistent"], "unknown model 'nonexistent'; known models: llmseg-tiny"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["-p", "  "], "prompts must not be empty or blank"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(small_npy, tmp_path, capsys, args, message):
    code = main(["segment", str(small_npy), "-p", "nuclei", "-o", str(tmp_path / "o.zarr"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("napari-llmseg: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()


def test_missing_input_and_existing_output(tmp_path, small_npy, capsys):
    assert (
        main(["segment", str(tmp_path / "missing.tif"), "-p", "x", "-o", str(tmp_path / "o.zarr")])
        == 2
    )
    assert "input path does not exist" in capsys.readouterr().err
    out = tmp_path / "o.zarr"
    assert main(["segment", str(small_npy), "-p", "nuclei", "-o", str(out), "--roi", "128"]) == 0
    capsys.readouterr()
    assert main(["segment", str(small_npy), "-p", "nuclei", "-o", str(out), "--roi", "128"]) == 2
    assert "already exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert (
        main(
            ["segment", str(small_npy), "-p", "nuclei", "-o", str(out), "--roi", "128", "--resume"]
        )
        == 0
    )


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "x.tif", "-o", "o.zarr"])  # no prompt
    assert exc.value.code == 2
    assert "the following arguments are required: -p/--prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["segment", "x.tif", "-p", "a", "-o", "o.zarr", "--cval", "lots"])
    assert exc.value.code == 2
    assert "argument --cval: invalid float value: 'lots'" in capsys.readouterr().err


def test_window_options_reach_the_run(small_npy, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    args = ["--roi", "128,-1", "--overlap", "0.5,0", "--sigma-scale", "0.25", "--cval", "-3"]
    code = main(["segment", str(small_npy), "-p", "nuclei", "-o", str(out), *args])
    assert code == 0, capsys.readouterr().err
    attrs = zarr.open_group(out, mode="r").attrs["napari_llmseg"]
    assert attrs["roi_size"] == [128, 256]  # -1: the image's extent
    assert attrs["overlap"] == [0.5, 0.0]
    assert attrs["sigma_scale"] == 0.25 and attrs["cval"] == -3.0


def test_models_lists_the_embedded_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["name", "default"]
    row = next(line for line in out if line.startswith("llmseg-tiny"))
    assert "embedded" in row and "yes" in row


def test_console_script_runs(tmp_path):
    exe = subprocess.run(
        [sys.executable, "-m", "napari_llmseg", "--version"], capture_output=True, text=True
    )
    assert exe.returncode == 0 and exe.stdout.startswith("napari-llmseg 0.")
