"""The options of a segmentation run: one frozen, validated object for the API, CLI and widget.

:class:`SegmentOptions` checks every value when it is made, so a bad value fails before any
file is opened or any output written, with a message naming the value and what was expected.
Checks that need the image (a window larger than the image, physical sizes without a pixel
size, a 3D window on a 2D image) happen when the run is planned (:mod:`napari_llmseg.api`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

#: Smallest window edge of a model backend (a callable model takes windows of any size).
MIN_ROI = 16
#: Window overlap when neither the caller nor the model names one.
DEFAULT_OVERLAP = 0.25
#: Smallest output chunk edge.
MIN_CHUNK = 16

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A non-empty list of distinct, non-blank prompts (stripped)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty string or list of strings, got {prompts!r}")
    out = []
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"every prompt must be a string, got {p!r} ({type(p).__name__})")
        if not p.strip():
            raise ValueError(f"prompts must not be empty or blank, got {p!r}")
        out.append(p.strip())
    dupes = sorted({p for p in out if out.count(p) > 1})
    if dupes:
        raise ValueError(
            f"each prompt must be given once; repeated: {', '.join(map(repr, dupes))}"
        )
    return out


def _number(name: str, value: Any, lo: float, hi: float, *, hi_open: bool) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    ok = lo <= v < hi if hi_open else lo <= v <= hi
    if not ok or math.isnan(v):
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in [{lo}, {hi}{bracket}, got {value!r}")
    return v


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def _int(name: str, value: Any, lo: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _roi(value: Any, backend: bool) -> int | tuple[int | None, ...] | None:
    """An int, or a sequence of ints and Nones; None or <= 0: the image's extent (MONAI)."""
    if value is None:
        return None
    scalar = np.isscalar(value)
    try:
        items = (value,) if scalar else tuple(value)
    except TypeError:
        items = ()
    if not items or isinstance(value, str) or not all(r is None or _is_int(r) for r in items):
        raise ValueError(
            "roi_size must be an int or a sequence of ints (None or <= 0: the image's extent "
            f"along that axis), got {value!r}"
        )
    if backend and any(r is not None and 0 < r < MIN_ROI for r in items):
        raise ValueError(
            f"roi_size must be at least {MIN_ROI} pixels, got {value!r} (a model backend's "
            "windows; a callable model takes any size)"
        )
    return int(value) if scalar else tuple(None if r is None else int(r) for r in items)


