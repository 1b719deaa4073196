"""NIfTI and DICOM input, NIfTI output, CT windows and physical measurements, on real data."""

from __future__ import annotations

import shutil
import sys

import nibabel as nib
import numpy as np
import pytest
import zarr

from napari_llmseg import open_image, segment
from napari_llmseg.backends.base import PromptSegmenter
from napari_llmseg.engine.normalize import WINDOW_PRESETS, IntensityStats, parse_window
from napari_llmseg.io._optional import MissingExtraError
from napari_llmseg.io.medical import DicomSeriesArray, NiftiArray, write_nifti
from napari_llmseg.measure import format_number, measure, report
from tests.conftest import threshold_model
from tests.formats_data import (
    MRI_BRAIN,
    MRI_T1,
    dicom_series,
    head_ct,
    need,
    write_nifti_volume,
)


@pytest.fixture(scope="module")
def t1():
    return need(MRI_T1, "mricron-data")


class WindowThreshold(PromptSegmenter):
    """A backend that labels pixels whose normalised value exceeds ``t`` (like tiny's
    preprocess, it normalises with the run's IntensityStats)."""

    name = "window-threshold"

    def __init__(self, t: float) -> None:
        self.t = t
        self.seen: list[IntensityStats] = []

    def encode_prompts(self, prompts):
        return len(prompts)

    def preprocess(self, windows, stats):
        self.seen.append(stats)
        offset, inv = stats.scale()
        return (windows - offset.reshape(1, -1, 1, 1)) * inv.reshape(1, -1, 1, 1)

    def predict(self, batch, encoded):
        return np.repeat((batch[:, :1] - self.t) * 1000.0, encoded, axis=1).astype(np.float32)


# --- NIfTI ---------------------------------------------------------------------------------
def test_t1_mri_opens_lazily_as_zyx_with_its_geometry(t1):
    img = nib.load(t1)
    s = open_image(t1)
    assert isinstance(s.array, NiftiArray)
    assert s.spatial_shape == (181, 217, 181) and s.dtype == np.uint8 and s.n_channels == 1
    assert np.array_equal(np.asarray(s.metadata["affine"]), img.affine)
    assert s.metadata["spacing"] == [1.0, 1.0, 1.0] and s.metadata["units"] == ["mm"] * 3
    assert s.metadata["translate"] == [-71.0, -125.0, -90.0]  # (k, j, i) origin, mm
    assert s.metadata["sform_code"] == 4 and s.metadata["format"] == "nifti"
    full = np.asarray(img.dataobj)  # (i, j, k)
    block = s.read((slice(90, 93), slice(100, 140), slice(None)))[..., 0]
    np.testing.assert_array_equal(block, full[:, 100:140, 90:93].transpose())
    assert s.array[5, 7, 9] == full[9, 7, 5]


def test_labels_nifti_keeps_the_affine_and_header_geometry_exactly(tmp_path, t1):
    src = nib.load(t1)
    vol = np.asarray(src.dataobj)[:, :, 80:88]  # a slab keeps the test fast
    slab = nib.Nifti1Image(vol, src.affine, src.header)
    slab.header.set_qform(src.affine @ np.diag([1, 1, 1, 1]), code=2)  # exercise both forms
    nib.save(slab, tmp_path / "slab.nii.gz")
    t1_slab = nib.load(tmp_path / "slab.nii.gz")
    out = tmp_path / "bright.nii.gz"
    res = segment(tmp_path / "slab.nii.gz", "bright", model=lambda x, p: (x - 100) / 10.0,
                  out=out, probabilities=True)  # fmt: skip
    assert res.files == [out, tmp_path / "bright_probabilities.nii.gz",
                         tmp_path / "bright_report.html"]  # fmt: skip
    lab = nib.load(out)
    assert np.array_equal(lab.affine, t1_slab.affine)
    for form in ("get_qform", "get_sform"):
        a, code_a = getattr(lab.header, form)(coded=True)
        b, code_b = getattr(t1_slab.header, form)(coded=True)
        assert code_a == code_b and np.array_equal(a, b)
    assert lab.header.get_zooms() == t1_slab.header.get_zooms()
    assert lab.header.get_xyzt_units() == t1_slab.header.get_xyzt_units()
    assert lab.shape == t1_slab.shape and lab.get_data_dtype() == np.uint8
    assert lab.header.get_intent()[0] == "label"
    assert lab.header["descrip"].item() == b"napari-llmseg labels: 1=bright"
    data = np.asarray(lab.dataobj)
    np.testing.assert_array_equal(data, np.asarray(res.labels).transpose())
    np.testing.assert_array_equal(data == 1, vol > 100)
    probs = nib.load(tmp_path / "bright_probabilities.nii.gz")
    assert probs.shape == (*t1_slab.shape, 1) and np.array_equal(probs.affine, t1_slab.affine)
    np.testing.assert_array_equal(
        np.asarray(probs.dataobj)[..., 0], np.asarray(res.probabilities[0]).transpose()
    )


