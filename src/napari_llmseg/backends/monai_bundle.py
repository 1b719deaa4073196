"""MONAI bundles (Model Zoo) as a backend: a bundle folder, or ``monai:NAME`` from the Zoo.

A bundle is the folder ``monai.bundle.download`` leaves::

    NAME/
      configs/metadata.json    network_data_format.outputs.pred.channel_def: class names
      configs/inference.json   network_def (the network), preprocessing, inferer
      models/model.safetensors or models/model.pt (a state dict)

It is a model with named classes: each output channel is a class, prompts are matched to the
classes by :mod:`.classes` ("kidneys" -> both kidney classes), and the probabilities of a
prompt's classes are summed.

Safety. A bundle's configs are programs for MONAI's ``ConfigParser`` (``$`` runs Python,
``@`` and ``%`` refer to other entries, ``_target_`` imports anything). None of that runs
here: values are read by :mod:`.bundle_config`, which follows ``@`` references within the
file and reads ``$`` expressions made of literals, references, arithmetic and ``x if c else
y`` only (a name, call, attribute or import is refused, so nothing is run). Only
``network_def`` is built; its ``_target_`` must name a class of ``monai.networks.nets``
(looked up by name in that module: no other import), and its arguments must read as plain
JSON values, with no ``_target_`` below the top. Weights come from ``model.safetensors`` or
from ``model.pt`` through ``torch.load(weights_only=True)`` (tensors only: a pickled module is
refused); TorchScript (``model.ts``) is refused, since it carries its own code. When the
config's ``CheckpointLoader`` names the weights file (wholeBody_ct_segmentation picks
``model.pt`` or ``model_lowres.pt``), that file is loaded.

Preprocessing, the bundle's way, from ``inference.json``'s ``preprocessing`` (read, never run):

* intensity: ``ScaleIntensityRanged`` (a fixed range), ``NormalizeIntensityd`` (``nonzero``,
  ``channel_wise``) and ``ScaleIntensityd`` (``minv``/``maxv``), in the bundle's order, as
  fixed mappings whose numbers come from the whole input once (:mod:`.bundle_intensity`), so
  that every window gets the same mapping (no seams); another intensity transform is
  refused, naming it, rather than run on intensities its network was not trained on;
* orientation: ``Orientationd`` ``axcodes``; a NIfTI or DICOM input's voxel axes are flipped
  and permuted to them for the network, window by window, and back;
* spacing: ``Spacingd`` ``pixdim``. Respacing is **streamed**: the engine's windows are cut
  from the input at its own spacing, each is resampled (trilinear) to the bundle's spacing
  for the network and its logits resampled back, so memory stays that of the windows. The
  default window is the bundle inferer's ``roi_size`` at the bundle's spacing, converted to
  input voxels, and the default overlap the inferer's ``overlap``. This differs from MONAI's
  (resample the whole volume once, then windows) by the interpolation near window edges only.

An input without an affine (a numpy array) is taken to be in the bundle's orientation, and
without a voxel size in mm, at the bundle's spacing (with a warning).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.normalize import IntensityStats
from ..measure import short_unit
from .base import BackendSpec, ModelInfo, PromptSegmenter
from .bundle_config import BundleConfig
from .bundle_intensity import NORMALIZE, RANGE, SCALE, IntensityPipeline, Step

NAME = "monai"
METADATA = Path("configs") / "metadata.json"
INFERENCE = Path("configs") / "inference.json"
#: Network input sizes are padded up to a multiple of this (U-Nets halve the grid 4 times).
DIVISOR = 16
#: ... or of this, for networks that need more (SwinUNETR: patch_size ** 5).
_DIVISORS = {"SwinUNETR": lambda kwargs: int(kwargs.get("patch_size", 2)) ** 5}
#: Arguments MONAI removed from a network class that bundles written for an older MONAI
#: still pass, with the version that removed them. They had no effect on the network or its
#: weights (SwinUNETR's ``img_size`` only checked input sizes), so they are dropped.
_REMOVED_ARGUMENTS = {"SwinUNETR": {"img_size": "1.5"}}
#: Millimetres per unit, by the short names of :func:`napari_llmseg.measure.short_unit`.
_UNITS_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0, "um": 1e-3, "µm": 1e-3}
_EXPRESSION_PREFIXES = ("$", "@", "%")
_NETS_PREFIX = "monai.networks.nets."


class BundleError(ValueError):
    """A bundle that cannot be loaded safely or as described."""


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a folder laid out as a MONAI bundle."""
    return (path / METADATA).is_file() and (path / INFERENCE).is_file()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"MONAI bundle file '{path}' is missing") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"'{path}' is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise BundleError(f"'{path}' must hold a JSON object, got {type(data).__name__}")
    return data


