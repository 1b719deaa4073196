"""MONAI bundles as a backend: tiny random-weight bundles in the on-disk layout of
``monai.bundle.download``, loaded through the public path, and every refusal by message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_llmseg import segment
from napari_llmseg.backends import monai_bundle
from napari_llmseg.backends.hf import WeightsUnavailableError
from napari_llmseg.backends.registry import get_model
from napari_llmseg.cli import main

CHANNELS = {"0": "background", "1": "liver", "2": "kidney_right", "3": "kidney_left"}
SEGRESNET = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4,
             "init_filters": 4, "blocks_down": [1, 1, 1], "blocks_up": [1, 1],
             "norm": ["GROUP", {"num_groups": 2}]}  # fmt: skip
BASICUNET = {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 3, "in_channels": 1,
             "out_channels": 4, "features": [4, 4, 8, 8, 16, 4]}  # fmt: skip
PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
    {
        "_target_": "ScaleIntensityRanged",
        "keys": "image",
        "a_min": -57,
        "a_max": 164,
        "b_min": 0.0,
        "b_max": 1.0,
        "clip": True,
    },
    {"_target_": "EnsureTyped", "keys": "image"},
]


def make_bundle(
    root: Path,
    network_def: dict | None = None,
    *,
    weights: str = "safetensors",
    preprocessing: list | None = None,
    roi: list | None = None,
    name: str = "tiny_ct_segmentation",
    extra: dict | None = None,
    weights_file: str = "model",
) -> Path:
    """A bundle folder laid out as monai.bundle.download leaves it, with random weights
    (``extra``: more top-level entries of inference.json, replacing the defaults)."""
    folder = root / name
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    network_def = dict(SEGRESNET if network_def is None else network_def)
    metadata = {
        "name": "Tiny CT segmentation", "version": "0.1.0", "license": "Apache-2.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": roi}},
            "outputs": {"pred": {"type": "image", "num_channels": 4, "channel_def": CHANNELS}},
        },
    }  # fmt: skip
    inference = {
        "imports": ["$import glob"],  # a real bundle's: read, never run
        "bundle_root": ".",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose",
                          "transforms": PREPROCESSING if preprocessing is None else preprocessing},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi or [32, 32, 32],
                    "sw_batch_size": 4, "overlap": 0.5},
        **(extra or {}),
    }  # fmt: skip
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    torch.manual_seed(0)
    try:
        net = monai_bundle.build_network(network_def)
    except ValueError:
        net = None  # a network_def the tests expect to be refused
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(folder / "models" / f"{weights_file}.safetensors"))  # fmt: skip
    elif weights == "pt":
        torch.save(net.state_dict(), folder / "models" / f"{weights_file}.pt")
    elif weights == "pickled module":
        torch.save(net, folder / "models" / "model.pt")
    elif weights == "torchscript":
        torch.jit.script(torch.nn.Conv3d(1, 4, 1)).save(str(folder / "models" / "model.ts"))
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundles"))


def _reference(folder: Path, volume: np.ndarray) -> np.ndarray:
    """Class probabilities the way MONAI's pipeline computes them on a volume that needs no
    resampling nor reorientation: scale intensity, one window, softmax."""
    from monai.transforms import ScaleIntensityRange

    net = monai_bundle.build_network(SEGRESNET)
    from safetensors.torch import load_file

    net.load_state_dict(load_file(str(folder / "models" / "model.safetensors")))
    x = ScaleIntensityRange(-57, 164, 0.0, 1.0, clip=True)(torch.from_numpy(volume))
    ijk = torch.as_tensor(x).permute(2, 1, 0)[None, None].float()  # (Z, Y, X) -> (i, j, k)
    with torch.no_grad():
        out = torch.softmax(net.eval()(ijk), dim=1)[0]
    return out.permute(0, 3, 2, 1).numpy()  # back to (K, Z, Y, X)


def test_a_bundle_folder_loads_with_its_classes_and_matches_monai(bundle):
    model = get_model(bundle)
    assert isinstance(model, monai_bundle.MonaiBundle)
    assert model.class_names == {0: "background", 1: "liver", 2: "kidney_right",
                                 3: "kidney_left"}  # fmt: skip
    assert model.spatial_dims == 3 and model.bundle_roi == (32, 32, 32)
    assert model.describe()["bundle"] == "Tiny CT segmentation"
    assert model.intensity.fixed_range == {"a_min": -57.0, "a_max": 164.0, "b_min": 0.0,
                                      "b_max": 1.0, "clip": True}  # fmt: skip
    assert model.pre["pixdim"] == [1.5, 1.5, 2.0] and model.pre["axcodes"] == "RAS"
    vol = np.random.default_rng(0).normal(40, 80, size=(32, 32, 32)).astype(np.float32)
    with pytest.warns(UserWarning, match="the input has no voxel size in mm"):
        result = segment(vol, ["kidneys", "liver"], model=str(bundle), roi_size=(32, 32, 32))
    ref = _reference(bundle, vol)
    prob = np.asarray(result.probabilities)
    np.testing.assert_allclose(prob[0], ref[2] + ref[3], atol=1e-4)
    np.testing.assert_allclose(prob[1], ref[1], atol=1e-4)
    assert result.label_names == {1: "kidneys", 2: "liver"}
    assert result.metadata["prompt_classes"]["kidneys"]["classes"] == ["kidney_right",
                                                                        "kidney_left"]  # fmt: skip
    assert result.metadata["model"]["name"] == "monai"


def test_bundle_windows_follow_its_roi_spacing_and_orientation(bundle, tmp_path):
    """A network that marks the right half of the patient in its window (high indices along
    the bundle's R axis) sees the input turned to RAS and resampled to the bundle's spacing:
    on an input whose i axis runs to the left (affine with -x) and whose voxels are 1 mm, the
    marked voxels come back as the low-i half, at the input's spacing."""
    model = get_model(bundle)

    class RightHalf(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 4, *x.shape[2:])
            out[:, 1, x.shape[2] // 2 :] = 10.0  # R axis: high i after RAS = the right
            return out

    model.net = RightHalf()
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])  # i runs right to left (L), spacing (2, 1, 1)
    meta = {"affine": affine.tolist(), "scale": [2.0, 1.0, 1.0], "units": ["mm"] * 3}
    fitted = model.for_input(meta)
    # roi 32^3 at (1.5, 1.5, 2.0) mm (x, y, z) -> input voxels (z 2 mm, y 1 mm, x 1 mm)
    assert fitted.default_roi == (32, 48, 48)
    assert fitted._target_spacing() == (2.0, 1.5, 1.5)
    window = np.zeros((1, 1, 32, 48, 48), np.float32)
    logits = fitted.predict(fitted.preprocess(window, None), None)
    assert logits.shape == (1, 4, 32, 48, 48)
    marked = logits[0, 1] > 5
    # i (X here) increases towards the left (-x in RAS+), so the right half is low i
    assert marked[:, :, :24].all() and not marked[:, :, 24:].any()