def _numbers(
    name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False
) -> float | tuple[float, ...]:
    """A number, or a non-empty sequence of numbers, each in [lo, hi) (or (lo, hi))."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        items, scalar = (value,), True
    else:
        items, scalar = tuple(value), False
    if not items:
        raise ValueError(f"{name} must be a number or one number per window axis, got {value!r}")
    out = []
    for v in items:
        if isinstance(v, bool):
            raise TypeError(f"{name} must be a number or one per window axis, got {value!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be a number or one per window axis, got {value!r}"
            ) from None
        low_ok = lo < f if lo_open else lo <= f
        if not (low_ok and f < hi):
            what = f"> {lo}" if lo_open and hi == math.inf else f"in [{lo}, {hi})"
            axes = "" if scalar else " on every window axis"
            raise ValueError(f"{name} must be {what}{axes}, got {value!r}")
        out.append(f)
    return out[0] if scalar else tuple(out)


def _is_backend_spec(model: Any) -> bool:
    """Whether ``model`` names or is a backend (which has a smallest window), not a callable."""
    from .engine.predictor import is_backend

    return model is None or isinstance(model, (str, Path)) or is_backend(model)


def check_scheduler(scheduler: Any) -> None:
    """Refuse a scheduler= that is neither ``"local:N"`` (N >= 1), an address such as
    ``"tcp://host:8786"``, nor a ``distributed.Client`` (checked without importing it)."""
    if scheduler is None or type(scheduler).__name__ == "Client":
        return
    if isinstance(scheduler, str) and scheduler.startswith("local:"):
        n = scheduler.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"scheduler {scheduler!r}: expected 'local:N' with N >= 1 workers")
        return
    if isinstance(scheduler, str) and "://" in scheduler:
        return
    raise ValueError(
        f"scheduler must be 'local:N', a scheduler address such as 'tcp://host:8786', or a "
        f"distributed.Client; got {scheduler!r}"
    )


def _probabilities(value: Any) -> str | None:
    from .engine.store import PROBABILITY_KINDS

    if value is True:
        return "float32"
    if value is None or value is False:
        return None
    if not isinstance(value, str) or value not in PROBABILITY_KINDS:
        raise ValueError(
            f"probabilities must be one of {', '.join(PROBABILITY_KINDS)} (or True for float32), "
            f"got {value!r}"
        )
    return value


def _path(name: str, value: Any) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise TypeError(f"{name} must be a path, got {value!r}")
    return Path(value)


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment: window, model, output and post-processing options.

    Every option of :func:`napari_llmseg.segment` (and ``napari-llmseg segment``); made once,
    checked once, never changed (``dataclasses.replace`` makes a modified copy).

    Parameters
    ----------
    model : None, str, PathLike, PromptSegmenter or callable
        None for the embedded ``llmseg-tiny``; a name from :func:`list_models`; a local model
        folder; a loaded backend; or a callable (a function or a ``torch.nn.Module``, e.g. a
        MONAI network) taking a float32 torch tensor (B, C, *roi) of raw (un-normalised)
        pixels and returning logits (B, P, *roi), one channel per prompt in order. It is
        called ``f(batch, prompts)`` when it takes two positional arguments without defaults
        (or has a ``prompts`` parameter: ``f(batch, prompts=prompts)``), else ``f(batch)``; a
        tuple/list or dict output gives its first item (see ``output_key``). See
        ``docs/windows.md``. With ``class_names``, it returns one channel per class instead.
    class_names : mapping of int to str, or sequence of str, optional
        For a model with fixed classes (``{1: "liver", 2: "kidney_right"}``; a list names
        channels 0, 1, ...): the model returns one output channel per class (logits, or
        softmax probabilities), and each prompt is matched to the classes it means, by words
        ("kidneys" -> both kidney classes) or by meaning with the text encoder; their
        probabilities (a softmax over all classes) are summed into the prompt's. A prompt
        matching no class is refused, naming the nearest. A MONAI bundle names its own classes
        (these rename some of them). See ``docs/radiology.md`` and
        :mod:`napari_llmseg.backends.classes`.
    roi_size : int or tuple of int, optional
        Window size (default: the model's, 256 for llmseg-tiny). An int gives the model's
        windows (2D for every bundled backend and for callables); a tuple gives one entry per
        window axis, the image's last ``len(roi_size)`` spatial axes, so ``(96, 96, 96)``
        runs 3D windows over a volume and ``(256, 256)`` 2D windows plane by plane (leading
        axes are taken one index at a time). Entries that are None or <= 0 mean the image's
        extent along that axis, as in MONAI. At least 16 for a model backend; any size for a
        callable. Windows larger than the image are padded, as in MONAI.
    overlap : float or tuple of float, optional
        Overlap of neighbouring windows, in [0, 1): one for every window axis or one per axis.
        Default: the model's (a MONAI bundle's inferer ``overlap``), else 0.25.
    batch_size : int
        Windows per model call; windows of different planes share batches.
    blend : {"gaussian", "constant"}
        Weighting of overlapping windows (MONAI's ``mode``); logits are blended, then the
        sigmoid is applied.
    sigma_scale : float or tuple of float
        With ``blend="gaussian"``, the gaussian's standard deviation as a fraction of the
        window size (MONAI's ``sigma_scale``, default 0.125): one for every axis or one per
        axis, > 0.
    cval : float, optional
        Raw value given to pixels outside the image (windows larger than the image) and to
        non-finite or nodata pixels, before the model sees them (MONAI's ``cval``). Default:
        0 for a callable model (as MONAI), the backend's own (the low percentile) for a
        backend.
    output_key : int or str, optional
        For a callable model that returns a tuple/list or dict (deep supervision, several
        heads): which output to blend, by index or key. Default: the first.
    threshold : float
        Probability above which a pixel is labelled; where several prompts pass, the most
        probable wins.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    channel_axis : int, optional
        Axis of the image that holds channels; without it every axis is spatial.
    bands : sequence of int or str, or str, optional
        Bands of a (Geo)TIFF to segment, by 1-based index or description, e.g. ``"3,2,1"``
        for true colour on Landsat 5/7 (``"4,3,2"`` on Landsat 8/9); for a list of band
        files, numbered across the files.
    window : str or (float, float), optional
        CT window replacing the percentile normalisation: a preset (``"bone"``,
        ``"soft-tissue"``, ``"lung"``, ``"brain"``), ``"L,W"`` or ``(level, width)`` in HU.
    out : str or PathLike, optional
        Where to write the result; without it the result is returned in memory. A ``.zarr``
        store (or a path without suffix) receives ``labels`` and ``probabilities`` chunk by
        chunk. A ``.tif``/``.tiff`` file gets the labels as a Cloud-Optimised GeoTIFF with the
        input's CRS and transform, 255 where the input had no data, and an ``.aux.xml``
        sidecar naming the classes (a plain TIFF for inputs without georeferencing); a
        ``.nii``/``.nii.gz`` file gets them as NIfTI with the input's affine. Both are written
        from a working store ``out + ".zarr"`` once the run (and any post-processing) is
        complete (see ``docs/formats.md``).
    resume : bool
        Complete an interrupted run in ``out``: only chunks not yet written are computed,
        and the result is identical to an uninterrupted run.
    overwrite : bool
        Replace an existing ``out`` (only a napari-llmseg store or an empty folder).
    chunks : int, optional
        Output chunk edge along every window axis (default 512 x 512 for 2D windows,
        32 x 256 x 256 for 3D windows: shallow along Z, which bounds the open chunks).
    instances : bool
        Also label objects: ``result.instances`` gives every connected object of one class a
        single id across the whole input (chunk by chunk, identical to labelling the whole
        array at once), and ``result.instance_classes`` maps ids to prompts.
    split : bool
        With ``instances=True``, split touching objects of one class by a watershed from the
        peaks of their (smoothed) distance transform, instead of one id per connected region.
    min_size : float or str
        Remove objects smaller than this: a number of pixels (voxels), or a physical size
        such as ``"20 um^3"`` or ``"0.5 mL"`` when the image has a scale with units.
    fill_holes : bool
        Fill background enclosed by one class, plane by plane (holes up to the output chunk
        plus 64 px on each side).
    smooth : int
        Radius in pixels of a morphological opening of every class (0: none).
    scheduler : None, str or distributed.Client
        Run on Dask's distributed scheduler: ``"local:N"`` (a local cluster of N
        single-threaded worker processes), a scheduler address (``"tcp://host:8786"``) or a
        ``Client``. Needs ``out=`` on storage every worker can reach. The result is
        bit-identical to a single-process run with the same torch thread count.
    probabilities : {None, "none", "uint8", "float16", "float32"} or bool
        How a result store keeps the probabilities: quantised to uint8 (``round(p * 255)``,
        the default: a quarter of float32's size), float16, float32, or not at all
        (``"none"``: the store then holds labels only). Given explicitly with a TIFF or NIfTI
        ``out=``, they are also written to ``{stem}_probabilities{suffix}`` (one band or
        volume per prompt, float32). ``True`` is ``"float32"``; ``False`` the default.
    vector : str or PathLike, optional
        Also write polygons of the labels (2D inputs) to a ``.gpkg`` or ``.geojson`` file, in
        the input's CRS, with fields label, value and area.
    simplify : float, optional
        Simplify the ``vector`` polygons with this tolerance in CRS units.
    report : bool
        With ``out=``, write the HTML report ``{stem}_report.html`` beside the output when
        the run completes (:mod:`napari_llmseg.report`); nothing is written without ``out=``.
    """

    model: Any = None
    roi_size: int | tuple[int | None, ...] | None = None
    overlap: float | tuple[float, ...] | None = None
    batch_size: int = 4
    blend: str = "gaussian"
    sigma_scale: float | tuple[float, ...] = 0.125
    cval: float | None = None
    output_key: int | str | None = None
    class_names: Any = None
    threshold: float = 0.5
    device: str = "auto"
    channel_axis: int | None = None
    bands: Any = None
    window: Any = None
    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    chunks: int | None = None
    instances: bool = False
    split: bool = False
    min_size: float | str = 0
    fill_holes: bool = False
    smooth: int = 0
    scheduler: Any = None
    probabilities: str | bool | None = None
    vector: Path | None = None
    simplify: float | None = None
    report: bool = True

    def __post_init__(self) -> None:
        from .engine.normalize import parse_window
        from .engine.windows import BlendMode
        from .io.write import output_kind
        from .postprocess.cleanup import check_size

        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        backend = _is_backend_spec(self.model)
        put("roi_size", _roi(self.roi_size, backend))
        if self.overlap is not None:
            put("overlap", _numbers("overlap", self.overlap, 0.0, 1.0))
        put("sigma_scale", _numbers("sigma_scale", self.sigma_scale, 0.0, math.inf, lo_open=True))
        if self.cval is not None:
            put("cval", _finite("cval", self.cval))
        if self.class_names is not None:
            from .backends.classes import check_class_names

            put("class_names", check_class_names(self.class_names))
        if self.output_key is not None:
            if backend:
                raise ValueError(
                    f"output_key={self.output_key!r} picks an output of a callable model; a "
                    "model backend returns one"
                )
            if isinstance(self.output_key, bool) or not isinstance(
                self.output_key, (int, np.integer, str)
            ):
                raise TypeError(f"output_key must be an int or a str, got {self.output_key!r}")
            if isinstance(self.output_key, np.integer):
                put("output_key", int(self.output_key))
        put("threshold", _number("threshold", self.threshold, 0.0, 1.0, hi_open=False))
        put("batch_size", _int("batch_size", self.batch_size, 1, "a positive integer"))
        try:
            put("blend", BlendMode(self.blend).value)
        except ValueError:
            raise ValueError(
                f"blend must be 'gaussian' or 'constant', got {self.blend!r}"
            ) from None
        device = "auto" if self.device is None else str(self.device).strip().lower()
        if not _DEVICE_RE.match(device):
            raise ValueError(
                f"unknown device {self.device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or "
                "'mps'"
            )
        put("device", device)
        if self.channel_axis is not None:
            put("channel_axis", _int("channel_axis", self.channel_axis, -(2**31), "an integer"))
        if self.window is not None:
            put("window", parse_window(self.window))
        if self.chunks is not None:
            put("chunks", _int("chunks", self.chunks, MIN_CHUNK, f"an integer >= {MIN_CHUNK}"))
        put("smooth", _int("smooth", self.smooth, 0, "a radius in pixels (an integer >= 0)"))
        check_size(self.min_size)
        put("out", _path("out", self.out))
        if self.out is not None:
            output_kind(self.out)  # an unsupported suffix fails before any work
        put("vector", _path("vector", self.vector))
        put("probabilities", _probabilities(self.probabilities))
        flags = ("resume", "overwrite", "instances", "split", "fill_holes",
                 "report")  # fmt: skip
        for flag in flags:
            put(flag, bool(getattr(self, flag)))
        if self.split and not self.instances:
            raise ValueError("split=True (--split) separates objects: it needs instances=True "
                             "(--instances)")  # fmt: skip
        check_scheduler(self.scheduler)
        if self.scheduler is not None and self.out is None:
            raise ValueError(
                "scheduler= needs out=: a zarr store on storage that every worker can reach"
            )
        if self.vector is not None:
            from .io.vector import vector_driver

            vector_driver(self.vector)
        if self.simplify is not None:
            if self.vector is None:
                raise ValueError("simplify= applies to vector output; add vector='out.gpkg'")
            put("simplify", _number("simplify", self.simplify, 0.0, math.inf, hi_open=True))

    @property
    def stored_probabilities(self) -> str:
        """How the result store keeps probabilities ("none", "uint8", "float16", "float32")."""
        from .engine.store import DEFAULT_PROBABILITIES

        return str(self.probabilities or DEFAULT_PROBABILITIES)

    @property
    def probability_file(self) -> bool:
        """Whether a TIFF or NIfTI output gets a probabilities file beside it."""
        return self.probabilities not in (None, "none")

    @classmethod
    def build(cls, options: SegmentOptions | None = None, **changes: Any) -> SegmentOptions:
        """``options`` (or the defaults) with ``changes`` applied, checked.

        Raises
        ------
        TypeError
            For a name that is not an option; the message lists the options.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"options are: {', '.join(sorted(names))}"
            )
        if options is None:
            return cls(**changes)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a SegmentOptions, got {type(options).__name__}")
        return dataclasses.replace(options, **changes) if changes else options

    def to_record(self) -> dict[str, Any]:
        """The options as JSON values, for provenance (models and schedulers by name)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif f.name == "class_names" and value is not None:
                value = {str(k): v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            elif value is not None and not isinstance(value, (str, int, float, bool, list)):
                value = type(value).__name__
            out[f.name] = value
        return out
