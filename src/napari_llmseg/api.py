"""``segment()``: the one headless entry point.

:func:`iter_segment` is the same run as a generator that yields :class:`Progress` after every
batch and returns the :class:`SegmentationResult`; the napari widget drives it from a worker
thread, :func:`segment` drains it and calls ``progress``.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .engine.instances import (
    InstanceResult,
    WindowStitcher,
    label_instances,
    semantic_source,
    split_instances,
)
from .engine.normalize import IntensityStats, compute_stats, parse_window
from .engine.resume import SCRATCH_ARRAYS, OutputStore, check_output_path
from .engine.stream import MemorySink, Progress, RunInfo, run
from .engine.windows import MIN_ROI, BlendMode, WindowPlan, importance_map
from .io.image import open_image
from .postprocess import PostProcess, label_dtype, parse_size

#: Output chunk edge along the window axes, for 2D and 3D windows. 512 x 512 is the tile of
#: most OME-Zarr and COG writers; against 256 x 256 it halves the CPU the writer and zarr's
#: codec threads spend per window (benchmarks/dask_scaling.py --chunks). 3D chunks stay at
#: 256 voxels a side: their blending accumulators are held whole while they fill.
DEFAULT_CHUNK = {2: 512, 3: 256}


@dataclass
class SegmentationResult:
    """Output of :func:`segment`.

    Attributes
    ----------
    probabilities : (P, *spatial) float32 array
        Per-prompt probabilities; a numpy array, or a zarr array when ``out=`` was given.
    labels : (*spatial) uint8 or uint16 array
        0 for background, ``i`` for ``prompts[i - 1]``.
    label_names : dict of int to str
        ``{i: prompt}``.
    prompts : list of str
    out : Path or None
        The zarr store holding the result, if any (for a TIFF or NIfTI ``out=``, its working
        store ``out + ".zarr"``).
    complete : bool
        False when the run was cancelled; with ``out=`` it can be resumed.
    info : RunInfo
        Windows and batches run, time spent in the model, chunks written, and the batch size
        in effect at the end (lower than asked after a GPU out-of-memory error).
    stats : IntensityStats
        The whole-input intensity statistics the model saw.
    metadata : dict
        Parameters and provenance, as recorded in the store.
    instances : (*spatial) uint32 array or None
        With ``instances=True``: one id per object across the whole input (0: background).
    instance_classes : dict of int to str or None
        ``{id: prompt}`` for every object.
    files : list of Path
        Final files written for a TIFF or NIfTI ``out=`` (labels, then probabilities).
    """

    probabilities: Any
    labels: Any
    label_names: dict[int, str]
    prompts: list[str]
    out: Path | None
    complete: bool
    info: RunInfo
    stats: IntensityStats
    metadata: dict = field(default_factory=dict)
    instances: Any = None
    instance_classes: dict[int, str] | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        return not self.complete

    def summary(self) -> list[str]:
        """One line per prompt: labelled voxels (pixels in 2D), fraction of the image, the
        area or volume when the input has a physical pixel size (plus mL for volumes in
        mm^3), and objects if counted."""
        from .measure import physical_size

        source = self.metadata.get("source_metadata", {})
        labels = self.labels
        total = math.prod(labels.shape)
        counts = np.zeros(len(self.prompts) + 1, dtype=np.int64)
        # Count chunk by chunk so that a zarr-backed result is never loaded whole.
        step = max(1, (1 << 24) // max(1, math.prod(labels.shape[1:])))
        for i in range(0, labels.shape[0], step):
            block = np.asarray(labels[i : i + step])
            counts += np.bincount(block.ravel(), minlength=len(counts))[: len(counts)]
        objects: dict[str, int] = {}
        if self.instance_classes is not None:
            for prompt in self.instance_classes.values():
                objects[prompt] = objects.get(prompt, 0) + 1
        lines = []
        what = "voxels" if len(labels.shape) == 3 else "pixels"
        for i, name in self.label_names.items():
            line = f"{name}: {counts[i]} {what} ({100.0 * counts[i] / total:.2f} %)"
            size = physical_size(
                int(counts[i]), source.get("scale"), source.get("units"), len(labels.shape)
            )
            if size is not None:
                value, unit, ml = size
                line += f", {value:.6g} {unit}" + (f" = {ml:.4g} mL" if ml is not None else "")
            if self.instance_classes is not None:
                line += f", {objects.get(name, 0)} objects"
            lines.append(line)
        return lines


class _BackendPredictor:
    """Adapts a PromptSegmenter to the engine's Predictor protocol."""

    def __init__(
        self, backend, prompts: list[str], stats: IntensityStats, encoded: Any = None
    ) -> None:
        self.backend, self.stats = backend, stats
        self.encoded = backend.encode_prompts(prompts) if encoded is None else encoded
        self.n_outputs = len(prompts)

    @property
    def batch_limit(self) -> int | None:
        return self.backend.batch_limit

    def pad_value(self) -> np.ndarray:
        return self.backend.pad_value(self.stats)

    def prepare(self, raw: np.ndarray) -> Any:
        return self.backend.preprocess(raw, self.stats)

    def predict(self, prepared: Any) -> np.ndarray:
        return np.asarray(self.backend.predict(prepared, self.encoded), dtype=np.float32)

    def predict_with_instances(self, prepared: Any) -> tuple[np.ndarray, list]:
        logits, found = self.backend.predict_with_instances(prepared, self.encoded)
        return np.asarray(logits, dtype=np.float32), found