def test_segment_a_nifti_ct_keeps_its_geometry_and_reports_ml(tmp_path):
    """The real head CT (invesalius-examples), written as NIfTI with its spacing, through a
    tiny random BasicUNet bundle: output NIfTI with the input's shape and affine, label
    names, volumes in mL."""
    import nibabel as nib

    from tests.formats_data import head_ct, write_nifti_volume

    ct, spacing, _, _ = head_ct()
    path = write_nifti_volume(tmp_path / "head.nii.gz", ct, spacing)
    folder = make_bundle(tmp_path, BASICUNET)
    out = tmp_path / "organs.nii.gz"
    result = segment(path, ["kidneys", "liver"], model=str(folder), out=out, overlap=0.25,
                     batch_size=2)  # fmt: skip
    assert result.complete
    written = nib.load(out)
    assert written.shape == ct.shape[::-1]  # (i, j, k)
    np.testing.assert_allclose(written.affine, nib.load(path).affine)
    labels = np.asarray(written.dataobj).transpose()
    assert labels.shape == ct.shape and set(np.unique(labels)) <= {0, 1, 2}
    assert result.label_names == {1: "kidneys", 2: "liver"}
    voxel_ml = float(np.prod(spacing)) / 1000
    lines = result.summary()
    for value, prompt in result.label_names.items():
        count = int((labels == value).sum())
        line = next(line for line in lines if line.startswith(f"{prompt}:"))
        assert f"{count:,} voxels" in line and "mL" in line, line
        ml = float(re.search(r"= ([\d,.]+) mL", line).group(1).replace(",", ""))
        assert ml == pytest.approx(count * voxel_ml, rel=0.01, abs=0.01)
    # windows: the bundle's 32^3 at (1.5, 1.5, 2.0) mm in the CT's (1.5, 0.957, 0.957) mm
    assert result.metadata["roi_size"] == [43, 50, 50]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"init_filters": "$__import__('os').getpid()"},
            "inference.json: network_def.init_filters is \"$__import__('os').getpid()\"; it "
            "calls something",
        ),
        ({"init_filters": "@filters"}, "inference.json: '@filters' refers to no entry"),
        (
            {"norm": ["%configs/x.json#norm"]},
            "inference.json: network_def.norm[0] is '%configs/x.json#norm', a macro",
        ),
        (
            {"act": "@act"},
            "network_def: act._target_ is a ConfigParser directive",
        ),
        (
            {"act": {"_target_": "torch.nn.ReLU"}},
            "network_def: act._target_ is a ConfigParser directive",
        ),
        ({"_requires_": "$print(1)"}, "network_def._requires_ is a ConfigParser directive"),
        (
            {"_target_": "torch.nn.Conv3d"},
            "network_def._target_ is 'torch.nn.Conv3d'; only "
            "classes of monai.networks.nets are built",
        ),
        ({"_target_": "os.system"}, "network_def._target_ is 'os.system'; only classes"),
        (
            {"_target_": "monai.networks.nets.eval"},
            "network_def._target_ is 'monai.networks.nets.eval'",
        ),
        (
            {"_target_": "Optional"},
            "'Optional', which is not a network class of monai.networks.nets",
        ),
    ],
)
def test_unsafe_network_defs_are_refused_naming_the_key(change, message, tmp_path):
    folder = make_bundle(tmp_path, SEGRESNET)
    inference = json.loads((folder / "configs" / "inference.json").read_text())
    inference["act"] = {"_target_": "torch.nn.ReLU"}  # what "@act" refers to
    inference["network_def"].update(change)
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    with pytest.raises(ValueError, match=re.escape(message)):
        get_model(folder)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (
            "torchscript",
            "models/model.ts' is TorchScript, which carries its own code and is refused",
        ),
        (
            "pickled module",
            "models/model.pt' is not a state dict of tensors "
            "(torch.load(weights_only=True) refused it",
        ),
        ("none", "has no models/model.safetensors or model.pt"),
    ],
)
def test_unsafe_or_missing_weights_are_refused(weights, message, tmp_path):
    folder = make_bundle(tmp_path, SEGRESNET, weights=weights)
    with pytest.raises(ValueError, match=re.escape(message)):
        get_model(folder)