# --- the network: one class of monai.networks.nets, plain arguments ------------------------
def _check_literal(value: Any, where: str) -> None:
    """Refuse anything in ``value`` that MONAI's ConfigParser would evaluate."""
    if isinstance(value, str):
        if value.startswith(_EXPRESSION_PREFIXES):
            raise BundleError(
                f"network_def: {where} is {value!r}, an expression or reference "
                f"({value[0]!r}); only plain JSON values are accepted (nothing is evaluated)"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.startswith("_") and key.endswith("_"):
                raise BundleError(
                    f"network_def: {where}.{key} is a ConfigParser directive; only the top "
                    "'_target_' is accepted, naming a class of monai.networks.nets"
                )
            _check_literal(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_literal(item, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (bool, int, float))):
        raise BundleError(f"network_def: {where} is not a JSON value: {value!r}")


def network_class(target: Any) -> type:
    """The class ``network_def._target_`` names, looked up in ``monai.networks.nets`` only.

    Raises
    ------
    BundleError
        For a target outside ``monai.networks.nets``, or a name that is not a torch module
        class there.
    """
    import torch

    if not isinstance(target, str) or not target:
        raise BundleError(f"network_def._target_ must name a network class, got {target!r}")
    name = target[len(_NETS_PREFIX) :] if target.startswith(_NETS_PREFIX) else target
    if not name.isidentifier():
        raise BundleError(
            f"network_def._target_ is {target!r}; only classes of monai.networks.nets are "
            "built (e.g. 'SegResNet' or 'monai.networks.nets.SegResNet')"
        )
    from monai.networks import nets

    cls = getattr(nets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise BundleError(
            f"network_def._target_ is {target!r}, which is not a network class of "
            "monai.networks.nets"
        )
    return cls


def build_network(network_def: Any, config: BundleConfig | None = None) -> Any:
    """Instantiate ``network_def`` after the checks of the module docstring; its arguments'
    references and expressions are read through ``config`` (refused without one)."""
    if not isinstance(network_def, dict) or "_target_" not in network_def:
        raise BundleError(
            "inference.json has no network_def with a '_target_' (a class of "
            f"monai.networks.nets), got {network_def!r}"[:300]
        )
    kwargs = {k: v for k, v in network_def.items() if k != "_target_"}
    for key, value in kwargs.items():
        if key.startswith("_") and key.endswith("_"):
            raise BundleError(
                f"network_def.{key} is a ConfigParser directive; only '_target_' is accepted"
            )
        if config is not None:
            kwargs[key] = value = config.read(value, f"network_def.{key}")
        _check_literal(value, key)
    cls = network_class(network_def["_target_"])
    params = inspect.signature(cls).parameters
    for old in _REMOVED_ARGUMENTS.get(cls.__name__, {}):
        if old in kwargs and old not in params:
            del kwargs[old]  # see _REMOVED_ARGUMENTS
    try:
        return cls(**kwargs)
    except Exception as err:
        raise BundleError(
            f"network_def: {cls.__name__}({', '.join(kwargs)}) failed: {type(err).__name__}: {err}"
        ) from None


def network_divisor(network_def: dict) -> int:
    """What the network's input sizes must be a multiple of."""
    name = str(network_def.get("_target_", "")).rsplit(".", 1)[-1]
    rule = _DIVISORS.get(name)
    return max(DIVISOR, rule(network_def)) if rule is not None else DIVISOR


def weights_name(config: BundleConfig) -> str | None:
    """The file name of the weights the config's ``CheckpointLoader`` loads, when it names
    one in ``models/`` (``"$@bundle_root + '/models/' + @modelname"`` is read as data)."""
    data = config.data
    handlers = data.get("handlers")
    candidates = [v for v in data.values() if isinstance(v, dict)]
    candidates += (
        [h for h in handlers if isinstance(h, dict)] if isinstance(handlers, list) else []
    )
    for entry in candidates:
        if _kind(entry) != "CheckpointLoader" or "load_path" not in entry:
            continue
        try:
            path = config.read(entry["load_path"], "CheckpointLoader.load_path")
        except ValueError:
            return None  # not readable as data: the usual names are tried
        if isinstance(path, str) and Path(path).parent.name == "models":
            return Path(path).name
    return None


def load_weights(folder: Path, name: str | None = None) -> tuple[dict, Path]:
    """The network's state dict from ``models/``: safetensors, or a tensors-only ``.pt``
    (``name``, as the config names it, else ``model.pt``), the safetensors of the same name
    first.

    Raises
    ------
    BundleError
        For TorchScript only, a pickled module (anything but tensors), or no weights.
    """
    import torch

    models = folder / "models"
    stem, pt_name = "model", "model.pt"
    if name and Path(name).suffix in (".pt", ".pth"):
        stem, pt_name = Path(name).stem, name
    st = models / f"{stem}.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), st
        except Exception as err:
            raise BundleError(f"'{st}' is not a valid safetensors file ({err})") from None
    pt = models / pt_name
    if pt.is_file():
        try:
            data = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as err:
            first = " ".join(str(err).split())[:200]
            raise BundleError(
                f"'{pt}' is not a state dict of tensors (torch.load(weights_only=True) "
                f"refused it: {first}); a pickled module can run code when loaded and is "
                "refused: save the network's state_dict() instead"
            ) from None
        if isinstance(data, dict) and not any(torch.is_tensor(v) for v in data.values()):
            for key in ("model", "state_dict", "network"):
                if isinstance(data.get(key), dict):
                    data = data[key]
                    break
        if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
            raise BundleError(f"'{pt}' holds a {type(data).__name__}, not a state dict of tensors")
        return data, pt
    if (models / "model.ts").is_file():
        raise BundleError(
            f"'{models / 'model.ts'}' is TorchScript, which carries its own code and is "
            "refused; use the bundle's models/model.pt (a state dict) or convert it to "
            "models/model.safetensors"
        )
    raise BundleError(f"MONAI bundle '{folder}' has no models/{stem}.safetensors or {pt_name}")


# --- preprocessing, read as data -----------------------------------------------------------
def _transforms(config: BundleConfig) -> list[dict]:
    pre = config.data.get("preprocessing")
    if isinstance(pre, str):
        pre = config.read(pre, "preprocessing")
    if isinstance(pre, dict):
        pre = pre.get("transforms")
    return [t for t in pre if isinstance(t, dict)] if isinstance(pre, list) else []


def _kind(t: dict) -> str:
    return str(t.get("_target_", "")).rsplit(".", 1)[-1]


def _value(config: BundleConfig, t: dict, key: str, default: Any = None) -> Any:
    """``t[key]`` read as data (references and literal expressions followed)."""
    return config.read(t.get(key, default), f"{_kind(t)}.{key}")


def _number(config: BundleConfig, t: dict, key: str, default: Any = None) -> Any:
    value = _value(config, t, key, default)
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise BundleError(f"{config.name}: {_kind(t)}.{key} is {value!r}; expected a number")
    return value


def _intensity_step(config: BundleConfig, t: dict) -> Step:
    """One intensity transform's parameters (see :mod:`.bundle_intensity`)."""
    kind = _kind(t)
    if kind in RANGE:
        a_min, a_max = _number(config, t, "a_min"), _number(config, t, "a_max")
        if a_min is None or a_max is None or a_max == a_min:
            raise BundleError(f"{config.name}: {kind} needs a_min != a_max, got {a_min!r} and "
                              f"{a_max!r}")  # fmt: skip
        b_min, b_max = _number(config, t, "b_min"), _number(config, t, "b_max")
        return Step("range", {
            "a_min": float(a_min), "a_max": float(a_max),
            "b_min": 0.0 if b_min is None else float(b_min),
            "b_max": 1.0 if b_max is None else float(b_max),
            "clip": bool(_value(config, t, "clip", False)),
        })  # fmt: skip
    if kind in NORMALIZE:
        given = {k: _value(config, t, k) for k in ("subtrahend", "divisor")}
        for key, v in given.items():
            flat = v if isinstance(v, list) else [v]
            if v is not None and not all(isinstance(x, (int, float)) for x in flat):
                raise BundleError(f"{config.name}: {kind}.{key} is {v!r}; expected numbers")
        return Step("normalize", {
            "nonzero": bool(_value(config, t, "nonzero", False)),
            "channel_wise": bool(_value(config, t, "channel_wise", False)), **given,
        })  # fmt: skip
    return Step("scale", {
        "minv": _number(config, t, "minv", 0.0), "maxv": _number(config, t, "maxv", 1.0),
        "factor": _number(config, t, "factor"),
        "channel_wise": bool(_value(config, t, "channel_wise", False)),
    })  # fmt: skip


def read_preprocessing(config: BundleConfig) -> dict:
    """What the bundle's preprocessing does, as data: the intensity pipeline, spacing and
    orientation.

    Raises
    ------
    BundleError
        For an intensity transform not reproduced here, or values that do not read as the
        numbers MONAI expects.
    """
    out: dict[str, Any] = {"pixdim": None, "axcodes": None}
    steps, ignored = [], []
    for t in _transforms(config):
        kind = _kind(t)
        if kind in RANGE + NORMALIZE + SCALE:
            steps.append(_intensity_step(config, t))
        elif kind in ("Spacingd", "Spacing"):
            pixdim = _value(config, t, "pixdim")
            if isinstance(pixdim, (int, float)):
                pixdim = [pixdim] * 3
            if not (isinstance(pixdim, list) and len(pixdim) == 3
                    and all(isinstance(v, (int, float)) and v > 0 for v in pixdim)):  # fmt: skip
                raise BundleError(f"{config.name}: Spacingd.pixdim must be 3 positive numbers, "
                                  f"got {pixdim!r}")  # fmt: skip
            out["pixdim"] = [float(v) for v in pixdim]
        elif kind in ("Orientationd", "Orientation"):
            axcodes = _value(config, t, "axcodes")
            if not (isinstance(axcodes, str) and len(axcodes) == 3):
                raise BundleError(f"{config.name}: Orientationd.axcodes must be 3 letters such "
                                  f"as 'RAS', got {axcodes!r}")  # fmt: skip
            out["axcodes"] = axcodes.upper()
        elif "Intensity" in kind or kind.startswith(("Normalize", "Histogram")):
            ignored.append(kind)
    if ignored:
        raise BundleError(
            f"{config.name}: preprocessing {', '.join(ignored)} is not reproduced here (only "
            "ScaleIntensityRanged, NormalizeIntensityd and ScaleIntensityd are applied), so "
            "the bundle is refused rather than run on intensities its network was not "
            "trained on"
        )
    try:
        out["intensity"] = IntensityPipeline(steps)
    except ValueError as err:
        raise BundleError(str(err)) from None
    return out


def _inferer(config: BundleConfig) -> dict:
    inferer = config.data.get("inferer")
    return inferer if isinstance(inferer, dict) else {}


def read_roi(config: BundleConfig) -> tuple[int, ...] | None:
    """The inferer's ``roi_size`` (MONAI axis order), if it reads as numbers."""
    try:
        roi = config.read(_inferer(config).get("roi_size"), "inferer.roi_size")
    except ValueError:
        return None
    if isinstance(roi, int):
        roi = [roi] * 3
    if isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) and r > 0 for r in roi):
        return tuple(roi)
    return None