def test_brain_volume_in_mm3_and_ml(tmp_path):
    brain = nib.load(need(MRI_BRAIN, "mricron-data"))
    res = segment(MRI_BRAIN, "brain", model=lambda x, p: (x - 0.5) * 20.0, roi_size=256,
                  out=tmp_path / "brain.zarr")  # fmt: skip
    n = int((np.asarray(brain.dataobj) > 0).sum())
    assert int((np.asarray(res.labels) == 1).sum()) == n
    (line,) = res.summary()
    assert line.startswith(
        f"brain: {n:,} voxels ({100 * n / brain.get_fdata().size:.2f} % of the volume) = "
        f"{format_number(n / 1000)} mL, "
    )
    assert 1100 < n / 1000 < 1900  # an adult brain with the CSF that ch2bet keeps, ~1.7 L
    meta = res.metadata["source_metadata"]
    (m,) = measure(res.labels, res.label_names, scale=meta["scale"], units=meta["units"])
    assert m.unit == "mm^3" and m.size == n
    assert f" = {format_number(n / 1000)} mL," in report([m])


def test_scaled_and_4d_nifti(tmp_path, rng):
    data = rng.integers(0, 100, size=(12, 10, 3, 1)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0]))
    img.header.set_slope_inter(2.0, -10.0)
    nib.save(img, tmp_path / "s.nii")
    s = open_image(tmp_path / "s.nii")
    assert s.dtype == np.float32 and s.spatial_shape == (3, 10, 12)
    np.testing.assert_array_equal(s.read((slice(None),) * 3)[..., 0], data[..., 0].T * 2.0 - 10)
    assert s.metadata["spacing"] == [2.0, 0.5, 0.5]
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.uint8), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(ValueError, match=r"'.*t.nii' has shape \(4, 4, 4, 2\); expected one "
                       r"2D or 3D volume .* Segment one volume at a time"):  # fmt: skip
        open_image(tmp_path / "t.nii")


def test_non_invertible_affine_is_refused_and_nothing_is_written(tmp_path):
    img = nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4))
    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    img.header.set_sform(singular, code=2)
    img.set_sform(singular, code=2)
    nib.save(img, tmp_path / "flat.nii.gz")
    with pytest.raises(ValueError, match=r"'.*flat.nii.gz' has a non-invertible affine "
                       r"\(determinant 0\): \[1 0 0 0; 0 1 0 0; 0 0 0 0; 0 0 0 1\]"):  # fmt: skip
        segment(tmp_path / "flat.nii.gz", "x", model=threshold_model, out=tmp_path / "o.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.nii.gz"]


def test_not_a_nifti(tmp_path):
    (tmp_path / "bad.nii").write_bytes(b"not a nifti at all" * 40)
    with pytest.raises(ValueError, match=r"'.*bad.nii' is not a readable NIfTI file"):
        open_image(tmp_path / "bad.nii")
    with pytest.raises(ValueError, match="channel_axis= does not apply to NIfTI or DICOM"):
        open_image(tmp_path / "bad.nii", channel_axis=0)


def test_nifti_output_from_inputs_without_an_affine_warns(tmp_path, rng):
    vol = rng.uniform(0, 1, (2, 32, 32)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"no voxel-to-world affine; '.*v.nii' is written with "
                      r"voxel sizes \[1.0, 1.0, 1.0\]"):  # fmt: skip
        segment(vol, "x", model=threshold_model, roi_size=32, out=tmp_path / "v.nii")
    img = nib.load(tmp_path / "v.nii")
    assert img.shape == (32, 32, 2) and np.array_equal(img.affine, np.eye(4))
    with pytest.raises(ValueError, match=r"a NIfTI output must end in \.nii or \.nii\.gz"):
        write_nifti(tmp_path / "x.img", vol, affine=np.eye(4))


