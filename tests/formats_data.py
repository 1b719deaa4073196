"""Real geospatial and medical test data (see ../shared/DATA.md), and small builders.

Nothing here is copied into the repository: the Landsat tile is bundled sample data
(Apache-2.0), the MRI and the head CT are read from their Debian packages (mricron-data,
invesalius-examples; the CT is GPL-2 and stays there), the DICOM files come from pydicom.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

LANDSAT = ROOT / "sample_data" / "landsat7_etm.tif"
MRI_T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")
MRI_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
HEAD_CT = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")

#: Landsat-7 band order in the tile: bands 1, 2, 3, 4, 5, 7.
LANDSAT_DESCRIPTIONS = ("blue", "green", "red", "nir", "swir1", "swir2")


def need(path: Path, package: str) -> Path:
    """Skip with the install command when a Debian data package is missing."""
    if not path.exists():
        pytest.skip(f"{path} missing: apt-get install -y {package} (make system-deps)")
    return path


def ndwi_model(x, prompts):
    """Logits of 'water' from raw Landsat bands: NDWI = (B2 - B4) / (B2 + B4) > 0.3."""
    import torch

    b2, b4 = x[:, 1], x[:, 3]
    ndwi = (b2 - b4) / torch.clamp(b2 + b4, min=1e-6)
    return ((ndwi - 0.3) * 200.0)[:, None].repeat(1, len(prompts), 1, 1)


def ndwi_mask(bands: np.ndarray) -> np.ndarray:
    """(Y, X, 6) Landsat bands -> the NDWI > 0.3 water mask, computed as the model does."""
    b2, b4 = bands[..., 1].astype(np.float32), bands[..., 3].astype(np.float32)
    return (b2 - b4) / np.maximum(b2 + b4, np.float32(1e-6)) > 0.3


@lru_cache(maxsize=1)
def head_ct() -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, np.ndarray]:
    """The invesalius head CT: (volume (Z, Y, X) int16 HU, spacing (Z, Y, X) mm, bone mask,
    soft tissue + bone mask), read in place from the installed Debian package."""
    from napari_llmseg.training.data import cranium

    need(HEAD_CT, "invesalius-examples")
    return cranium()


def write_nifti_volume(path: Path, volume: np.ndarray, spacing_zyx, origin=(0.0, 0.0, 0.0)):
    """Save a (Z, Y, X) array as NIfTI (i, j, k) with an axis-aligned affine."""
    import nibabel as nib

    affine = np.diag([*reversed([float(s) for s in spacing_zyx]), 1.0])
    affine[:3, 3] = origin
    img = nib.Nifti1Image(np.ascontiguousarray(volume.transpose()), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def dicom_series(
    folder: Path,
    *,
    n: int = 5,
    spacing: float = 2.5,
    template: str = "CT_small.dcm",
    order=None,
    series_uid: str | None = None,
    slope: float | None = None,
    intercept: float | None = None,
) -> list[np.ndarray]:
    """Write ``n`` slices built from a pydicom test file into ``folder``.

    Slice k lies ``k * spacing`` mm along the normal, holds the template's stored pixels
    plus ``10 * k``, and is written in the file order ``order`` (default: reversed) with
    InstanceNumber following the file order, so that only the positions give the true
    order. Returns the stored pixel arrays by position.
    """
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    base = dcmread(get_testdata_file(template))
    uid = series_uid or generate_uid()
    order = list(order) if order is not None else list(reversed(range(n)))
    stored = []
    ipp0 = np.array([float(v) for v in base.ImagePositionPatient])
    for k in range(n):
        stored.append(base.pixel_array.astype(np.int16) + np.int16(10 * k))
    for file_index, k in enumerate(order):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = file_index + 1
        ds.ImagePositionPatient = [float(v) for v in ipp0 + np.array([0.0, 0.0, spacing * k])]
        ds.SliceLocation = float(ipp0[2] + spacing * k)
        ds.PixelData = stored[k].tobytes()
        if slope is not None:
            ds.RescaleSlope = slope
        if intercept is not None:
            ds.RescaleIntercept = intercept
        ds.save_as(folder / f"IM{file_index:04d}.dcm")
    return stored


# --- GDAL's own tools (Debian gdal-bin and python3-gdal, installed by `make system-deps`) ---
#: The system Python of Debian, with GDAL's Python bindings and utilities (python3-gdal).
GDAL_PYTHON = Path("/usr/bin/python3")
COG_VALIDATOR = "osgeo_utils.samples.validate_cloud_optimized_geotiff"


def _clean_env() -> dict:
    """The environment without our venv's Python settings, for Debian's own Python."""
    import os

    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def validate_cog(path: Path) -> tuple[bool, str]:
    """Run GDAL's validate_cloud_optimized_geotiff.py (the script GDAL ships, from Debian's
    python3-gdal) on ``path`` with --full-check=yes -> (valid, its report)."""
    import subprocess

    probe = subprocess.run(
        [str(GDAL_PYTHON), "-c", f"import {COG_VALIDATOR}"], capture_output=True,
        env=_clean_env(),
    )  # fmt: skip
    if not GDAL_PYTHON.exists() or probe.returncode != 0:
        pytest.skip("GDAL's COG validator missing: apt-get install -y python3-gdal "
                    "(make system-deps)")  # fmt: skip
    done = subprocess.run(
        [str(GDAL_PYTHON), "-m", COG_VALIDATOR, "--full-check=yes", str(path)],
        capture_output=True, text=True, env=_clean_env(),
    )  # fmt: skip
    return done.returncode == 0, done.stdout + done.stderr


def gdalinfo_json(path: Path) -> dict:
    """``gdalinfo -json`` of ``path`` (Debian's gdal-bin: a GDAL other than rasterio's)."""
    import json
    import shutil
    import subprocess

    exe = shutil.which("gdalinfo")
    if exe is None:
        pytest.skip("gdalinfo missing: apt-get install -y gdal-bin (make system-deps)")
    done = subprocess.run([exe, "-json", str(path)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)
