"""NIfTI and DICOM: lazy volumes with their voxel geometry, and NIfTI output with the same affine.

Axis order. A NIfTI file stores voxels ``(i, j, k)``; a DICOM series stores slices of
``(row, column)`` images. Both are presented as ``(Z, Y, X)`` = ``(k, j, i)`` (slice, row,
column), the order napari and the engine use, so a 2D model runs on the acquired slices.
Writing reverses the order again.

Geometry travels as JSON in ``ImageSource.metadata``:

``affine``
    4 x 4 voxel-to-world matrix in the NIfTI convention: voxel ``(i, j, k)`` (column, row,
    slice) to RAS+ millimetres. For NIfTI input it is the file's affine (sform, else qform),
    unchanged; for DICOM it is built from ImagePositionPatient, ImageOrientationPatient,
    PixelSpacing and the sorted slice positions (LPS turned into RAS).
``spacing``, ``scale``, ``units``
    Voxel size along (Z, Y, X) in ``units`` (mm), the lengths of the affine's columns.
``translate``
    When the affine is axis-aligned: napari translate of voxel (0, 0, 0); napari coordinates
    then equal world coordinates, up to the sign of flipped axes.
``modality``
    DICOM Modality (``"CT"``, ``"MR"``...), None for NIfTI.

DICOM pixel values are rescaled to Hounsfield units (or the modality's units) with each
slice's RescaleSlope and RescaleIntercept.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_path
from ._optional import require
from .source import ImageSource, LazyArray

#: NIfTI spatial unit codes (xyzt_units) -> short unit names; "unknown" is read as mm.
_NIFTI_UNITS = {"mm": "mm", "meter": "m", "micron": "um", "unknown": "mm"}

#: Relative tolerance on DICOM slice spacing before the series is called non-uniform.
SPACING_TOLERANCE = 0.01


def _nibabel(what: str) -> Any:
    return require("nibabel", "medical", what)


def _pydicom(what: str) -> Any:
    return require("pydicom", "medical", what)


def geometry_metadata(affine: np.ndarray, ndim: int) -> dict:
    """Spacing, scale and (axis-aligned affines only) translate in (Z, Y, X) order."""
    affine = np.asarray(affine, dtype=np.float64)
    lin = affine[:3, :ndim]
    spacing = [float(v) for v in np.linalg.norm(lin, axis=0)[::-1]]
    meta: dict[str, Any] = {"spacing": spacing, "scale": spacing}
    # Axis-aligned: the linear part is diagonal (voxel axis a runs along world axis a).
    if ndim == 3 and not np.any(lin - np.diag(np.diag(lin))):
        signs = np.sign(np.diag(lin))
        meta["translate"] = [float(v) for v in (signs * affine[:3, 3])[::-1]]
    return meta


def _check_affine(affine: np.ndarray, path: Path) -> None:
    det = float(np.linalg.det(affine[:3, :3])) if np.all(np.isfinite(affine)) else float("nan")
    if not np.isfinite(det) or abs(det) < 1e-12:
        rows = "; ".join(" ".join(f"{v:g}" for v in row) for row in np.asarray(affine))
        raise ValueError(
            f"'{path}' has a non-invertible affine (determinant {det:g}): [{rows}]; its "
            "voxel-to-world geometry is undefined, so labels could not be placed. Fix the "
            "header (e.g. its sform/qform) first"
        )


# --- NIfTI -------------------------------------------------------------------------------
class NiftiArray(LazyArray):
    """Lazy ``(Z, Y, X)`` = ``(k, j, i)`` view of a NIfTI image; slices read only what they need.

    Parameters
    ----------
    dataobj : nibabel ArrayProxy
        The image's ``dataobj`` (applies the header's scl_slope/scl_inter).
    shape_ijk : tuple of int
        Spatial shape in file order (2 or 3 axes).
    dtype : numpy dtype
        dtype of the values returned (float32 when the header scales them).
    trailing : int
        Number of trailing length-1 axes (time) indexed away.
    """

    def __init__(self, dataobj: Any, shape_ijk: tuple[int, ...], dtype: Any, trailing: int = 0):
        self.dataobj = dataobj
        self.shape = tuple(int(s) for s in shape_ijk[::-1])
        self.dtype = np.dtype(dtype)
        self.trailing = trailing
        self.chunks = (1, *self.shape[1:]) if len(self.shape) == 3 else self.shape

    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        file_key = tuple(reversed(key)) + (0,) * self.trailing
        out = np.asarray(self.dataobj[file_key])
        return np.ascontiguousarray(out.transpose()).astype(self.dtype, copy=False)


def open_nifti(path: str | Path) -> ImageSource:
    """Open a ``.nii``/``.nii.gz`` image lazily as a (Z, Y, X) source with its geometry.

    Raises
    ------
    ValueError
        If the file is not NIfTI, has more than one volume (4D with time > 1), or its
        affine is not invertible.
    """
    nib = _nibabel("reading NIfTI")
    path = Path(path)
    try:
        img = nib.load(path, keep_file_open=True)
    except Exception as err:  # nibabel raises ImageFileError, HeaderDataError, OSError...
        raise ValueError(f"'{path}' is not a readable NIfTI file: {err}") from err
    shape = tuple(int(s) for s in img.shape)
    spatial = shape[:3]
    extra = shape[3:]
    if len(shape) < 2 or any(s != 1 for s in extra):
        raise ValueError(
            f"'{path}' has shape {shape}; expected one 2D or 3D volume (a 4th axis of length "
            "1 at most). Segment one volume at a time, e.g. split it with fslsplit"
        )
    if any(s < 1 for s in shape):
        raise ValueError(
            f"'{path}' declares shape {shape} with an empty axis; every axis needs at least "
            "one voxel"
        )
    _check_data_size(img, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(affine, path)
    hdr = img.header
    slope, inter = img.dataobj.slope, img.dataobj.inter
    scaled = not (slope == 1 and inter == 0)
    dtype = np.dtype(np.float32) if scaled else np.dtype(img.get_data_dtype()).newbyteorder("=")
    if dtype.kind not in "biuf":
        raise TypeError(f"'{path}' holds {dtype} voxels; expected an integer or float image")
    array = NiftiArray(img.dataobj, spatial, dtype, trailing=len(extra))
    unit = _NIFTI_UNITS.get(hdr.get_xyzt_units()[0], hdr.get_xyzt_units()[0])
    meta: dict[str, Any] = {
        "source": str(path),
        "format": "nifti",
        "affine": affine.tolist(),
        "units": [unit] * len(spatial),
        "axes": "ZYX"[3 - len(spatial) :],
        "modality": None,
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        "shape_ijk": list(spatial),
    }
    meta.update(geometry_metadata(affine, len(spatial)))
    return ImageSource(array, None, name=str(path), path=path, metadata=meta)


def _check_data_size(img: Any, path: Path) -> None:
    """Refuse a header whose shape needs more bytes than the file holds (a truncated file, or
    a damaged header declaring billions of voxels), before anything is allocated.

    An uncompressed file is compared with its size on disk; a ``.nii.gz`` with the
    uncompressed size its gzip trailer records (modulo 2^32).
    """
    import gzip

    hdr = img.header
    itemsize = np.dtype(img.get_data_dtype()).itemsize
    offset = int(getattr(img.dataobj, "offset", 0) or hdr.get_data_offset())
    needed = offset + math.prod(int(s) for s in img.shape) * itemsize
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, 2)
            recorded = int.from_bytes(f.read(4), "little")
        if needed % (1 << 32) != recorded:
            with gzip.open(path) as g:  # the trailer only knows size mod 2^32: count if unsure
                actual = g.seek(0, 2) if needed < (1 << 32) else None
            if actual is None or actual < needed:
                raise ValueError(
                    f"'{path}' declares shape {tuple(img.shape)} ({needed:,} bytes with its "
                    "header) but holds less data; the file is truncated or its header damaged"
                )
    elif path.stat().st_size < needed:
        raise ValueError(
            f"'{path}' declares shape {tuple(img.shape)} ({needed:,} bytes with its header) "
            f"but holds only {path.stat().st_size:,} bytes; the file is truncated or its "
            "header damaged"
        )


# --- DICOM -------------------------------------------------------------------------------
class DicomSeriesArray(LazyArray):
    """Lazy ``(Z, Y, X)`` DICOM series: each slice file is decoded when first needed.

    Values are rescaled (``stored * RescaleSlope + RescaleIntercept``, per slice). The last
    few decoded slices are kept, since the engine reads a slice in several bands of rows.
    """

    cache_slices = 4

    def __init__(
        self,
        files: Sequence[Path],
        shape: tuple[int, int, int],
        dtype: Any,
        rescale: Sequence[tuple[float, float]],
    ) -> None:
        self.files = [Path(f) for f in files]
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.rescale = list(rescale)
        self.chunks = (1, *self.shape[1:])
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DicomSeriesArray({len(self.files)} slices, shape={self.shape}, {self.dtype})"

    def _slice(self, z: int) -> np.ndarray:
        with self._lock:
            if z in self._cache:
                self._cache.move_to_end(z)
                return self._cache[z]
        pydicom = _pydicom("reading DICOM")
        ds = pydicom.dcmread(self.files[z])
        try:
            stored = ds.pixel_array
        except Exception as err:  # missing pixel handlers for compressed transfer syntaxes
            raise ValueError(
                f"cannot decode the pixels of '{self.files[z]}' "
                f"(transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}): "
                + " ".join(str(err).split())  # one line
            ) from err
        slope, inter = self.rescale[z]
        if self.dtype.kind == "f":
            plane = (stored.astype(np.float64) * slope + inter).astype(self.dtype)
        else:
            plane = (stored.astype(np.int64) * int(slope) + int(inter)).astype(self.dtype)
        with self._lock:
            self._cache[z] = plane
            while len(self._cache) > self.cache_slices:
                self._cache.popitem(last=False)
        return plane

    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        kz, ky, kx = key
        if isinstance(kz, (int, np.integer)):
            return self._slice(range(self.shape[0])[int(kz)])[ky, kx]
        zs = range(self.shape[0])[kz]
        if len(zs) == 0:
            probe = np.zeros(self.shape[1:], self.dtype)[ky, kx]
            return np.zeros((0, *probe.shape), self.dtype)
        return np.stack([self._slice(z)[ky, kx] for z in zs])


def _floats(value: Any, n: int, what: str, path: Path) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != (n,):
        raise ValueError(f"'{path}' has no valid {what} (got {value!r}); expected {n} numbers")
    return out


def _read_headers(folder: Path) -> tuple[list[tuple[Path, Any]], int]:
    pydicom = _pydicom("reading DICOM")
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not DICOM (a README, a thumbnail...)
        if "Rows" not in ds or "SeriesInstanceUID" not in ds:
            continue  # DICOMDIR, structured reports, presentation states...
        headers.append((f, ds))
    return headers, len(files)


def open_dicom_series(folder: str | Path) -> ImageSource:
    """Open a folder holding one DICOM series as a lazy (Z, Y, X) volume in rescaled units.

    Slices are sorted by their position along the slice normal (not by InstanceNumber); the
    slice spacing comes from those positions, the in-plane spacing from PixelSpacing.

    Raises
    ------
    ValueError
        If the folder holds no DICOM images, more than one series (the message lists them),
        slices with different sizes or orientations, two slices at one position, or
        non-uniform slice spacing; or for colour or multi-frame images.
    """
    folder = Path(folder)
    headers, n_files = _read_headers(folder)
    if not headers:
        raise ValueError(
            f"'{folder}' holds no DICOM image files ({n_files} files looked at); expected a "
            "folder holding one DICOM series (or a .zarr, .tif, .npy, .nii file)"
        )
    series: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in headers:
        series.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    if len(series) > 1:
        listing = "; ".join(
            f"{uid} ({items[0][1].get('Modality', '?')} "
            f"'{items[0][1].get('SeriesDescription', '')}', {len(items)} files)"
            for uid, items in sorted(series.items())
        )
        raise ValueError(
            f"'{folder}' mixes {len(series)} DICOM series: {listing}; put each series in its "
            "own folder and open one"
        )
    items = next(iter(series.values()))
    first_path, first = items[0]
    for f, ds in items:
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise ValueError(f"'{f}' is a colour DICOM image; only grayscale series are read")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"'{f}' is a multi-frame DICOM file; only one slice per file is read")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise ValueError(
                f"slices of '{folder}' differ in size: '{first_path.name}' is "
                f"{first.Rows} x {first.Columns}, '{f.name}' is {ds.Rows} x {ds.Columns}"
            )
    orientation = _floats(
        first.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", first_path
    )
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = []
    for f, ds in items:
        o = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", f)
        if not np.allclose(o, orientation, atol=1e-4):
            raise ValueError(
                f"slices of '{folder}' have different orientations ('{first_path.name}': "
                f"{orientation.tolist()}, '{f.name}': {o.tolist()}); expected one stack"
            )
        positions.append(_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", f))
    along = np.array([float(p @ normal) for p in positions])
    order = np.argsort(along, kind="stable")
    items = [items[i] for i in order]
    positions = [positions[i] for i in order]
    along = along[order]
    row_spacing, col_spacing = _floats(first.get("PixelSpacing"), 2, "PixelSpacing", first_path)
    if len(items) > 1:
        gaps = np.diff(along)
        if np.any(gaps < 1e-4):
            i = int(np.argmin(gaps))
            raise ValueError(
                f"'{items[i][0].name}' and '{items[i + 1][0].name}' in '{folder}' lie at the "
                f"same position ({along[i]:.4g} mm along the slice normal); expected one slice "
                "per position (a multi-echo or multi-phase series?)"
            )
        slice_spacing = float(np.median(gaps))
        if np.max(np.abs(gaps - slice_spacing)) > SPACING_TOLERANCE * slice_spacing + 1e-3:
            raise ValueError(
                f"slice spacing in '{folder}' is not uniform ({gaps.min():.4g} to "
                f"{gaps.max():.4g} mm); a slice may be missing"
            )
        step = (positions[-1] - positions[0]) / (len(items) - 1)
    else:
        slice_spacing = float(
            first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None) or 1.0
        )
        step = normal * slice_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i: along a row (increasing column)
    lps[:3, 1] = col_dir * row_spacing  # j: down a column (increasing row)
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    _check_affine(affine, folder)
    rescale = [
        (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
        for _, ds in items
    ]
    dtype = _dicom_dtype(first, rescale)
    array = DicomSeriesArray(
        [f for f, _ in items], (len(items), int(first.Rows), int(first.Columns)), dtype, rescale
    )
    modality = str(first.get("Modality", "")) or None
    meta: dict[str, Any] = {
        "source": str(folder),
        "format": "dicom",
        "affine": affine.tolist(),
        "units": ["mm", "mm", "mm"],
        "axes": "ZYX",
        "modality": modality,
        "series_uid": str(first.SeriesInstanceUID),
        "series_description": str(first.get("SeriesDescription", "")),
        "n_slices": len(items),
        "value_units": "HU" if modality == "CT" else None,
    }
    meta.update(geometry_metadata(affine, 3))
    return ImageSource(array, None, name=str(folder), path=folder, metadata=meta)


def _dicom_dtype(ds: Any, rescale: Sequence[tuple[float, float]]) -> np.dtype:
    """Smallest of int16/int32 that holds every rescaled value, else float32."""
    if not all(float(s).is_integer() and float(i).is_integer() for s, i in rescale):
        return np.dtype(np.float32)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = [v * s + i for s, i in rescale for v in (lo, hi)]
    for dt in (np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= min(ends) and max(ends) <= info.max:
            return np.dtype(dt)
    return np.dtype(np.float32)


# --- writing -----------------------------------------------------------------------------
#: Header fields that carry a NIfTI image's geometry; copied from the input when it is NIfTI.
GEOMETRY_FIELDS = (
    "pixdim",
    "xyzt_units",
    "dim_info",
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "slice_start",
    "slice_end",
    "slice_code",
    "slice_duration",
)


def write_nifti(
    path: str | Path,
    data: Any,
    *,
    affine: Sequence[Sequence[float]],
    template: str | Path | None = None,
    intent: str = "none",
    descrip: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a (Z, Y, X) or (P, Z, Y, X) array as NIfTI, slice by slice.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz``; written under a temporary name and renamed when complete.
    data : (Z, Y, X) or (P, Z, Y, X) array-like
        In the engine's order (``(k, j, i)``); stored as ``(i, j, k[, p])``.
    affine : 4 x 4 nested sequence
        Voxel (i, j, k) -> world (RAS+ mm); written as sform and qform (code 1, scanner)
        unless ``template`` is given.
    template : str or Path, optional
        A NIfTI file whose header geometry (qform, sform and their codes, pixdim, units,
        slice information) is copied exactly.
    intent : str
        NIfTI intent, ``"label"`` for label maps.
    descrip : str
        Header description (80 characters at most are kept).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
    """
    nib = _nibabel("writing NIfTI")
    from nibabel.openers import ImageOpener

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"a NIfTI output must end in .nii or .nii.gz, got '{path.name}'")
    shape = tuple(int(s) for s in data.shape)
    if len(shape) not in (2, 3, 4):
        raise ValueError(f"expected (Z, Y, X) or (P, Z, Y, X) data, got shape {shape}")
    spatial = shape[-3:] if len(shape) >= 3 else shape
    n_vol = shape[0] if len(shape) == 4 else 1
    affine_arr = np.asarray(affine, dtype=np.float64)
    if template is not None:
        src = nib.load(template).header
        hdr = type(src)()
    else:
        src = None
        hdr = nib.Nifti1Header()
    file_shape = tuple(reversed(spatial)) + ((n_vol,) if len(shape) == 4 else ())
    hdr.set_data_shape(file_shape)
    hdr.set_data_dtype(np.dtype(data.dtype))
    if src is not None:
        for key in GEOMETRY_FIELDS:
            hdr[key] = src[key]
        if len(shape) == 4:
            hdr["pixdim"][4] = 1.0
    else:
        hdr.set_qform(affine_arr, code=1)
        hdr.set_sform(affine_arr, code=1)
        hdr.set_xyzt_units("mm")
    hdr["magic"] = hdr.single_magic
    hdr.set_slope_inter(None, None)  # stored values are the values
    if intent != "none":
        hdr.set_intent(intent)
    hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
    disk = hdr.get_data_dtype()
    with atomic_path(path, overwrite=overwrite) as tmp:
        with ImageOpener(str(tmp), "wb") as f:
            hdr.write_to(f)
            f.write(b"\0" * (hdr.get_data_offset() - f.tell()))
            # (k, j, i) C order is NIfTI's (i, j, k) Fortran order: write plane by plane.
            for p in range(n_vol):
                lead: tuple[int, ...] = (p,) if len(shape) == 4 else ()
                if len(spatial) == 2:
                    plane = data[(*lead, slice(None), slice(None))]
                    f.write(np.asarray(plane).astype(disk).tobytes(order="C"))
                    continue
                for k in range(spatial[0]):
                    f.write(np.asarray(data[(*lead, k)]).astype(disk).tobytes(order="C"))
    return path


def label_description(label_names: Mapping[int, str]) -> str:
    """``"napari-llmseg labels: 1=bone 2=brain"`` for the NIfTI descrip field."""
    return "napari-llmseg labels: " + " ".join(f"{i}={n}" for i, n in label_names.items())


def _label_names_from_descrip(descrip: str) -> dict[int, str]:
    import re

    prefix = "napari-llmseg labels: "
    if not descrip.startswith(prefix):
        return {}
    pairs = re.findall(r"(\d+)=(.*?)(?= \d+=|$)", descrip[len(prefix) :])
    return {int(i): n for i, n in pairs}


def label_names_in(path: str | Path) -> dict[int, str] | None:
    """For a NIfTI label map (intent "label"): the label names napari-llmseg wrote into its
    header description ({} when there are none); None for any other image."""
    nib = _nibabel("reading NIfTI")
    hdr = nib.load(path).header
    if hdr.get_intent()[0] != "label":
        return None
    return _label_names_from_descrip(hdr["descrip"].item().decode("ascii", "replace"))
