"""Teach: a concept learned in seconds from corrections painted on a few planes.

The user paints a corrections layer (1 = the concept, 2 = not the concept, 0 = unknown,
ignored) on some planes of an image; :func:`teach` trains a small classifier on the frozen
llmseg-tiny features and a filter bank at the painted pixels (:mod:`..backends.taught`), and
returns a model that :func:`napari_llmseg.segment` runs everywhere, window by window.

Why this and not fine-tuning the network: on three painted planes the network's own features
plus a filter bank, read by a one-hidden-layer MLP, beat both fine-tuning llmseg-tiny
(minutes) and ilastik's random forest over a filter bank, in seconds
(``python benchmarks/teach.py``, table in docs/teach.md).

Rounds build on each other (:class:`Teacher`): the features of planes whose corrections did not
change are kept, and the classifier starts from the last round's weights.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..backends.taught import (
    CONCEPT,
    NOT_CONCEPT,
    Z_CLIP,
    Classifier,
    FeatureConfig,
    FeatureExtractor,
    TaughtModel,
)
from ..options import MIN_ROI

__all__ = [
    "PlaneCorrections",
    "TeachOptions",
    "TeachStep",
    "Teacher",
    "iter_teach",
    "points_to_corrections",
    "teach",
]

#: Radius in pixels of the disk a clicked point marks on its plane.
POINT_RADIUS = 3


@dataclass(frozen=True)
class TeachOptions:
    """How the classifier trains (the defaults are the measured choice, docs/teach.md).

    Attributes
    ----------
    hidden : int
        Hidden units of the MLP.
    steps : int
        Adam steps of a first round; ``refit_steps`` for a round that starts from the last.
    batch : int
        Painted pixels per step.
    lr, weight_decay : float
    max_samples : int
        Most painted pixels kept (a class-stratified, deterministic subsample beyond).
    seed : int
    """

    hidden: int = 32
    steps: int = 1000
    refit_steps: int = 300
    batch: int = 4096
    lr: float = 1e-2
    weight_decay: float = 1e-4
    max_samples: int = 200_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "steps", "refit_steps", "batch", "max_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")


@dataclass(frozen=True)
class TeachStep:
    """Progress of :func:`iter_teach`: ``stage`` ("features" or "training"), done / total."""

    stage: str
    done: int
    total: int


@dataclass
class _Plane:
    key: str
    rows: torch.Tensor  # (N, C) features at painted pixels
    target: torch.Tensor  # (N,) 1 concept / 0 not


def _tiles(n: int, size: int) -> list[tuple[int, int]]:
    """Non-overlapping [start, stop) tiles of ``size`` covering 0..n (the last moved back)."""
    if n <= size:
        return [(0, n)]
    starts = list(range(0, n - size + 1, size))
    if starts[-1] + size < n:
        starts.append(n - size)
    return [(s, s + size) for s in starts]


def _subsample(y: torch.Tensor, most: int, seed: int) -> torch.Tensor:
    """Indices of a deterministic class-stratified subsample of at most ``most`` (a rare class
    keeps at least a tenth of ``most`` when it has that many)."""
    if len(y) <= most:
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.nonzero(y > 0.5)[:, 0], torch.nonzero(y <= 0.5)[:, 0]
    n_pos = min(len(pos), max(min(len(pos), most // 10), round(most * len(pos) / len(y))))
    n_neg = min(len(neg), most - n_pos)
    keep = [
        part[torch.randperm(len(part), generator=g)[:k]]
        for part, k in ((pos, n_pos), (neg, n_neg))
    ]
    return torch.sort(torch.cat(keep)).values


def _train(
    x: torch.Tensor,
    y: torch.Tensor,
    clip: torch.Tensor,
    opts: TeachOptions,
    steps: int,
    start: Classifier | None,
    deadline: float | None,
    cancel: threading.Event | None,
    tick: Callable[[int], None],
) -> tuple[Classifier, int]:
    """Adam on the binary cross-entropy of painted pixels -> (classifier, steps run).
    ``clip``: per channel, the bound of the standardised feature (``inf``: not clipped)."""
    gen = torch.Generator().manual_seed(opts.seed)
    torch.manual_seed(opts.seed)
    mean, std = x.mean(0), x.std(0)
    # a channel that does not vary at the painted pixels says nothing: its weights stay zero
    informative = std > 1e-6 * (1 + mean.abs())
    scale = torch.where(informative, std, torch.ones_like(std))
    z = torch.minimum((x - mean) / scale, clip).maximum(-clip)
    l1, l2 = torch.nn.Linear(x.shape[1], opts.hidden), torch.nn.Linear(opts.hidden, 1)
    if (
        start is not None
        and start.n_inputs == x.shape[1]
        and start.arrays["w1"].shape[0] == opts.hidden
    ):
        with torch.no_grad():  # warm start: the same function, on the new standardisation
            w1 = torch.from_numpy(start.arrays["w1"]) / torch.from_numpy(start.arrays["scale"])
            b1 = torch.from_numpy(start.arrays["b1"]) - w1 @ torch.from_numpy(start.arrays["mean"])
            l1.weight.copy_(w1 * scale)
            l1.bias.copy_(b1 + w1 @ mean)
            l2.weight.copy_(torch.from_numpy(start.arrays["w2"]))
            l2.bias.copy_(torch.from_numpy(start.arrays["b2"]))
    with torch.no_grad():
        l1.weight[:, ~informative] = 0
    opt = torch.optim.Adam(
        [*l1.parameters(), *l2.parameters()], lr=opts.lr, weight_decay=opts.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    size = min(opts.batch, len(y))
    done = 0
    with torch.enable_grad():
        for done in range(1, steps + 1):
            i = torch.randint(0, len(y), (size,), generator=gen)
            loss = F.binary_cross_entropy_with_logits(l2(torch.relu(l1(z[i])))[:, 0], y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if done % 50 == 0:
                tick(done)
                if cancel is not None and cancel.is_set():
                    break
                if deadline is not None and time.perf_counter() > deadline:
                    break
    with torch.no_grad():
        w1 = l1.weight.clone()
        w1[:, ~informative] = 0  # weight decay moves nothing there, but be exact
        arrays = {
            "w1": w1,
            "b1": l1.bias,
            "w2": l2.weight,
            "b2": l2.bias,
            "mean": mean,
            "scale": scale,
            "clip": clip,
        }
        return Classifier({k: v.detach().numpy().copy() for k, v in arrays.items()}), done


class Teacher:
    """Teaches one concept on one image, round after round.

    Parameters
    ----------
    base : LLMSegTiny
        The frozen model whose features are used.
    prompt : str
    stats : IntensityStats
        The whole image's intensity statistics (what the engine normalises every window with).
    roi : int
        The engine's window: training features are computed in tiles of this size.
    options : TeachOptions, optional
    features : FeatureConfig, optional
        By default every llmseg-tiny level, its known concepts and the prompt as text prior,
        and the filter bank.
    """

    def __init__(
        self,
        base: Any,
        prompt: str,
        stats: Any,
        *,
        roi: int | None = None,
        options: TeachOptions | None = None,
        features: FeatureConfig | None = None,
    ) -> None:
        self.base = base
        self.prompt = str(prompt)
        self.stats = stats
        self.roi = int(roi or base.default_roi)
        # a smaller plane is padded up to this, as the engine pads it: the window itself when
        # given, else MIN_ROI (a taught model's default window is cut to the image's extent)
        self._padded_to = int(roi) if roi else MIN_ROI
        self.options = options or TeachOptions()
        if features is None:
            prior = list(base.concepts())
            features = FeatureConfig(
                concepts=tuple(prior + ([prompt] if prompt not in prior else []))
            )
        self.features = features
        self.extractor = FeatureExtractor(base, features)
        self._planes: dict[int, _Plane] = {}
        self.model: TaughtModel | None = None
        self.rounds = 0

    def _clip(self) -> torch.Tensor:
        """Per channel, the bound of the standardised feature: :data:`Z_CLIP` for every
        channel. Measured against leaving the coarse levels unclipped (which would let their
        first layer run at their own resolution): benchmarks/teach.py's CT strokes gain (0.87
        -> 0.96 Dice) but a second round of ten clicks loses (0.46 -> 0.40 instead of 0.47 ->
        0.48, tests/napari/test_loop.py's clicks): a feature never seen varying at a few
        clicks must stay bounded."""
        return torch.full((sum(n for _, n in self.extractor.layout()),), Z_CLIP)

    def _as_engine_window(
        self, window: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A tile padded as the engine pads the window of a plane that small (MONAI's way: half
        before, with the model's pad value), and its mask, so the network sees at training time
        what it sees when the taught model runs. With its default window a taught model runs a
        small plane whole (``window_within_image``), so only a given ``roi`` or MIN_ROI pads."""
        h, w = mask.shape
        ph, pw = max(self._padded_to - h, 0), max(self._padded_to - w, 0)
        if not (ph or pw):
            return window, mask
        pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        pad = np.asarray(self.base.pad_value(self.stats), np.float32).reshape(-1)
        out = np.empty((*window.shape[:2], h + ph, w + pw), np.float32)
        out[:] = pad.reshape(1, -1, 1, 1) if pad.size == window.shape[1] else pad.reshape(-1)[0]
        out[..., pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + w] = window
        return out, np.pad(mask, pads)

    def _plane_rows(self, plane: np.ndarray, painted: np.ndarray, key: str) -> _Plane:
        """Features at the painted pixels of one plane (H, W, C), tile by tile as the engine
        presents windows, over the painted bounding box only."""
        ys, xs = np.nonzero(painted)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        height, width = painted.shape
        rows, target = [], []
        for ty0, ty1 in _tiles(height, self.roi):
            if ty1 <= y0 or ty0 >= y1:
                continue
            for tx0, tx1 in _tiles(width, self.roi):
                if tx1 <= x0 or tx0 >= x1:
                    continue
                labels = painted[ty0:ty1, tx0:tx1]
                mask = labels > 0
                if not mask.any():
                    continue
                window = np.moveaxis(plane[ty0:ty1, tx0:tx1], -1, 0)[None].astype(np.float32)
                window, mask_padded = self._as_engine_window(window, mask)
                feats = self.extractor(self.base.preprocess(window, self.stats))
                rows.append(feats.rows(torch.from_numpy(mask_padded)[None]))
                target.append(torch.from_numpy(labels[mask] == CONCEPT).float())
        return _Plane(key, torch.cat(rows), torch.cat(target))

    def iter_fit(
        self,
        read_plane: Callable[[int], np.ndarray],
        corrections: Any,
        *,
        seconds: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Generator[TeachStep, None, TaughtModel | None]:
        """Train on every painted pixel; yields progress, returns the model (None if
        cancelled). ``read_plane(z)`` gives plane z as (H, W, C); ``corrections`` is (Z, H, W)."""
        t0 = time.perf_counter()
        planes, _ = _painted(corrections)
        todo = []
        for z in planes:
            labels = np.asarray(corrections[z])
            key = hashlib.blake2b(
                np.ascontiguousarray(labels).tobytes(), digest_size=16
            ).hexdigest()
            if z not in self._planes or self._planes[z].key != key:
                todo.append((z, labels, key))
        for z in list(self._planes):
            if z not in planes:
                del self._planes[z]
        for i, (z, labels, key) in enumerate(todo):
            if cancel is not None and cancel.is_set():
                return None
            yield TeachStep("features", i, len(todo))
            self._planes[z] = self._plane_rows(np.asarray(read_plane(z)), labels, key)
        x = torch.cat([self._planes[z].rows for z in planes])
        y = torch.cat([self._planes[z].target for z in planes])
        keep = _subsample(y, self.options.max_samples, self.options.seed)
        x, y = x[keep], y[keep]
        start = self.model.classifier if self.model is not None else None
        steps = self.options.refit_steps if start is not None else self.options.steps
        deadline = None if seconds is None else t0 + float(seconds)
        progress: list[TeachStep] = []
        classifier, ran = _train(
            x,
            y,
            self._clip(),
            self.options,
            steps,
            start,
            deadline,
            cancel,
            lambda k: progress.append(TeachStep("training", k, steps)),
        )
        yield from progress
        if cancel is not None and cancel.is_set():
            return None
        self.rounds += 1
        record = {
            "prompt": self.prompt,
            "planes": [int(z) for z in planes],
            "concept_pixels": int(sum(int((self._planes[z].target > 0.5).sum()) for z in planes)),
            "other_pixels": int(sum(int((self._planes[z].target <= 0.5).sum()) for z in planes)),
            "samples_used": len(y),
            "rounds": self.rounds,
            "steps": int(ran),
            "roi": self.roi,
            "seconds": round(time.perf_counter() - t0, 2),
            "options": {k: getattr(self.options, k) for k in self.options.__dataclass_fields__},
        }
        self.model = TaughtModel(self.base, classifier, self.features, self.prompt, record)
        self.model.teacher = self  # the next round in the widget starts from here
        return self.model


class PlaneCorrections:
    """Corrections of a volume held plane by plane: only the planes painted take memory.

    What the widget gives :func:`teach` for a volume too large for one array of corrections
    (a 2000 x 4096 x 4096 stack would need 33 GB): ``shape`` (Z, Y, X), ``dtype`` uint8, and
    ``planes`` mapping a Z index to its (Y, X) corrections. ``corrections[z]`` is that plane
    (zeros when not painted); :meth:`painted_planes` lists the planes worth reading.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, shape: Sequence[int], planes: dict[int, np.ndarray] | None = None):
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 3:
            raise ValueError(f"PlaneCorrections are for volumes (Z, Y, X), got shape {shape}")
        self.planes: dict[int, np.ndarray] = {}
        for z, plane in (planes or {}).items():
            plane = np.asarray(plane)
            if not 0 <= int(z) < self.shape[0] or plane.shape != self.shape[1:]:
                raise ValueError(
                    f"plane {z} of shape {plane.shape} does not fit corrections of shape "
                    f"{self.shape}"
                )
            self.planes[int(z)] = plane.astype(np.uint8, copy=False)

    @property
    def ndim(self) -> int:
        return 3

    def __getitem__(self, z: Any) -> np.ndarray:
        if not isinstance(z, (int, np.integer)):
            raise TypeError(f"PlaneCorrections are read a plane at a time, got index {z!r}")
        if not -self.shape[0] <= int(z) < self.shape[0]:
            raise IndexError(f"plane {z} is outside {self.shape[0]} planes")
        plane = self.planes.get(int(z) % self.shape[0])
        return plane if plane is not None else np.zeros(self.shape[1:], np.uint8)

    def plane(self, z: int) -> np.ndarray:
        """Plane ``z``, stored (and so writable) from now on."""
        return self.planes.setdefault(int(z), np.zeros(self.shape[1:], np.uint8))

    def painted_planes(self) -> list[int]:
        return sorted(z for z, plane in self.planes.items() if plane.any())

    def copy(self) -> PlaneCorrections:
        return PlaneCorrections(self.shape, {z: p.copy() for z, p in self.planes.items()})


def _painted(corrections: Any) -> tuple[list[int], set[int]]:
    """Planes (Z, H, W) that hold a painted pixel, and the values painted, checking them."""
    planes: list[int] = []
    values: set[int] = set()
    candidates = getattr(corrections, "painted_planes", None)
    for z in candidates() if candidates is not None else range(corrections.shape[0]):
        labels = np.asarray(corrections[z])
        if labels.any():
            found = np.unique(labels)
            bad = np.setdiff1d(found, [0, CONCEPT, NOT_CONCEPT])
            if bad.size:
                raise ValueError(
                    f"corrections hold {bad.tolist()[:5]} on plane {z}; expected 0 (unknown), "
                    f"{CONCEPT} (the concept) and {NOT_CONCEPT} (not the concept)"
                )
            planes.append(z)
            values.update(int(v) for v in found)
    return planes, values


def _check(source: Any, corrections: Any) -> Any:
    """Corrections as (Z, H, W) matching the image's spatial shape."""
    if not hasattr(corrections, "shape") or not hasattr(corrections, "dtype"):
        corrections = np.asarray(corrections)
    spatial = tuple(source.spatial_shape)
    if tuple(corrections.shape) != spatial:
        raise ValueError(
            f"corrections have shape {tuple(corrections.shape)}, the image's "
            f"spatial shape is {spatial}"
        )
    if np.dtype(corrections.dtype).kind not in "biu":
        raise ValueError(
            f"corrections must be integer labels (0, 1, 2), got {np.dtype(corrections.dtype)}"
        )
    return corrections if len(spatial) == 3 else np.asarray(corrections)[None]


def iter_teach(
    image: Any,
    corrections: Any,
    prompt: str,
    *,
    base: Any = "llmseg-tiny",
    out: str | Path | None = None,
    overwrite: bool = False,
    seconds: float | None = None,
    channel_axis: int | None = None,
    roi_size: int | None = None,
    stats: Any = None,
    options: TeachOptions | None = None,
    previous: TaughtModel | None = None,
    device: Any = "auto",
    cancel: threading.Event | None = None,
) -> Generator[TeachStep, None, TaughtModel | None]:
    """:func:`teach`, yielding :class:`TeachStep` progress; returns the model (None if
    cancelled). ``previous`` (a model this image was taught before) makes a further round:
    unchanged planes keep their features and training starts from its weights."""
    from ..backends.registry import get_model, list_models
    from ..backends.taught import TaughtModel as Taught
    from ..backends.tiny import LLMSegTiny
    from ..engine.normalize import compute_stats
    from ..io.open import open_image
    from ..options import check_prompts
    from .folders import check_output_folder, clear_model_folder, mark_model_folder

    (prompt,) = check_prompts([prompt]) if isinstance(prompt, str) else (None,)
    if prompt is None:
        raise ValueError(f"teach takes one prompt (a string), got {prompt!r}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    if out is not None:
        check_output_folder(Path(out), overwrite, [image, corrections])
    source = open_image(image, channel_axis=channel_axis)
    labels = _check(source, corrections)
    planes, painted = _painted(labels)
    if not planes:
        raise ValueError("corrections are empty: paint 1 on the concept and 2 on what it is not")
    if not {CONCEPT, NOT_CONCEPT} <= painted:
        missing = "1 (the concept)" if CONCEPT not in painted else "2 (not the concept)"
        raise ValueError(f"corrections have no pixel painted {missing}; paint both")
    teacher = getattr(previous, "teacher", None)
    if teacher is not None and (teacher.prompt != prompt or teacher.stats is not stats):
        teacher = None  # another prompt or image: start again
    if teacher is None:
        model = base.base if isinstance(base, Taught) else base
        name = str(model).partition(":")[0] if isinstance(model, (str, Path)) else None
        if name in list_models() and name not in ("llmseg-tiny", "llmseg-taught"):
            raise ValueError(f"teach builds on llmseg-tiny (or a folder of it), got {base!r}")
        if not isinstance(model, LLMSegTiny):
            model = get_model(model, device=device)
            model = model.base if isinstance(model, Taught) else model
        if not isinstance(model, LLMSegTiny):
            raise ValueError(f"teach builds on llmseg-tiny (or a folder of it), got {base!r}")
        model.check_channels(source.n_channels)
        teacher = Teacher(
            model,
            prompt,
            stats if stats is not None else compute_stats(source),
            roi=roi_size,
            options=options,
        )
    spatial = len(source.spatial_shape)

    def read_plane(z: int) -> np.ndarray:  # (H, W, C)
        if spatial == 2:
            return source.read((slice(None), slice(None)))
        return source.read((slice(z, z + 1), slice(None), slice(None)))[0]

    taught = yield from teacher.iter_fit(read_plane, labels, seconds=seconds, cancel=cancel)
    if taught is not None and out is not None:
        folder = Path(out)
        check_output_folder(folder, overwrite, [image, corrections])
        if folder.exists():
            clear_model_folder(folder)
        else:
            folder.mkdir(parents=True)
        taught.save(folder)
        mark_model_folder(folder, "teach", {"prompt": prompt})
    return taught


def teach(
    image: Any,
    corrections: Any,
    prompt: str,
    *,
    base: Any = "llmseg-tiny",
    out: str | Path | None = None,
    overwrite: bool = False,
    seconds: float | None = None,
    channel_axis: int | None = None,
    roi_size: int | None = None,
    progress: Callable[[TeachStep], None] | None = None,
    cancel: threading.Event | None = None,
    device: Any = "auto",
    **kwargs: Any,
) -> TaughtModel | None:
    """Teach a model what ``prompt`` means from corrections painted on a few planes.

    Parameters
    ----------
    image : array-like or path
        A 2D image or 3D volume (numpy, dask, zarr, or a path the package opens).
    corrections : array-like
        Integer labels with the image's spatial shape: 1 = the concept, 2 = not the concept,
        0 = unknown (ignored). Only painted planes are read from the image.
    prompt : str
        The concept's name; the taught model answers it, and llmseg-tiny any other prompt.
    base : str, Path or model
        The llmseg-tiny model whose features are used (the embedded one by default).
    out : path, optional
        Save the model there as a model folder (safetensors, config.json with the painted
        planes and pixels per class) that ``segment(model=out)``, ``--model out`` and the
        widget load. An existing folder needs ``overwrite=True`` and must be one this package
        wrote.
    seconds : float, optional
        Time budget; training stops early when it is spent.
    channel_axis : int, optional
        The image's channel axis (RGB).
    roi_size : int, optional
        The window size the model will run with (default: llmseg-tiny's).
    progress : callable, optional
        Called with each :class:`TeachStep`.
    cancel : threading.Event, optional
        Set it to stop; then None is returned and nothing is saved.

    Returns
    -------
    TaughtModel or None
        Use it as ``segment(image, prompt, model=taught)``.

    Examples
    --------
    >>> from napari_llmseg import segment, teach
    >>> corrections = np.zeros(volume.shape, np.uint8)
    >>> corrections[40][mask40] = 1; corrections[40][ring40] = 2   # doctest: +SKIP
    >>> taught = teach(volume, corrections, "cerebellum", out="cerebellum-model")  # doctest: +SKIP
    >>> result = segment(volume, "cerebellum", model=taught)  # doctest: +SKIP
    """
    from ..engine.stream import drain

    gen = iter_teach(
        image,
        corrections,
        prompt,
        base=base,
        out=out,
        overwrite=overwrite,
        seconds=seconds,
        channel_axis=channel_axis,
        roi_size=roi_size,
        cancel=cancel,
        device=device,
        **kwargs,
    )
    return drain(gen, progress)


def labels_to_corrections(labels: np.ndarray, planes: Sequence[int] | None = None) -> np.ndarray:
    """Fully labelled planes as corrections: 1 where labelled, 2 elsewhere on those planes
    (every labelled plane when ``planes`` is None), 0 on the others."""
    labels = np.asarray(labels)
    vol = labels if labels.ndim == 3 else labels[None]
    chosen = [z for z in range(vol.shape[0]) if vol[z].any()] if planes is None else list(planes)
    out = np.zeros(vol.shape, np.uint8)
    for z in chosen:
        out[z] = np.where(vol[z] > 0, CONCEPT, NOT_CONCEPT)
    return out if labels.ndim == 3 else out[0]


def points_to_corrections(
    points: Any,
    kinds: Any,
    shape: Sequence[int],
    *,
    radius: int = POINT_RADIUS,
    corrections: Any = None,
) -> np.ndarray:
    """Clicked points as corrections: a disk of ``radius`` pixels on the point's plane, 1 (the
    concept) or 2 (not the concept) as ``kinds`` says, over ``corrections`` (a copy; zeros when
    None; a :class:`PlaneCorrections` when one is given). A point marks its plane only: clicks
    are 2D, as strokes are.

    Parameters
    ----------
    points : array-like, (N, len(shape))
        Pixel coordinates (a napari Points layer's ``data`` when it has the image's scale and
        translation), (Z, Y, X) or (Y, X).
    kinds : array-like of int or str, (N,)
        1 or "concept", 2 or "not concept" for each point.
    shape : sequence of int
        The image's spatial shape.
    """
    shape = tuple(int(n) for n in shape)
    pts = np.asarray(points, dtype=float) if len(points) else None
    if pts is not None and (pts.ndim != 2 or pts.shape[1] != len(shape)):
        raise ValueError(
            f"points must be (N, {len(shape)}) coordinates for an image of shape {shape}, "
            f"got an array of shape {pts.shape}"
        )
    names = {"concept": CONCEPT, "not concept": NOT_CONCEPT, CONCEPT: CONCEPT,
             NOT_CONCEPT: NOT_CONCEPT}  # fmt: skip
    values = []
    for k in list(kinds):
        key = k.item() if isinstance(k, np.generic) else k
        if key not in names:
            raise ValueError(f"point kind {k!r} is not 1 / 'concept' or 2 / 'not concept'")
        values.append(names[key])
    n = 0 if pts is None else len(pts)
    if len(values) != n:
        raise ValueError(f"got {n} points but {len(values)} kinds")
    sparse = isinstance(corrections, PlaneCorrections)
    out: Any
    if sparse:
        out = corrections.copy()
    else:
        out = np.zeros(shape, np.uint8) if corrections is None else np.array(corrections, np.uint8)
    if out.shape != shape:
        raise ValueError(f"corrections have shape {out.shape}, the image's shape is {shape}")
    if pts is None:
        return out
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy**2 + xx**2 <= r * r
    for p, value in zip(np.rint(pts).astype(int), values, strict=True):
        if np.any(p < 0) or np.any(p >= shape):
            raise ValueError(f"point {tuple(p.tolist())} is outside the image of shape {shape}")
        *lead, y, x = p
        plane = out.plane(lead[0]) if sparse else (out[tuple(lead)] if lead else out)
        y0, y1 = max(0, y - r), min(plane.shape[0], y + r + 1)
        x0, x1 = max(0, x - r), min(plane.shape[1], x + r + 1)
        d = disk[y0 - y + r : y1 - y + r, x0 - x + r : x1 - x + r]
        plane[y0:y1, x0:x1][d] = value
    return out