class _CallablePredictor:
    """A plain ``f(batch, prompts) -> logits`` callable: raw float32 input, no normalisation."""

    def __init__(self, fn: Callable, prompts: list[str], n_channels: int, device) -> None:
        self.fn, self.prompts, self.device = fn, prompts, device
        self.n_outputs = len(prompts)
        self._pad = np.zeros(n_channels, dtype=np.float32)

    def pad_value(self) -> np.ndarray:
        return self._pad  # MONAI pads with 0

    def prepare(self, raw: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(raw).to(self.device)

    def predict(self, prepared: Any) -> np.ndarray:
        out = self.fn(prepared, self.prompts)
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)


def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
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


def _check_number(name: str, value: Any, lo: float, hi: float, *, hi_open: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    ok = lo <= v < hi if hi_open else lo <= v <= hi
    if not ok or math.isnan(v):
        bracket = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in [{lo}, {hi}{bracket}, got {value!r}")
    return v


def _roi_tuple(roi_size: Any, default: int, dims: int) -> tuple[int, ...]:
    given = default if roi_size is None else roi_size
    roi: tuple[Any, ...] = (given,) * dims if np.isscalar(given) else tuple(given)  # type: ignore[arg-type]
    if len(roi) != dims or not all(isinstance(r, (int, np.integer)) for r in roi):
        raise ValueError(f"roi_size must be an int or {dims} ints, got {roi_size!r}")
    if any(r < MIN_ROI for r in roi):
        raise ValueError(f"roi_size must be at least {MIN_ROI} pixels, got {roi_size!r}")
    return tuple(int(r) for r in roi)


def _resolve_model(model: Any, device: str):
    """-> (backend or None, callable or None, description dict)."""
    from .backends.base import PromptSegmenter
    from .backends.registry import get_model

    if isinstance(model, PromptSegmenter):
        return model, None, model.describe()
    if model is None or isinstance(model, (str, Path)):
        backend = get_model(model, device=device)
        return backend, None, backend.describe()
    if callable(model):
        name = getattr(model, "__qualname__", type(model).__name__)
        return (
            None,
            model,
            {"name": "callable", "callable": f"{getattr(model, '__module__', '')}.{name}"},
        )
    raise TypeError(
        "model must be None, a model name, a folder path, a backend object or a callable "
        f"f(batch, prompts) -> logits; got {type(model).__name__}"
    )


def iter_segment(
    image: Any,
    prompts: str | Sequence[str],
    *,
    model: Any = None,
    roi_size: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    blend: str = "gaussian",
    threshold: float = 0.5,
    device: str = "auto",
    channel_axis: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    cancel: threading.Event | None = None,
    chunks: int | None = None,
    instances: bool = False,
    min_size: float | str = 0,
    fill_holes: bool = False,
    smooth: int = 0,
    split: bool = False,
    scheduler: Any = None,
    bands: Sequence[int | str] | str | None = None,
    window: str | Sequence[float] | None = None,
    probabilities: bool = False,
) -> Generator[Progress, None, SegmentationResult]:
    """Generator form of :func:`segment`: yields Progress, returns the SegmentationResult."""
    from .device import resolve_device
    from .io import output

    prompts = _check_prompts(prompts)
    if not isinstance(smooth, (int, np.integer)) or smooth < 0:
        raise ValueError(f"smooth must be a radius in pixels (an integer >= 0), got {smooth!r}")
    overlap = _check_number("overlap", overlap, 0.0, 1.0, hi_open=True)
    threshold = _check_number("threshold", threshold, 0.0, 1.0, hi_open=False)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    try:
        blend_mode = BlendMode(blend)
    except ValueError:
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}") from None
    window_lw = parse_window(window) if window is not None else None
    if out is not None:
        output.output_kind(out)  # an unsupported suffix fails before any work
    torch_device = resolve_device(device)
    if scheduler is not None and out is None:
        raise ValueError(
            "scheduler= needs out=: a zarr store on storage that every worker can reach"
        )
    source = open_image(image, channel_axis=channel_axis, bands=bands)
    backend, fn, model_desc = _resolve_model(model, str(torch_device))
    if window_lw is not None:
        if backend is None:
            raise ValueError(
                "window= sets the intensity range a model backend normalises with; a callable "
                "model gets raw pixels, so apply the window inside it"
            )
        modality = source.metadata.get("modality")
        if modality not in (None, "CT"):
            warnings.warn(
                f"window={window!r} is in Hounsfield units (CT), but the input's modality is "
                f"{modality}",
                UserWarning,
                stacklevel=2,
            )
    if backend is not None:
        backend.check_channels(source.n_channels)
    dims = backend.spatial_dims if backend is not None else 2
    roi = _roi_tuple(roi_size, backend.default_roi if backend is not None else 256, dims)
    shape = source.spatial_shape
    if len(shape) < dims:
        raise ValueError(f"a {dims}D model needs at least {dims} spatial axes, image has {shape}")
    n_lead = len(shape) - dims
    chunk_edge = DEFAULT_CHUNK.get(dims, 256) if chunks is None else int(chunks)
    out_chunks = (1,) * n_lead + tuple(min(chunk_edge, s) for s in shape[n_lead:])
    plan = WindowPlan(shape, roi, overlap, out_chunks)

    attrs = {
        "version": __version__,
        "prompts": prompts,
        "label_names": {str(i + 1): p for i, p in enumerate(prompts)},
        "model": model_desc,
        "input": source.name,
        "input_shape": list(shape),
        "input_dtype": str(source.dtype),
        "channel_axis": channel_axis,
        "roi_size": list(roi),
        "overlap": overlap,
        "batch_size": int(batch_size),
        "blend": blend_mode.value,
        "threshold": threshold,
        "chunks": list(out_chunks),
        "source_metadata": {k: v for k, v in source.metadata.items() if _is_json(v)},
        "bands": source.metadata.get("band_indexes") if bands is not None else None,
        "window": list(window_lw) if window_lw is not None else None,
    }
    n_spatial = len(shape)
    post = PostProcess(
        smooth=int(smooth),
        fill_holes=bool(fill_holes),
        min_size=parse_size(
            min_size,
            scale=source.metadata.get("scale"),
            units=source.metadata.get("units"),
            ndim=n_spatial,
        ),
    )
    attrs["instances"] = bool(instances)
    attrs["postprocess"] = {**post.to_dict(), "split": bool(split)}

    store = None
    done = None
    stats: IntensityStats | None = None
    out_path = Path(out) if out is not None else None
    final = out_path
    final_files: list[Path] = []
    if final is not None:
        final_files = output.final_files(final, probabilities=probabilities)
        out_path = output.working_store(final)
        attrs["output"] = {"path": str(final), "format": output.output_kind(final)}
    if out_path is not None:
        action = check_output_path(
            out_path, input_path=source.path, overwrite=overwrite, resume=resume
        )
        output.check_final_files(
            final_files,
            input_path=source.path,
            overwrite=overwrite,
            resume_existing=action == "resume",
        )
        if action == "resume":
            store, stored = OutputStore.open_for_resume(out_path, attrs)
            stats = IntensityStats.from_dict(stored["stats"])
            done = store.done_grid()
    if stats is None:
        if window_lw is not None:
            stats = IntensityStats.from_window(*window_lw, n_channels=source.n_channels)
        else:
            stats = compute_stats(source)
    attrs["stats"] = stats.to_dict()
    if out_path is not None and store is None:
        store = OutputStore.create(
            out_path,
            shape=shape,
            n_outputs=len(prompts),
            chunks=out_chunks,
            grid=plan.grid,
            n_lead=n_lead,
            label_dtype=label_dtype(len(prompts)),
            attrs=attrs,
            replace=action == "replace",
        )
    sink = (
        store if store is not None else MemorySink(shape, len(prompts), label_dtype(len(prompts)))
    )

    if backend is not None:
        predictor: Any = _BackendPredictor(backend, prompts, stats)
    else:
        predictor = _CallablePredictor(fn, prompts, source.n_channels, torch_device)
    stitcher = None
    if instances and backend is not None and backend.gives_instances:
        if scheduler is not None or split or post.smooth or post.fill_holes:
            raise ValueError(
                f"with the instance backend {backend.name!r}, instances=True takes min_size= "
                "only (not split, smooth, fill_holes) and runs on one machine (no scheduler=)"
            )
        # Matching objects across windows needs every window's masks: a resumed run with an
        # instance backend computes all windows again (the semantic result is identical).
        done = None
        scratch_ids = (
            store.uint32_array(SCRATCH_ARRAYS[0])
            if store is not None
            else np.zeros(shape, np.uint32)
        )
        stitcher = WindowStitcher(plan, scratch_ids)
    if store is not None:
        store.update_attrs(status="running")
    if scheduler is not None:
        info = yield from _run_on_cluster(
            scheduler, image, source, channel_axis, model, backend, fn, predictor, prompts, stats,
            plan, blend_mode, int(batch_size), threshold, store, done, cancel, str(torch_device),
            bands=bands,
        )  # fmt: skip
    else:
        info = yield from run(
            source,
            predictor,
            plan,
            sink,
            weights=importance_map(roi, blend_mode),
            batch_size=int(batch_size),
            threshold=threshold,
            done=done,
            cancel=cancel,
            stitcher=stitcher,
        )
    complete = not info.cancelled
    if store is not None:
        probs, labels = store.probabilities, store.labels
    else:
        probs, labels = sink.probabilities, sink.labels
    inst_array, inst_classes = None, None
    if complete and stitcher is not None:
        inst_array = (
            store.uint32_array("instances") if store is not None else np.zeros(shape, np.uint32)
        )
        merged = yield from _merge_window_instances(stitcher, inst_array, post.min_size, cancel)
        if merged is None:
            complete = False
        else:
            inst_classes = {i: prompts[c - 1] for i, c in merged.classes.items()}
            attrs["objects"] = {"count": merged.n_objects, "removed": merged.removed}
            if store is not None:
                store.drop(*SCRATCH_ARRAYS)
                store.update_attrs(
                    objects=attrs["objects"],
                    instance_classes={str(i): p for i, p in inst_classes.items()},
                )
    elif complete and (instances or post.active):
        if store is not None:
            store.update_attrs(status="postprocessing")
            scratch = [store.uint32_array(name) for name in SCRATCH_ARRAYS]
            inst_array = store.uint32_array("instances")
        else:
            scratch = [np.zeros(shape, np.uint32) for _ in SCRATCH_ARRAYS]
            inst_array = np.zeros(shape, np.uint32)
        labelled = yield from _label_objects(
            probs, labels, scratch, inst_array, threshold, post, n_lead, out_chunks,
            cancel, split=split and instances,
        )  # fmt: skip
        if labelled is None:
            complete = False
        else:
            inst_classes = {i: prompts[c - 1] for i, c in labelled.classes.items()}
            attrs["objects"] = {"count": labelled.n_objects, "removed": labelled.removed}
            if store is not None:
                store.drop(*SCRATCH_ARRAYS)
                store.update_attrs(
                    objects=attrs["objects"],
                    instance_classes={str(i): p for i, p in inst_classes.items()},
                )
            if not instances:
                inst_array, inst_classes = None, None
                if store is not None and "instances" in store.group:
                    del store.group["instances"]
    files: list[Path] = []
    if store is not None:
        if complete and final is not None:
            store.update_attrs(status="exporting")
            files = output.export(
                store,
                final,
                label_names={i + 1: p for i, p in enumerate(prompts)},
                source_metadata=attrs["source_metadata"],
                probabilities=probabilities,
                overwrite=overwrite,
            )
        store.update_attrs(
            status="complete" if complete else "cancelled", batch_size_used=info.batch_size_used
        )
        metadata = store.attrs
    else:
        attrs["batch_size_used"] = info.batch_size_used
        metadata = attrs
    return SegmentationResult(
        probabilities=probs,
        labels=labels,
        label_names={i + 1: p for i, p in enumerate(prompts)},
        prompts=prompts,
        out=out_path,
        complete=complete,
        info=info,
        stats=stats,
        metadata=metadata,
        instances=inst_array,
        instance_classes=inst_classes,
        files=files,
    )


def _run_on_cluster(
    scheduler, image, source, channel_axis, model, backend, fn, predictor, prompts, stats, plan,
    blend_mode, batch_size, threshold, store, done, cancel, device, *, bands=None,
) -> Generator[Progress, None, RunInfo]:  # fmt: skip
    """Hand the run to Dask workers (see :mod:`napari_llmseg.distributed`)."""
    import uuid

    from .distributed import TaskSpec, parse_scheduler, run_distributed

    client, owned = parse_scheduler(scheduler)
    try:
        # Paths are opened by each worker; arrays travel once per worker (scatter).
        if source.path is not None:
            image_arg: Any = str(source.path)
            axis = channel_axis
        else:
            image_arg = client.scatter(source.array, broadcast=True)
            axis = source.channel_axis
        if fn is not None:
            model_arg: Any = client.scatter(fn, broadcast=True)
        elif model is None or isinstance(model, (str, Path)):
            model_arg = None if model is None else str(model)  # loaded once per worker
        else:
            model_arg = client.scatter(backend, broadcast=True)
        spec = TaskSpec(
            channel_axis=axis,
            device=device,
            prompts=prompts,
            encoded=getattr(predictor, "encoded", None),
            stats=stats.to_dict(),
            plan=plan,
            blend=blend_mode.value,
            batch_size=batch_size,
            threshold=threshold,
            out=str(store.path),
            run_id=f"llmseg-{uuid.uuid4().hex}",
            bands=bands if source.path is not None else None,
        )
        return (
            yield from run_distributed(client, spec, image_arg, model_arg, done, cancel, source)
        )
    finally:
        if owned:
            client.close()
            if client.cluster is not None:
                client.cluster.close()


def _merge_window_instances(
    stitcher: WindowStitcher, inst_array: Any, min_size: float, cancel: Any
) -> Generator[Progress, None, Any]:
    """Final ids for objects found by an instance backend; None if cancelled part way."""
    gen = stitcher.finish(min_size=min_size)
    while True:
        try:
            stage, done, total = next(gen)
        except StopIteration as stop:
            lookup, sizes, classes = stop.value
            break
        yield Progress(done, total, stage=f"instances: {stage}")
        if cancel is not None and cancel.is_set():
            return None
    plan = stitcher.plan
    chunks = list(np.ndindex(*plan.grid))
    for k, chunk in enumerate(chunks):
        region = plan.chunk_slices(chunk)
        inst_array[region] = lookup[np.asarray(stitcher.scratch[region]).astype(np.int64)]
        yield Progress(k + 1, len(chunks), stage="instances: relabel")
    n = len(classes)
    return InstanceResult(n, classes, removed=int((sizes > 0).sum()) - n)


def _label_objects(
    probabilities, labels, scratch, inst_array, threshold, post, n_lead, chunks, cancel, *, split
) -> Generator[Progress, None, Any]:
    """Post-process and label objects chunk by chunk; None if cancelled part way."""
    semantic = semantic_source(
        probabilities, labels, threshold=threshold, post=post, n_lead=n_lead
    )
    common = {
        "instances": inst_array,
        "labels_out": labels if post.active else None,
        "min_size": post.min_size,
    }
    if split:
        gen = split_instances(
            semantic, tuple(labels.shape), chunks, scratch=scratch[0], seeds=scratch[1], **common
        )
    else:
        gen = label_instances(semantic, tuple(labels.shape), chunks, scratch=scratch[0], **common)
    while True:
        try:
            stage, done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(done, total, stage=f"instances: {stage}")
        if cancel is not None and cancel.is_set():
            gen.close()
            return None


def segment(
    image: Any,
    prompts: str | Sequence[str],
    *,
    model: Any = None,
    roi_size: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    blend: str = "gaussian",
    threshold: float = 0.5,
    device: str = "auto",
    channel_axis: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    cancel: threading.Event | None = None,
    chunks: int | None = None,
    instances: bool = False,
    min_size: float | str = 0,
    fill_holes: bool = False,
    smooth: int = 0,
    split: bool = False,
    scheduler: Any = None,
    bands: Sequence[int | str] | str | None = None,
    window: str | Sequence[float] | None = None,
    probabilities: bool = False,
) -> SegmentationResult:
    """Segment ``image`` by text prompts with overlapping, gaussian-blended windows.

    Parameters
    ----------
    image : array-like, str or PathLike
        (Y, X[, C]) or (Z, Y, X[, C]) numpy, dask or zarr array, or a path to a ``.zarr``
        store (plain array or OME-Zarr), a ``.tif``/``.tiff`` (GeoTIFF/COG through rasterio),
        a ``.npy``, a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series. Read
        lazily, never written to.
    prompts : str or list of str
        What to segment, e.g. ``"nuclei"`` or ``["nuclei", "membrane"]``.
    model : None, str, PathLike, PromptSegmenter or callable, optional
        None for the embedded ``llmseg-tiny``; a name from :func:`list_models`; a local model
        folder; a loaded backend; or ``f(batch, prompts) -> logits`` taking a float32 torch
        tensor (B, C, H, W) of raw (un-normalised) pixels and returning (B, P, H, W).
    roi_size : int or tuple of int, optional
        Window size (default: the model's, 256 for llmseg-tiny); at least 16. Windows larger
        than the image are padded, as in MONAI.
    overlap : float
        Overlap of neighbouring windows, in [0, 1).
    batch_size : int
        Windows per model call; windows of different planes share batches.
    blend : {"gaussian", "constant"}
        Weighting of overlapping windows (MONAI's ``mode``); logits are blended, then the
        sigmoid is applied.
    threshold : float
        Probability above which a pixel is labelled; where several prompts pass, the most
        probable wins.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    channel_axis : int, optional
        Axis of ``image`` that holds channels; without it every axis is spatial.
    out : str or PathLike, optional
        Where to write the result; without it the result is returned in memory. A ``.zarr``
        store (or a path without suffix) receives ``labels`` and ``probabilities`` chunk by
        chunk. A ``.tif``/``.tiff`` file gets the labels as a tiled, compressed GeoTIFF with
        the input's CRS and transform (a plain TIFF for inputs without georeferencing); a
        ``.nii``/``.nii.gz`` file gets them as NIfTI with the input's affine. Both are written
        from a working store ``out + ".zarr"`` once the run (and any post-processing) is
        complete (see ``docs/formats.md``).
    resume : bool
        Complete an interrupted run in ``out``: only chunks not yet written are computed,
        and the result is identical to an uninterrupted run.
    overwrite : bool
        Replace an existing ``out`` (only a napari-llmseg store or an empty folder).
    progress : callable, optional
        Called as ``progress(done, total)`` with window counts after every batch.
    cancel : threading.Event, optional
        Set it (from another thread) to stop within one batch; finished chunks stay written
        and ``out`` can be resumed.
    chunks : int, optional
        Output chunk edge along the window axes (default 512 for 2D windows, 256 for 3D).
    instances : bool
        Also label objects: ``result.instances`` gives every connected object of one class a
        single id across the whole input (chunk by chunk, identical to labelling the whole
        array at once), and ``result.instance_classes`` maps ids to prompts.
    min_size : float or str
        Remove objects smaller than this: a number of pixels (voxels), or a physical size
        such as ``"20 um^3"`` or ``"0.5 mL"`` when the image has a scale with units.
    fill_holes : bool
        Fill background enclosed by one class, plane by plane (holes up to the output chunk
        plus 64 px on each side).
    smooth : int
        Radius in pixels of a morphological opening of every class (0: none).
    split : bool
        With ``instances=True``, split touching objects of one class by a watershed from the
        peaks of their (smoothed) distance transform, instead of one id per connected region.
    scheduler : None, str or distributed.Client
        Run on Dask's distributed scheduler: ``"local:N"`` (a local cluster of N
        single-threaded worker processes), a scheduler address (``"tcp://host:8786"``) or a
        ``Client``. Needs ``out=`` on storage every worker can reach. The result is
        bit-identical to a single-process run with the same torch thread count.
    bands : sequence of int or str, or str, optional
        Bands of a (Geo)TIFF to segment, by 1-based index or description, e.g. ``"3,2,1"``
        for a Landsat RGB composite.
    window : str or (float, float), optional
        CT window replacing the percentile normalisation: a preset (``"bone"``,
        ``"soft-tissue"``, ``"lung"``, ``"brain"``), ``"L,W"`` or ``(level, width)`` in HU.
    probabilities : bool
        With a TIFF or NIfTI ``out=``, also write the probabilities to
        ``{stem}_probabilities{suffix}`` (one band or volume per prompt).

    Returns
    -------
    SegmentationResult

    Examples
    --------
    >>> import numpy as np
    >>> from napari_llmseg import segment
    >>> image = np.zeros((64, 64), dtype=np.float32); image[16:48, 16:48] = 1
    >>> result = segment(image, "square", model=lambda x, p: (x - 0.5) * 20, roi_size=32)
    >>> int(result.labels.sum()), result.label_names
    (1024, {1: 'square'})
    """
    gen = iter_segment(
        image,
        prompts,
        model=model,
        roi_size=roi_size,
        overlap=overlap,
        batch_size=batch_size,
        blend=blend,
        threshold=threshold,
        device=device,
        channel_axis=channel_axis,
        out=out,
        resume=resume,
        overwrite=overwrite,
        cancel=cancel,
        chunks=chunks,
        instances=instances,
        min_size=min_size,
        fill_holes=fill_holes,
        smooth=smooth,
        split=split,
        scheduler=scheduler,
        bands=bands,
        window=window,
        probabilities=probabilities,
    )
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None and step.stage == "segment":
            progress(step.done, step.total)


def _is_json(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