def test_missing_nibabel_names_the_medical_extra(monkeypatch, t1):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(MissingExtraError, match=r"reading NIfTI needs the optional package "
                       r"'nibabel'.*pip install 'napari-llmseg\[medical\]'"):  # fmt: skip
        open_image(t1)


# --- CT: windows on the real head CT ------------------------------------------------------
def test_parse_window_presets_and_errors():
    assert parse_window("bone") == (400.0, 1800.0)
    assert parse_window(" Soft-Tissue ") == (40.0, 400.0)
    assert parse_window("-600,1500") == (-600.0, 1500.0) == parse_window((-600, 1500))
    assert set(WINDOW_PRESETS) == {"bone", "soft-tissue", "lung", "brain"}
    assert WINDOW_PRESETS["lung"] == (-600.0, 1500.0) and WINDOW_PRESETS["brain"] == (40.0, 80.0)
    with pytest.raises(ValueError, match=r"window must be a preset \(bone, soft-tissue, lung, "
                       r"brain\) or 'LEVEL,WIDTH' in HU, got 'liver'"):  # fmt: skip
        parse_window("liver")
    with pytest.raises(ValueError, match=r"window must be a preset .* or \(level, width\) in HU"):
        parse_window((1, 2, 3))
    with pytest.raises(ValueError, match=r"window width must be a positive number .* width=0"):
        parse_window("40,0")


def test_bone_window_on_the_head_ct_matches_the_bone_mask_and_its_volume(tmp_path):
    volume, spacing, bone, _ = head_ct()
    path = write_nifti_volume(tmp_path / "head.nii.gz", volume, spacing)
    level, width = WINDOW_PRESETS["bone"]
    low, high = level - width / 2, level + width / 2
    backend = WindowThreshold((225.5 - low) / (high - low))  # bone: HU >= 226
    res = segment(path, "bone", model=backend, window="bone", out=tmp_path / "bone.nii.gz")
    assert res.stats.low == (-500.0,) and res.stats.high == (1300.0,)
    assert res.stats.window == (400.0, 1800.0)
    assert all(s == res.stats for s in backend.seen)  # every batch normalised by the window
    labels = np.asarray(res.labels) == 1
    np.testing.assert_array_equal(labels, bone)  # invesalius' bone mask is 226..3071 HU
    attrs = zarr.open_group(res.out, mode="r").attrs["napari_llmseg"]
    assert attrs["window"] == [400.0, 1800.0] and attrs["stats"]["window"] == [400.0, 1800.0]
    voxel_mm3 = spacing[0] * spacing[1] * spacing[2]
    ml = bone.sum() * voxel_mm3 / 1000
    (line,) = res.summary()
    assert f" = {format_number(ml)} mL, " in line
    assert 300 < ml < 900  # an adult skull, roughly 0.5 L of bone
    out = nib.load(tmp_path / "bone.nii.gz")
    assert np.array_equal(out.affine, nib.load(path).affine)
    assert out.header.get_zooms() == pytest.approx((spacing[2], spacing[1], spacing[0]))
    # Resume must run with the same window.
    with pytest.raises(ValueError, match=r"started with window=\[400.0, 1800.0\], this run has "
                       r"window=\[40.0, 400.0\]"):  # fmt: skip
        segment(path, "bone", model=backend, window="soft-tissue", out=tmp_path / "bone.nii.gz",
                resume=True)  # fmt: skip


def test_window_needs_a_backend_and_warns_off_ct(tmp_path):
    with pytest.raises(ValueError, match="window= sets the intensity range a model backend "
                       "normalises with; a callable model gets raw pixels"):  # fmt: skip
        segment(np.zeros((32, 32), np.float32), "x", model=threshold_model, window="bone")
    dicom_series(tmp_path / "mr", n=2, template="MR_small.dcm")
    with pytest.warns(UserWarning, match=r"window= \(level 40, width 80\) is in Hounsfield "
                      r"units \(CT\), but the input's modality is MR"):  # fmt: skip
        segment(tmp_path / "mr", "x", model=WindowThreshold(0.5), window="brain", roi_size=64)