def read_overlap(config: BundleConfig) -> float | tuple[float, ...] | None:
    """The inferer's ``overlap`` (one number, or 3 in MONAI axis order), if it reads as
    numbers in [0, 1)."""
    try:
        overlap = config.read(_inferer(config).get("overlap"), "inferer.overlap")
    except ValueError:
        return None
    values = overlap if isinstance(overlap, list) else [overlap]
    if len(values) not in (1, 3) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1 for v in values
    ):
        return None
    return float(values[0]) if len(values) == 1 else tuple(float(v) for v in values)


def read_classes(metadata: dict) -> dict[int, str]:
    """Class names from ``network_data_format.outputs.pred.channel_def``; empty when the
    bundle names none (``class_names=`` must then name them)."""
    from .classes import check_class_names

    try:
        channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    except (KeyError, TypeError):
        return {}
    return check_class_names(channel_def)


# --- geometry per window -------------------------------------------------------------------
def _orientation(affine: Any, axcodes: str | None) -> np.ndarray | None:
    """nibabel orientation transform from the input's voxel axes (i, j, k) to ``axcodes``;
    None when nothing changes or the input has no affine."""
    if affine is None or axcodes is None:
        return None
    from nibabel import orientations as ornt

    start = ornt.io_orientation(np.asarray(affine, dtype=np.float64))
    end = ornt.axcodes2ornt(tuple(axcodes))
    transform = ornt.ornt_transform(start, end)
    identity = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return None if np.array_equal(transform, identity) else transform


