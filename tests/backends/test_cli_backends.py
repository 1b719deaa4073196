from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from napari_llmseg.backends.clipseg import DEFAULT_ID as CLIPSEG_ID
from napari_llmseg.cli import main

from .conftest import put_in_cache

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_npy(tmp_path, nuclei_plane):
    path = tmp_path / "plane.npy"
    np.save(path, nuclei_plane)
    return path


def test_models_lists_every_backend(hf_cache, clipseg_dir, capsys):
    put_in_cache(hf_cache, *CLIPSEG_ID.split("@"), folder=clipseg_dir)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:2] == ["name", "default"] and "instances" in header
    table = lines[1 : lines.index("")]  # then what each model knows
    rows = {line.split()[0]: line.split()[1:4] for line in table}
    assert rows == {
        "llmseg-tiny": ["embedded", "no", "yes"],
        "clipseg": [CLIPSEG_ID, "no", "yes"],
        "sam3": ["facebook/sam3", "yes", "no"],
        "llmseg-taught": ["FOLDER", "no", "yes"],
        "grounded-sam": ["IDEA-Research/grounding-dino-tiny+facebook/sam-vit-base", "yes", "no"],
        "monai": ["monai:NAME", "no", "no"],
    }
    knows = lines[lines.index("") + 1 :]
    assert "monai knows: the bundle's classes (napari-llmseg models BUNDLE lists them)" in knows
    assert knows[0] == "llmseg-tiny knows: bone, brain, nuclei, soft tissue, vegetation, water"
    assert "llmseg-taught knows: what its folder's config.json lists under concepts" in knows


@pytest.mark.parametrize("kind", ["clipseg", "sam3", "grounded-sam"])
def test_segment_with_a_foundation_model_folder(
    kind, small_npy, tmp_path, capsys, clipseg_dir, sam3_dir, grounded_dir
):
    folder = {"clipseg": clipseg_dir, "sam3": sam3_dir, "grounded-sam": grounded_dir}[kind]
    out = tmp_path / "out.zarr"
    code = main(
        [
            "segment",
            str(small_npy),
            "-p",
            "nuclei",
            "-p",
            "water",
            "-o",
            str(out),
            "--model",
            f"{kind}:{folder}",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines()[0] == f"wrote {out}"
    group = zarr.open_group(out, mode="r")
    assert group["0"].shape == (2, 160, 150)
    attrs = group.attrs["napari_llmseg"]
    assert attrs["model"]["name"] == kind and attrs["status"] == "complete"
    assert attrs["batch_size_used"] == 4


def test_offline_error_exits_2_quickly_with_the_remedy(tmp_path, small_npy):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_llmseg",
            "segment",
            str(small_npy),
            "-p",
            "nuclei",
            "-o",
            str(tmp_path / "o.zarr"),
            "--model",
            "clipseg:nobody/nothing",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert time.perf_counter() - t0 < 60
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("napari-llmseg: error: cannot load the clipseg weights 'nobody/nothing'")
    assert f"cache '{tmp_path / 'empty-cache'}'" in err
    assert "`hf download nobody/nothing --local-dir DIR`" in err
    assert "--model clipseg:DIR" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.zarr").exists()


def test_lowered_batch_size_is_reported(small_npy, tmp_path, capsys, clipseg_dir, monkeypatch):
    import torch

    from napari_llmseg.backends import clipseg as clipseg_module

    original = clipseg_module.CLIPSegBackend._logits

    def tight_memory(self, pixels, encoded):
        if pixels.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return original(self, pixels, encoded)

    monkeypatch.setattr(clipseg_module.CLIPSegBackend, "_logits", tight_memory)
    out = tmp_path / "out.zarr"
    args = ["segment", str(small_npy), "-p", "nuclei", "-o", str(out), "--quiet"]
    assert main([*args, "--model", f"clipseg:{clipseg_dir}", "--batch", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == (
        "note: GPU memory ran out with --batch 4; the run finished with 1 windows at once"
    )
    assert zarr.open_group(out, mode="r").attrs["napari_llmseg"]["batch_size_used"] == 1