# --- DICOM ---------------------------------------------------------------------------------
def test_dicom_series_sorted_by_position_in_hounsfield_units(tmp_path):
    stored = dicom_series(tmp_path / "ct", n=5, spacing=2.5, order=[3, 0, 4, 1, 2])
    s = open_image(tmp_path / "ct")
    assert isinstance(s.array, DicomSeriesArray)
    # 16 signed bits stored, minus 1024: HU may not fit int16, so int32
    assert s.spatial_shape == (5, 128, 128) and s.dtype == np.int32
    vol = s.read((slice(None),) * 3)[..., 0]
    for k in range(5):  # by position, whatever the file and InstanceNumber order
        np.testing.assert_array_equal(vol[k], stored[k].astype(np.int32) - 1024)
    meta = s.metadata
    assert meta["modality"] == "CT" and meta["value_units"] == "HU" and meta["n_slices"] == 5
    assert meta["spacing"] == pytest.approx([2.5, 0.661468, 0.661468])  # not SliceThickness 5
    expected = np.array(
        [
            [-0.661468, 0, 0, 158.135803],
            [0, -0.661468, 0, 179.035797],
            [0, 0, 2.5, -75.699997],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(meta["affine"], expected, atol=1e-9)
    assert meta["units"] == ["mm"] * 3


def test_dicom_to_nifti_keeps_the_derived_affine(tmp_path):
    dicom_series(tmp_path / "ct", n=4, spacing=3.0)
    res = segment(tmp_path / "ct", "dense", model=lambda x, p: (x - 0.0) / 50.0, roi_size=128,
                  out=tmp_path / "dense.nii.gz")  # fmt: skip
    affine = np.asarray(res.metadata["source_metadata"]["affine"])
    img = nib.load(tmp_path / "dense.nii.gz")
    assert img.header.get_sform(coded=True)[1] == 1 and img.header.get_qform(coded=True)[1] == 1
    np.testing.assert_array_equal(img.affine, affine.astype(np.float32))  # srow is float32
    assert img.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(res.labels).transpose())
    voxel = 3.0 * 0.661468**2
    (m,) = measure(res.labels, res.label_names, scale=res.metadata["source_metadata"]["scale"],
                   units=["mm"] * 3)  # fmt: skip
    assert m.size == pytest.approx(m.voxels * voxel, rel=1e-6) and m.unit == "mm^3"


def test_fractional_rescale_gives_float_values(tmp_path):
    stored = dicom_series(tmp_path / "pet", n=2, slope=0.25, intercept=-3.5)
    s = open_image(tmp_path / "pet")
    assert s.dtype == np.float32
    np.testing.assert_allclose(s.array[1], stored[1] * 0.25 - 3.5)


def test_mixed_series_are_refused_by_name(tmp_path):
    dicom_series(tmp_path / "mix", n=3, series_uid="1.2.3.4")
    dicom_series(tmp_path / "other", n=2, template="MR_small.dcm", series_uid="1.2.3.5")
    for f in (tmp_path / "other").iterdir():
        shutil.copy(f, tmp_path / "mix" / f"mr_{f.name}")
    with pytest.raises(
        ValueError,
        match=r"'.*mix' mixes 2 DICOM series: 1.2.3.4 \(CT '', 3 files\); 1.2.3.5 \(MR '', 2 "
        r"files\); put each series in its own",
    ):
        segment(tmp_path / "mix", "x", model=threshold_model, out=tmp_path / "o.nii.gz")
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.nii.gz.zarr").exists()


def test_broken_series_are_refused(tmp_path):
    dicom_series(tmp_path / "gap", n=5)
    (tmp_path / "gap" / "IM0002.dcm").unlink()  # a missing slice in the middle
    with pytest.raises(ValueError, match=r"slice spacing in '.*gap' is not uniform \(2.5 to 5 "
                       r"mm\); a slice may be missing"):  # fmt: skip
        open_image(tmp_path / "gap")
    dicom_series(tmp_path / "dup", n=2, spacing=0.0)
    with pytest.raises(ValueError, match=r"'IM0000.dcm' and 'IM0001.dcm' in '.*dup' lie at the "
                       r"same position"):  # fmt: skip
        open_image(tmp_path / "dup")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("not DICOM")
    with pytest.raises(ValueError, match=r"'.*empty' holds no DICOM image files \(1 files looked "
                       r"at\)"):  # fmt: skip
        open_image(tmp_path / "empty")
    import pydicom

    dicom_series(tmp_path / "tilt", n=3)
    ds = pydicom.dcmread(tmp_path / "tilt" / "IM0001.dcm")
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(tmp_path / "tilt" / "IM0001.dcm")
    with pytest.raises(ValueError, match=r"slices of '.*tilt' have different orientations"):
        open_image(tmp_path / "tilt")
    dicom_series(tmp_path / "noipp", n=2)
    ds = pydicom.dcmread(tmp_path / "noipp" / "IM0000.dcm")
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "noipp" / "IM0000.dcm")
    with pytest.raises(ValueError, match=r"'.*IM0000.dcm' has no valid ImagePositionPatient "
                       r"\(got None\); expected 3 numbers"):  # fmt: skip
        open_image(tmp_path / "noipp")