class MonaiBundle(PromptSegmenter):
    """A MONAI bundle: a 3D network with named classes (see the module docstring).

    Attributes
    ----------
    class_names : dict of int to str
        From the bundle's ``channel_def`` (empty if it has none).
    bundle_roi : tuple of int
        The inferer's ``roi_size`` (network voxels, MONAI axis order).
    default_overlap : float or tuple of float
        The inferer's ``overlap`` (0.25 when it names none), along (Z, Y, X) after
        :meth:`for_input`.
    """

    name = NAME
    spatial_dims = 3
    default_roi: Any = 96

    def __init__(self, folder: Path, device: Any = "cpu") -> None:
        import torch

        folder = Path(folder)
        self.folder = folder
        self.metadata = _read_json(folder / METADATA)
        self.inference = _read_json(folder / INFERENCE)
        config = BundleConfig(self.inference, INFERENCE.name)
        self.class_names = read_classes(self.metadata)
        self.pre = read_preprocessing(config)
        self.intensity: IntensityPipeline = self.pre["intensity"]
        self.needs_moments = self.intensity.needs_moments
        self.bundle_roi = read_roi(config) or (96, 96, 96)
        self.bundle_overlap = read_overlap(config)
        network_def = self.inference.get("network_def")
        net = build_network(network_def, config)
        self.divisor = network_divisor(network_def)  # type: ignore[arg-type]  # checked above
        state, self.weights_path = load_weights(folder, weights_name(config))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise BundleError(
                f"'{self.weights_path}' does not fit network_def ({type(net).__name__}): {first}"
            ) from None
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.input_spacing: tuple[float, ...] | None = None  # (Z, Y, X) mm
        self.affine: Any = None
        self.default_roi = tuple(reversed(self.bundle_roi))  # (Z, Y, X): before for_input
        overlap = self.bundle_overlap
        self.default_overlap = 0.25 if overlap is None else overlap
        self._bound: tuple[Any, Any] | None = None  # (stats, mappings) last bound

    # --- description ---------------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "name": NAME,
            "bundle": str(self.metadata.get("name") or self.folder.name),
            "version": self.metadata.get("version"),
            "path": str(self.folder),
            "network": type(self.net).__name__,
        }

    def weight_files(self) -> list[Path]:
        return [self.folder / METADATA, self.folder / INFERENCE, self.weights_path]

    def concepts(self) -> list[str]:
        return [n for c, n in sorted((self.class_names or {}).items()) if c != 0]

    def concept_phrasings(self) -> None:
        return None  # prompts are matched to classes instead (backends.classes)

    # --- geometry ------------------------------------------------------------------------------
    def _world_axes(self) -> list[int]:
        """For each voxel axis (i, j, k) of the input, the bundle axis it becomes."""
        transform = _orientation(self.affine, self.pre["axcodes"])
        return [0, 1, 2] if transform is None else [int(a) for a in transform[:, 0]]

    def for_input(self, metadata: dict) -> MonaiBundle:
        """A copy set up for an input with this geometry: its spacing, orientation and the
        default window in its voxels (the bundle's roi at the bundle's spacing)."""
        twin = copy.copy(self)
        affine = metadata.get("affine")
        scale = metadata.get("scale")
        twin.affine = affine if affine is not None and len(scale or ()) == 3 else None
        units = [short_unit(str(u).lower()) for u in metadata.get("units") or []]
        to_mm = [_UNITS_MM.get(u) for u in units] if units else [1.0] * 3  # no units: mm
        pixdim = self.pre["pixdim"]
        twin.input_spacing = None
        if pixdim is not None:
            if scale is None or len(scale) != 3 or len(to_mm) != 3 or None in to_mm:
                warnings.warn(
                    f"the input has no voxel size in mm; the MONAI bundle expects "
                    f"{' x '.join(f'{v:g}' for v in pixdim)} mm voxels, and the input is taken "
                    "to have them (no resampling)",
                    UserWarning,
                    stacklevel=4,
                )
            else:
                twin.input_spacing = tuple(float(s) * f for s, f in zip(scale, to_mm))  # type: ignore[operator]
        world = twin._world_axes()
        roi_zyx = []
        for a_zyx in range(3):
            axis = world[2 - a_zyx]  # voxel axis i, j, k = Z, Y, X reversed
            n = self.bundle_roi[axis]
            if twin.input_spacing is not None and pixdim is not None:
                n = max(1, round(n * pixdim[axis] / twin.input_spacing[a_zyx]))
            roi_zyx.append(int(n))
        twin.default_roi = tuple(roi_zyx)
        if isinstance(self.bundle_overlap, tuple):
            twin.default_overlap = tuple(self.bundle_overlap[world[2 - a]] for a in range(3))
        return twin

    def _target_spacing(self) -> tuple[float, ...] | None:
        """The bundle's spacing along the input's (Z, Y, X), when resampling is needed."""
        if self.input_spacing is None or self.pre["pixdim"] is None:
            return None
        world = self._world_axes()
        target = tuple(self.pre["pixdim"][world[2 - a]] for a in range(3))
        same = all(math.isclose(t, s, rel_tol=1e-3) for t, s in zip(target, self.input_spacing))
        return None if same else target

    # --- the three steps -----------------------------------------------------------------------
    def check_channels(self, n_channels: int) -> None:
        expected = int(self.inference.get("network_def", {}).get("in_channels", 1))
        if n_channels != expected:
            raise ValueError(
                f"the MONAI bundle '{self.folder.name}' takes {expected} input channel(s), the "
                f"image has {n_channels}"
            )

    def pad_value(self, stats: IntensityStats) -> np.ndarray:
        """Raw value that the intensity preprocessing maps to what MONAI pads the
        preprocessed image with (``b_min`` of a lone ScaleIntensityRanged, else 0)."""
        n = len(np.atleast_1d(stats.low))
        return self.intensity.pad_value(self._mappings(stats, n), n)

    def _mappings(self, stats: IntensityStats, n_channels: int) -> Any:
        """The intensity mappings bound to ``stats`` (kept while the same stats come)."""
        if self._bound is None or self._bound[0] is not stats:
            self._bound = (stats, self.intensity.bind(stats, n_channels))
        return self._bound[1]

    def encode_prompts(self, prompts: Sequence[str]) -> None:
        return None  # the network answers for all its classes; prompts are merged after

    def preprocess(self, windows: np.ndarray, stats: IntensityStats) -> Any:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        return self.intensity.apply(x, self._mappings(stats, int(x.shape[1])))

    def predict(self, batch: Any, encoded: Any) -> np.ndarray:
        """Class logits ``(B, K, *window)`` for scaled windows ``(B, C, Z, Y, X)``."""
        import torch
        import torch.nn.functional as F

        size = tuple(int(s) for s in batch.shape[2:])
        x = batch.to(self.device)
        target = self._target_spacing()
        grid = size
        if target is not None and self.input_spacing is not None:
            grid = tuple(max(1, round(n * s / t)) for n, s, t in
                         zip(size, self.input_spacing, target, strict=True))  # fmt: skip
            x = F.interpolate(x, size=grid, mode="trilinear", align_corners=False)
        x = x.permute(0, 1, 4, 3, 2)  # (Z, Y, X) -> voxel axes (i, j, k)
        transform = _orientation(self.affine, self.pre["axcodes"])
        if transform is not None:
            flips = [2 + a for a in range(3) if transform[a, 1] < 0]
            x = torch.flip(x, flips) if flips else x
            order = np.argsort(transform[:, 0])  # bundle axis b <- voxel axis order[b]
            x = x.permute(0, 1, *(2 + int(a) for a in order))
        padded = tuple(-(-n // self.divisor) * self.divisor for n in x.shape[2:])
        pad_width = [p - n for n, p in zip(x.shape[2:], padded, strict=True)]
        if any(pad_width):
            pads = [v for w in reversed(pad_width) for v in (0, w)]
            x = F.pad(x, pads, value=self.intensity.padding())
        with torch.no_grad():
            out = self.net(x)
        if isinstance(out, (list, tuple)):  # deep supervision: the main output first
            out = out[0]
        kept = [p - w for p, w in zip(padded, pad_width, strict=True)]
        out = out[:, :, : kept[0], : kept[1], : kept[2]]
        if transform is not None:
            inverse = np.argsort(order)
            out = out.permute(0, 1, *(2 + int(a) for a in inverse))
            out = torch.flip(out, flips) if flips else out
        out = out.permute(0, 1, 4, 3, 2)  # back to (Z, Y, X)
        if target is not None:
            out = F.interpolate(out, size=size, mode="trilinear", align_corners=False)
        return out.float().cpu().numpy()


# --- the registry's side -------------------------------------------------------------------
def bundle_cache() -> Path:
    """Where Model Zoo bundles are downloaded: MONAI's default (torch hub's ``bundle``)."""
    import torch

    return Path(torch.hub.get_dir()) / "bundle"


def fetch(name: str, cache: Path | None = None) -> Path:
    """A Model Zoo bundle's folder: from the cache, else downloaded with
    ``monai.bundle.download``.

    Raises
    ------
    WeightsUnavailableError
        One line naming the bundle when it cannot be downloaded (offline, unknown name).
    """
    from .hf import WeightsUnavailableError

    cache = bundle_cache() if cache is None else cache
    folder = cache / name
    if is_bundle(folder):
        return folder
    from monai.bundle import download

    try:
        download(name=name, bundle_dir=str(cache), progress=False)
    except Exception as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise WeightsUnavailableError(
            f"MONAI bundle '{name}' is not in {cache} and could not be downloaded "
            f"({type(err).__name__}: {reason}); where there is a network, run `python -m "
            f"monai.bundle download --name {name} --bundle_dir DIR` and pass --model "
            f"DIR/{name}"
        ) from None
    if not is_bundle(folder):
        raise WeightsUnavailableError(
            f"MONAI bundle '{name}' was downloaded to {cache}, but '{folder}' is not a bundle "
            "folder"
        )
    return folder


def load(spec: str | None, *, device: Any = "cpu", dtype: Any = None) -> MonaiBundle:
    """``monai:NAME`` (Model Zoo, downloaded once) or ``monai:FOLDER`` / a bundle folder."""
    if not spec:
        raise ValueError(
            "name a MONAI bundle: monai:NAME (Model Zoo, e.g. monai:spleen_ct_segmentation) or "
            "the path of a bundle folder"
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        if not is_bundle(path):
            raise BundleError(
                f"'{path}' is not a MONAI bundle folder (it needs {METADATA} and {INFERENCE})"
            )
        return MonaiBundle(path, device=device)
    if any(sep in spec for sep in ("/", "\\")) or spec.startswith((".", "~")):
        raise ValueError(f"MONAI bundle folder '{spec}' does not exist")
    return MonaiBundle(fetch(spec), device=device)


def info() -> ModelInfo:
    return ModelInfo(
        name=NAME,
        default_id="monai:NAME",
        gives_instances=False,
        available_offline=False,
        description="MONAI Model Zoo bundles (monai:NAME, or a bundle folder): 3D networks "
        "with named classes (docs/radiology.md)",
        vocabulary="the bundle's classes (napari-llmseg models BUNDLE lists them)",
    )


BACKEND = BackendSpec(NAME, load, info, folder_layout=is_bundle)