def test_state_dict_model_pt_loads_with_weights_only(tmp_path):
    folder = make_bundle(tmp_path, SEGRESNET, weights="pt")
    model = get_model(folder)
    assert model.weights_path.name == "model.pt"
    ref = get_model(make_bundle(tmp_path, SEGRESNET, name="b2"))
    for (k, a), (_, b) in zip(model.net.state_dict().items(), ref.net.state_dict().items()):
        assert torch.equal(a, b), k  # same seed: the same weights by either format


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path):
    folder = make_bundle(tmp_path, SEGRESNET)
    inference = json.loads((folder / "configs" / "inference.json").read_text())
    inference["network_def"]["init_filters"] = 8
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    with pytest.raises(
        ValueError,
        match=r"model.safetensors' does not fit network_def "
        r"\(SegResNet\): Error\(s\) in loading state_dict",
    ):
        get_model(folder)


def test_a_model_zoo_name_offline_is_one_line_naming_the_bundle(tmp_path, monkeypatch, capsys):
    import monai.bundle

    def offline(**kwargs):
        raise ConnectionError("Failed to resolve 'raw.githubusercontent.com'")

    monkeypatch.setattr(monai.bundle, "download", offline)
    monkeypatch.setattr(monai_bundle, "bundle_cache", lambda: tmp_path / "cache")
    with pytest.raises(WeightsUnavailableError, match=re.escape(
        "MONAI bundle 'spleen_ct_segmentation' is not in "
    )):  # fmt: skip
        get_model("monai:spleen_ct_segmentation")
    np.save(tmp_path / "v.npy", np.zeros((32, 32, 32), np.float32))
    code = main(["segment", str(tmp_path / "v.npy"), "-p", "spleen", "--model",
                 "monai:spleen_ct_segmentation", "-o", str(tmp_path / "o.zarr")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert (
        "'spleen_ct_segmentation'" in err[0]
        and "could not be downloaded (ConnectionError" in err[0]
    )
    assert "python -m monai.bundle download --name spleen_ct_segmentation" in err[0]


def test_a_cached_model_zoo_bundle_loads_without_the_network(tmp_path, monkeypatch):
    import monai.bundle

    make_bundle(tmp_path / "cache", SEGRESNET, name="tiny_zoo_bundle")
    monkeypatch.setattr(monai_bundle, "bundle_cache", lambda: tmp_path / "cache")
    monkeypatch.setattr(monai.bundle, "download", lambda **kw: pytest.fail("no download"))
    model = get_model("monai:tiny_zoo_bundle")
    assert model.folder == tmp_path / "cache" / "tiny_zoo_bundle"


def test_cli_segments_with_a_bundle_and_lists_its_classes(bundle, tmp_path, capsys):
    assert main(["models", str(bundle)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"monai ({bundle}): 4 classes, one output channel each"
    assert out[1:5] == ["    0  background", "    1  liver", "    2  kidney_right",
                        "    3  kidney_left"]  # fmt: skip
    np.save(tmp_path / "v.npy", np.zeros((24, 40, 40), np.float32))
    code = main(["segment", str(tmp_path / "v.npy"), "-p", "kidneys", "--model", str(bundle),
                 "-o", str(tmp_path / "o.zarr"), "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "kidneys: classes kidney_right, kidney_left" in captured.out
    # names given on the command line rename the bundle's, the others stay
    args = ["--class-names", "1=spleen", "-o", str(tmp_path / "o2.zarr"), "--quiet"]
    code = main(["segment", str(tmp_path / "v.npy"), "-p", "spleen", "--model", str(bundle),
                 *args])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "spleen: classes spleen" in captured.out
    meta = json.loads((tmp_path / "o2.zarr" / "zarr.json").read_text())["attributes"]
    renamed = {"0": "background", "1": "spleen", "2": "kidney_right", "3": "kidney_left"}
    assert meta["napari_llmseg"]["class_names"] == renamed


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (
            {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim"},
            "inference.json: '@pixdim' refers to no entry",
        ),
        (
            {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 1,
             "upper": 99, "b_min": 0, "b_max": 1},
            "inference.json: preprocessing ScaleIntensityRangePercentilesd is not reproduced "
            "here (only ScaleIntensityRanged, NormalizeIntensityd and ScaleIntensityd",
        ),
        (
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": "$abs(-57)",
             "a_max": 164},
            "inference.json: ScaleIntensityRanged.a_min is '$abs(-57)'; it calls something",
        ),
        (
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": "low", "a_max": 164},
            "inference.json: ScaleIntensityRanged.a_min is 'low'; expected a number",
        ),
        (
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
            "inference.json: NormalizeIntensityd after another intensity transform is not "
            "reproduced here",
        ),
    ],
)  # fmt: skip
def test_preprocessing_that_cannot_be_read_as_data_is_refused(transform, message, tmp_path):
    pre = [t for t in PREPROCESSING if t["_target_"] != transform["_target_"]] + [transform]
    folder = make_bundle(tmp_path, SEGRESNET, preprocessing=pre)
    with pytest.raises(ValueError, match=re.escape(message)):
        get_model(folder)


#: wholeBody_ct_segmentation's inference.json, as published in the MONAI Model Zoo, with a
#: tiny network of its kind (SegResNet) and 4 classes instead of 105.
WHOLE_BODY_PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "@image_key"},
    {"_target_": "EnsureTyped", "keys": "@image_key"},
    {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
    {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
    {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
    {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": -1.0, "maxv": 1.0},
]


def whole_body_extra(highres: bool = True) -> dict:
    return {
        "displayable_configs": {"highres": highres, "sw_overlap": 0.25, "sw_batch_size": 1},
        "image_key": "image",
        "pixdim": "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
        "modelname": "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32],
                    "sw_batch_size": "@displayable_configs#sw_batch_size",
                    "overlap": "@displayable_configs#sw_overlap", "padding_mode": "replicate",
                    "mode": "gaussian"},
        "checkpointloader": {"_target_": "CheckpointLoader",
                             "load_path": "$@bundle_root + '/models/' + @modelname",
                             "load_dict": {"model": "@network"}},
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)",
                       "$@checkpointloader(@evaluator)"],
    }  # fmt: skip


@pytest.mark.parametrize("highres", [True, False])
def test_whole_body_ct_config_loads_its_spacing_weights_and_overlap(highres, tmp_path):
    """wholeBody_ct_segmentation reads its spacing and weights file through expressions on
    ``displayable_configs#highres``: both variants load, each with its own weights."""
    name = "model" if highres else "model_lowres"
    folder = make_bundle(tmp_path, SEGRESNET, preprocessing=WHOLE_BODY_PREPROCESSING,
                         extra=whole_body_extra(highres), weights="pt",
                         weights_file=name)  # fmt: skip
    model = get_model(folder)
    assert model.pre["pixdim"] == ([1.5] * 3 if highres else [3.0] * 3)
    assert model.weights_path == folder / "models" / f"{name}.pt"
    assert model.default_overlap == 0.25 and model.needs_moments
    assert [s.kind for s in model.intensity.steps] == ["normalize", "scale"]
    assert model.intensity.steps[0].params["nonzero"] is True


def _monai_whole_body_input(volume: np.ndarray) -> torch.Tensor:
    """MONAI's own NormalizeIntensity(nonzero) + ScaleIntensity(-1, 1) on the whole volume."""
    from monai.transforms import Compose, NormalizeIntensity, ScaleIntensity

    pipeline = Compose([NormalizeIntensity(nonzero=True), ScaleIntensity(minv=-1.0, maxv=1.0)])
    return torch.as_tensor(pipeline(torch.from_numpy(volume[None].astype(np.float32))))


def test_whole_body_normalisation_is_monai_s_on_the_whole_volume(tmp_path):
    """Windows are normalised with the whole volume's mean, deviation and extremes: any
    window equals the same region of MONAI's transforms applied to the whole volume, and the
    segmentation equals MONAI's sliding-window inference on it (1e-4)."""
    from monai.inferers import sliding_window_inference

    from napari_llmseg.engine.normalize import compute_stats
    from napari_llmseg.io.source import ImageSource

    folder = make_bundle(tmp_path, SEGRESNET, preprocessing=WHOLE_BODY_PREPROCESSING,
                         extra=whole_body_extra(), weights="pt")  # fmt: skip
    rng = np.random.default_rng(1)
    volume = rng.normal(40, 300, (40, 48, 44)).astype(np.float32)
    volume[:, :10] = 0  # zeros stay zero with nonzero=True, and take part in the extremes
    meta = {"scale": [1.5, 1.5, 1.5], "units": ["mm"] * 3}
    source = ImageSource(volume, metadata=meta)
    stats = compute_stats(source, moments=True)
    model = get_model(folder).for_input(meta)
    expected = _monai_whole_body_input(volume)
    window = volume[None, None, 5:37, 3:35, 10:42]
    got = model.preprocess(window, stats)
    assert torch.allclose(got[0], expected[:, 5:37, 3:35, 10:42], atol=1e-5)
    zero = float(expected[0, 0, 0, 0])  # where the volume is 0, after both steps
    assert torch.allclose(got[0, 0, :, :7], torch.full((32, 7, 32), zero), atol=1e-6)
    # a run on one window's worth of volume against MONAI's pipeline on it
    small = volume[:32, 8:40, 6:38].copy()
    result = segment(ImageSource(small, metadata=meta), ["liver", "kidneys"], model=str(folder),
                     probabilities="float32")  # fmt: skip
    assert result.metadata["overlap"] == 0.25  # the bundle's, read through its reference
    ijk = _monai_whole_body_input(small).permute(0, 3, 2, 1)[None]  # (Z, Y, X) -> (i, j, k)
    with torch.no_grad():
        logits = sliding_window_inference(ijk, (32, 32, 32), 4, model.net, overlap=0.25,
                                          mode="gaussian")  # fmt: skip
    probs = torch.softmax(logits, dim=1)[0].permute(0, 3, 2, 1).numpy()
    got_probs = np.asarray(result.probabilities)
    np.testing.assert_allclose(got_probs[0], probs[1], atol=1e-4)
    np.testing.assert_allclose(got_probs[1], probs[2] + probs[3], atol=1e-4)


def test_normalisation_steps_match_monai_per_option():
    """Each option of the three intensity transforms against MONAI's, on a 2-channel image."""
    from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRange

    from napari_llmseg.backends.bundle_intensity import IntensityPipeline, Step
    from napari_llmseg.engine.normalize import compute_stats
    from napari_llmseg.io.source import ImageSource

    rng = np.random.default_rng(2)
    image = rng.normal(10, 5, (2, 20, 24)).astype(np.float32)  # (C, Y, X)
    image[0, :4] = 0
    image[1, 5:9] = 0
    stats = compute_stats(ImageSource(image, channel_axis=0), moments=True)
    normalize = {"nonzero": False, "channel_wise": False, "subtrahend": None, "divisor": None}
    scale = {"minv": 0.0, "maxv": 1.0, "factor": None, "channel_wise": False}
    cases = [
        ([Step("normalize", normalize)], [NormalizeIntensity()]),
        ([Step("normalize", {**normalize, "nonzero": True})], [NormalizeIntensity(nonzero=True)]),
        ([Step("normalize", {**normalize, "channel_wise": True, "nonzero": True})],
         [NormalizeIntensity(nonzero=True, channel_wise=True)]),
        ([Step("normalize", {**normalize, "subtrahend": 3.0, "divisor": 2.0})],
         [NormalizeIntensity(subtrahend=3.0, divisor=2.0)]),
        ([Step("scale", scale)], [ScaleIntensity()]),
        ([Step("scale", {**scale, "channel_wise": True, "minv": -1.0})],
         [ScaleIntensity(minv=-1.0, channel_wise=True)]),
        ([Step("scale", {**scale, "minv": None, "maxv": None, "factor": 0.5})],
         [ScaleIntensity(minv=None, maxv=None, factor=0.5)]),
        ([Step("range", {"a_min": 0.0, "a_max": 20.0, "b_min": 0.0, "b_max": 1.0, "clip": True}),
          Step("scale", {**scale, "minv": -1.0})],
         [ScaleIntensityRange(0.0, 20.0, 0.0, 1.0, clip=True), ScaleIntensity(minv=-1.0)]),
        ([Step("normalize", {**normalize, "nonzero": True}),
          Step("scale", {**scale, "minv": -1.0})],
         [NormalizeIntensity(nonzero=True), ScaleIntensity(minv=-1.0)]),
    ]  # fmt: skip
    for steps, transforms in cases:
        expected = torch.from_numpy(image.copy())
        for t in transforms:
            expected = torch.as_tensor(t(expected))
        pipeline = IntensityPipeline(steps)
        mappings = pipeline.bind(stats, 2)
        got = pipeline.apply(torch.from_numpy(image)[None], mappings)[0]
        assert torch.allclose(got, expected, atol=1e-5), steps
        # the pad value is the raw value that preprocesses to MONAI's padding
        pad = pipeline.pad_value(mappings, 2)
        padded = pipeline.apply(torch.from_numpy(pad).reshape(1, 2, 1, 1), mappings)
        assert torch.allclose(padded.flatten(), torch.full((2,), pipeline.padding()), atol=1e-5)


def test_statistics_are_needed_and_kept_for_resume(tmp_path):
    """A bundle that normalises by the image's statistics says so when they are missing, and a
    resumed run reuses the stored ones (labels identical)."""
    from napari_llmseg.engine.normalize import compute_stats
    from napari_llmseg.io.source import ImageSource

    folder = make_bundle(tmp_path, SEGRESNET, preprocessing=WHOLE_BODY_PREPROCESSING,
                         extra=whole_body_extra(), weights="pt")  # fmt: skip
    volume = np.random.default_rng(3).normal(0, 100, (20, 40, 40)).astype(np.float32)
    meta = {"scale": [1.5, 1.5, 1.5], "units": ["millimeter"] * 3}
    source = ImageSource(volume, metadata=meta)
    model = get_model(folder)
    with pytest.raises(ValueError, match=re.escape(
        "this MONAI bundle normalises by the image's own statistics, which were not computed"
    )):  # fmt: skip
        model.preprocess(volume[None, None, :16, :16, :16], compute_stats(source))
    out = tmp_path / "ct.zarr"
    first = segment(source, "liver", model=str(folder), out=out)
    stored = json.loads((out / "zarr.json").read_text())["attributes"]["napari_llmseg"]
    moments = stored["stats"]["moments"][0]
    assert moments["n"] == volume.size and moments["nz_n"] == np.count_nonzero(volume)
    assert moments["sum"] == pytest.approx(float(volume.astype(np.float64).sum()), rel=1e-9)
    again = segment(source, "liver", model=str(folder), out=out, resume=True)
    np.testing.assert_array_equal(np.asarray(again.labels), np.asarray(first.labels))


def test_swin_unetr_written_for_older_monai_loads(tmp_path):
    """swin_unetr_btcv_segmentation passes img_size, which MONAI 1.5 removed from SwinUNETR
    (it only checked input sizes): it is dropped, and windows are padded to a multiple of 32
    (patch_size ** 5) for the network."""
    swin = {"_target_": "SwinUNETR", "spatial_dims": 3, "img_size": 96, "in_channels": 1,
            "out_channels": 4, "feature_size": 12, "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1], "use_checkpoint": False}  # fmt: skip
    folder = make_bundle(tmp_path, swin)
    model = get_model(folder)
    assert type(model.net).__name__ == "SwinUNETR" and model.divisor == 32
    window = np.zeros((1, 1, 40, 36, 33), np.float32)
    from napari_llmseg.engine.normalize import IntensityStats

    logits = model.predict(model.preprocess(window, IntensityStats((0.0,), (1.0,))), None)
    assert logits.shape == (1, 4, 40, 36, 33)


@pytest.mark.parametrize(
    ("units", "spacing"),
    [(["mm"] * 3, (2.0, 1.0, 1.0)), (["millimeter"] * 3, (2.0, 1.0, 1.0)),
     (["micrometer"] * 3, (0.002, 0.001, 0.001)), (None, (2.0, 1.0, 1.0))],
)  # fmt: skip
def test_voxel_sizes_are_read_in_mm(units, spacing, bundle):
    """napari layers carry pint unit names ("millimeter"); they are converted to mm."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = get_model(bundle).for_input({"scale": [2.0, 1.0, 1.0], "units": units})
    assert fitted.input_spacing == pytest.approx(spacing)
    with pytest.warns(UserWarning, match="the input has no voxel size in mm"):
        get_model(bundle).for_input({"scale": [2.0, 1.0, 1.0], "units": ["pixel"] * 3})


def test_the_bundle_overlap_is_the_default_and_a_given_one_wins(bundle):
    volume = np.zeros((32, 40, 40), np.float32)
    meta = {"scale": [2.0, 1.5, 1.5], "units": ["mm"] * 3}
    from napari_llmseg.io.source import ImageSource

    source = ImageSource(volume, metadata=meta)
    assert segment(source, "liver", model=str(bundle)).metadata["overlap"] == 0.5
    given = segment(source, "liver", model=str(bundle), overlap=0.125)
    assert given.metadata["overlap"] == 0.125


def test_bundle_without_channel_def_needs_class_names(tmp_path):
    folder = make_bundle(tmp_path, SEGRESNET)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert get_model(folder).class_names == {}
    vol = np.zeros((32, 32, 32), np.float32)
    with pytest.raises(ValueError, match=re.escape(
        "the monai model names no classes (a MONAI bundle without channel_def); give them with "
        "class_names= (--class-names)"
    )):  # fmt: skip
        segment(vol, "liver", model=str(folder))
    with pytest.warns(UserWarning, match="no voxel size in mm"):
        result = segment(vol, "liver", model=str(folder), class_names={1: "liver"})
    assert result.metadata["prompt_classes"]["liver"]["channels"] == [1]


def test_a_whole_body_bundle_previews_a_plane_with_the_image_s_moments(tmp_path):
    """The live preview of a bundle that normalises by the image's statistics gets them from
    image_stats(moments=True): the plane equals that plane of a full run."""
    from napari_llmseg.interactive import View, image_stats, preview
    from napari_llmseg.io.source import ImageSource

    folder = make_bundle(tmp_path, SEGRESNET, preprocessing=WHOLE_BODY_PREPROCESSING,
                         extra=whole_body_extra(), weights="pt")  # fmt: skip
    volume = np.random.default_rng(4).normal(0, 100, (32, 32, 32)).astype(np.float32)
    meta = {"scale": [1.5, 1.5, 1.5], "units": ["mm"] * 3}
    model = get_model(folder)
    stats = image_stats(volume, moments=True)
    shown = preview(ImageSource(volume), ["liver"], View(12, (0, 32), (0, 32)), model=model,
                    stats=stats, metadata=meta)  # fmt: skip
    full = segment(ImageSource(volume, metadata=meta), "liver", model=model,
                   probabilities="float32")  # fmt: skip
    assert shown is not None and shown.labels.shape == (32, 32)
    np.testing.assert_allclose(shown.probabilities[0], np.asarray(full.probabilities)[0, 12],
                               atol=1e-5)  # fmt: skip