def test_more_dicom_refusals(tmp_path):
    import pydicom

    def edited(name, change):
        dicom_series(tmp_path / name, n=2)
        f = tmp_path / name / "IM0001.dcm"
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)
        return tmp_path / name

    def smaller(ds):
        ds.Rows = 64
        ds.PixelData = ds.PixelData[: 64 * 128 * 2]

    with pytest.raises(ValueError, match=r"slices of '.*size' differ in size: 'IM0000.dcm' is "
                       r"128 x 128, 'IM0001.dcm' is 64 x 128"):  # fmt: skip
        open_image(edited("size", smaller))
    with pytest.raises(ValueError, match=r"'.*IM0001.dcm' is a colour DICOM image; only "
                       r"grayscale series are read"):  # fmt: skip
        open_image(edited("rgb", lambda ds: setattr(ds, "SamplesPerPixel", 3)))
    with pytest.raises(ValueError, match=r"'.*IM0001.dcm' is a multi-frame DICOM file"):
        open_image(edited("frames", lambda ds: setattr(ds, "NumberOfFrames", 4)))

    def jpeg(ds):  # declared JPEG, holding bytes no decoder accepts
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])

    source = open_image(edited("jpeg", jpeg))
    assert source.array[1].shape == (128, 128)  # IM0000, the second position, decodes
    with pytest.raises(ValueError, match=r"cannot decode the pixels of '.*IM0001.dcm' "
                       r"\(transfer syntax 1.2.840.10008.1.2.4.50\): \S"):  # fmt: skip
        source.array[0]
    with pytest.raises(TypeError, match=r"only integers and slices index a lazy image, got \[0\]"):
        source.array[[0]]


def test_dicom_dtype_is_the_smallest_that_holds_the_rescaled_values():
    from pydicom.dataset import Dataset

    from napari_llmseg.io.medical import _dicom_dtype

    ds = Dataset()
    ds.BitsStored, ds.PixelRepresentation = 12, 0
    assert _dicom_dtype(ds, [(1.0, -1024.0)]) == np.int16  # 0..4095 - 1024
    ds.BitsStored = 16
    assert _dicom_dtype(ds, [(1.0, -1024.0)]) == np.int32  # up to 64511
    assert _dicom_dtype(ds, [(1.0, -1024.0), (0.5, 0.0)]) == np.float32


def test_complex_nifti_and_bad_output_shapes(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.complex64), np.eye(4)), tmp_path / "c.nii")
    with pytest.raises(TypeError, match=r"'.*c.nii' holds complex64 voxels; expected an "
                       r"integer or float image"):  # fmt: skip
        open_image(tmp_path / "c.nii")
    with pytest.raises(ValueError, match=r"expected \(Z, Y, X\) or \(P, Z, Y, X\) data, got "
                       r"shape \(8,\)"):  # fmt: skip
        write_nifti(tmp_path / "x.nii", np.zeros(8, np.uint8), affine=np.eye(4))
    assert not (tmp_path / "x.nii").exists()
