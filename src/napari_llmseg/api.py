"""``segment()``: the one headless entry point, as a short orchestrator of the stages.

    plan (open the image, load the model, place windows)  ->  output store (create or resume)
      ->  intensity statistics  ->  predict + blend (engine.stream, or the Dask path)
      ->  objects (postprocess)  ->  final files (io.write)  ->  SegmentationResult

:func:`iter_segment` is the run as a generator that yields :class:`Progress` after every
batch and returns the :class:`SegmentationResult`; the napari widget drives it from a worker
thread, :func:`segment` drains it and calls ``progress``. Both take the options of
:class:`~napari_llmseg.options.SegmentOptions`, as keywords or as ``options=``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .backends.classes import match_classes
from .engine.fingerprint import input_fingerprint, model_fingerprint
from .engine.lock import StoreLock
from .engine.memory import check_memory
from .engine.normalize import IntensityStats, compute_moments, compute_stats
from .engine.predictor import make_predictor
from .engine.store import SCRATCH_ARRAYS, OutputStore, _is_our_store, check_output_path
from .engine.stream import MemorySink, Progress, drain, plane_group, relay, run
from .engine.windows import WindowPlan, per_axis, resolve_roi
from .io.labels import label_names_of
from .io.ome import ATTR_KEY
from .io.open import open_image
from .io.source import ImageSource
from .options import DEFAULT_OVERLAP, SegmentOptions, check_prompts
from .postprocess.cleanup import PostProcess, parse_size
from .postprocess.instances import (
    InstanceResult,
    WindowStitcher,
    label_instances,
    semantic_source,
    split_instances,
)
from .postprocess.labels import label_dtype
from .results import SegmentationResult

__all__ = ["SegmentOptions", "SegmentationResult", "iter_segment", "segment"]

#: Output chunk shape along the window axes, by number of window axes. 512 x 512 is the tile
#: of most OME-Zarr and COG writers; against 256 x 256 it halves the CPU the writer and zarr's
#: codec threads spend per window (docs/benchmarks.md). 3D windows are blended slab by slab
#: along Z, and every chunk a slab touches stays open until the next slab is done: chunks
#: 32 voxels deep keep that to less than a window plus 64 planes of accumulators
#: (``WindowPlan.open_voxels``), at 256 x 256 across. 1D windows: 256 Ki samples per chunk.
DEFAULT_CHUNKS = {1: (262144,), 2: (512, 512), 3: (32, 256, 256)}


@dataclass
class RunPlan:
    """Everything decided before the first window is predicted."""

    source: ImageSource
    prompts: list[str]
    options: SegmentOptions
    backend: Any  # a PromptSegmenter, or None for a callable model
    fn: Callable | None
    device: Any  # torch.device
    plan: WindowPlan
    post: PostProcess
    attrs: dict  # provenance and parameters, recorded in the store
    store_path: Path | None  # the zarr store written chunk by chunk
    writing: bool = False  # set once this run has created or resumed its store
    given_stats: IntensityStats | None = None  # the caller's, instead of computing them
    class_names: dict[int, str] | None = None  # a model with one output channel per class
    matches: list[Any] | None = None  # ClassMatch per prompt, for such a model

    @property
    def classes(self) -> list[tuple[int, ...]] | None:
        """The output channels each prompt means, for a model with named classes."""
        return None if self.matches is None else [m.channels for m in self.matches]

    @property
    def model(self) -> Any:
        return self.backend if self.backend is not None else self.fn

    @property
    def label_names(self) -> dict[int, str]:
        return label_names_of(self.prompts)


def iter_segment(
    image: Any,
    prompts: str | Sequence[str],
    *,
    options: SegmentOptions | None = None,
    cancel: threading.Event | None = None,
    stats: IntensityStats | None = None,
    **changes: Any,
) -> Generator[Progress, None, SegmentationResult]:
    """Generator form of :func:`segment`: yields Progress, returns the SegmentationResult.

    ``stats``: intensity statistics to normalise with instead of computing them from
    ``image`` (a preview of part of an image uses the whole image's).
    """
    opts = SegmentOptions.build(options, **changes)
    with _collect_warnings() as notes:
        job = plan_run(image, check_prompts(prompts), opts)
    job.given_stats = stats
    lock = StoreLock(job.store_path) if job.store_path is not None else None
    try:
        action = _check_output(job)  # before anything is written
        if lock is not None:
            lock.acquire()
            action = _check_output(job)  # again: another run may have written meanwhile
        return (yield from _run(job, action, cancel, notes, lock))
    except BaseException as err:
        _record_failure(job, lock, err)
        raise
    finally:
        if lock is not None:
            lock.release()


def _run(
    job: RunPlan, action: str, cancel: Any, notes: list[str], lock: StoreLock | None
) -> Generator[Progress, None, SegmentationResult]:
    """Everything after planning, with the store locked: statistics, prediction, objects,
    final files."""
    opts = job.options
    store, done, stats = _open_store(job, action, notes)
    if store is None and action in ("create", "replace"):
        store = _create_store(job, replace=action == "replace")
    job.writing = store is not None
    sink = store if store is not None else _memory_sink(job)
    predictor = make_predictor(
        job.model, job.prompts, stats=stats, n_channels=job.source.n_channels,
        device=job.device, cval=opts.cval, output_key=opts.output_key, classes=job.classes,
        class_names=job.class_names,
    )  # fmt: skip
    stitcher = _stitcher(job, store) if _stitches(job) else None
    if stitcher is not None:
        done = None  # matching objects across windows needs every window again
    if store is not None:
        store.update_attrs(status="running")
    info = yield from _predict(job, predictor, stats, sink, done, stitcher, cancel)
    complete = not info.cancelled
    objects: tuple[Any, Any] = (None, None)
    if complete and (stitcher is not None or opts.instances or job.post.active):
        found = yield from _objects(job, sink, store, stitcher, cancel)
        complete = found is not None
        objects = found or objects
    if complete and store is not None:
        store.update_attrs(status="pyramid")
        complete = (yield from relay(store.build_pyramid(), "", cancel)) is not None
    if lock is not None:
        lock.verify()  # never report another run's result as this one's
    files = _finish(job, sink, store, complete, info)
    metadata = (
        store.attrs
        if store is not None
        else {**job.attrs, "batch_size_used": info.batch_size_used}
    )
    result = SegmentationResult(
        probabilities=sink.probabilities,
        labels=sink.labels,
        label_names=job.label_names,
        prompts=job.prompts,
        out=job.store_path,
        complete=complete,
        info=info,
        stats=stats,
        metadata=metadata,
        instances=objects[0],
        instance_classes=objects[1],
        files=files,
        warnings=notes,
    )
    _write_report(job, result)
    return result


@contextlib.contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    """Warnings raised while planning (what was assumed about the input, a GeoTIFF without
    CRS...): passed on as usual and kept for ``SegmentationResult.warnings``."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield notes
    for w in caught:
        notes.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _record_failure(job: RunPlan, lock: StoreLock | None, err: BaseException) -> None:
    """Leave the store's status honest after an error or an interrupt (best effort: the
    disk may be full). Only a store this run holds the lock of is touched."""
    if lock is None or lock.record is None or job.store_path is None or not job.writing:
        return  # a run refused before it wrote anything leaves the store as it was
    try:
        lock.verify()
        if _is_our_store(job.store_path):
            import zarr

            group = zarr.open_group(job.store_path, mode="r+")
            attrs = dict(group.attrs[ATTR_KEY])  # type: ignore[arg-type]
            interrupted = isinstance(err, (KeyboardInterrupt, GeneratorExit))
            attrs["status"] = "cancelled" if interrupted else "failed"
            if not interrupted:
                attrs["error"] = f"{type(err).__name__}: {err}"
            group.attrs[ATTR_KEY] = attrs
    except Exception:
        pass


def segment(
    image: Any,
    prompts: str | Sequence[str],
    *,
    options: SegmentOptions | None = None,
    progress: Callable[[int, int], Any] | None = None,
    cancel: threading.Event | None = None,
    stats: IntensityStats | None = None,
    **changes: Any,
) -> SegmentationResult:
    """Segment ``image`` by text prompts with overlapping, gaussian-blended windows.

    Parameters
    ----------
    image : array-like, str, PathLike or list of them
        (Y, X[, C]) or (Z, Y, X[, C]) numpy, dask or zarr array, or a path to a ``.zarr``
        store (plain array or OME-Zarr), a ``.tif``/``.tiff`` (GeoTIFF/COG through rasterio),
        a ``.vrt`` or ``.jp2``, a ``.npy``, a ``.nii``/``.nii.gz`` file or a folder holding
        one DICOM series; or a list of raster files on one grid, stacked as bands in order
        (``["B4.TIF", "B3.TIF", "B2.TIF"]``). Read lazily, never written to.
    prompts : str or list of str
        What to segment, e.g. ``"nuclei"`` or ``["nuclei", "membrane"]``.
    options : SegmentOptions, optional
        Options made beforehand; keyword options below are applied on top of them.
    progress : callable, optional
        Called as ``progress(done, total)`` with window counts after every batch.
    cancel : threading.Event, optional
        Set it (from another thread) to stop within one batch; finished chunks stay written
        and ``out`` can be resumed.
    stats : IntensityStats, optional
        Normalise with these statistics instead of the image's own (e.g. a preview of part
        of an image with the whole image's; see :mod:`napari_llmseg.interactive`).
    **changes
        Any option of :class:`~napari_llmseg.options.SegmentOptions` (listed below).

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

    def report(step: Progress) -> None:
        if progress is not None and step.stage == "segment":
            progress(step.done, step.total)

    gen = iter_segment(image, prompts, options=options, cancel=cancel, stats=stats, **changes)
    return drain(gen, report)


def _options_doc() -> str:
    doc = SegmentOptions.__doc__ or ""
    start = doc.find("Parameters\n    ----------\n")
    return "" if start < 0 else "\n    Options\n    -------\n" + doc[start + 26 :]


segment.__doc__ = (segment.__doc__ or "") + _options_doc()


# --- plan ---------------------------------------------------------------------------------
def plan_run(image: Any, prompts: list[str], opts: SegmentOptions) -> RunPlan:
    """Open the image, load the model, place the windows; check what needs the image."""
    from .device import resolve_device
    from .io.write import working_store

    torch_device = resolve_device(opts.device)
    source = open_image(image, channel_axis=opts.channel_axis, bands=opts.bands)
    backend, fn, model_desc = resolve_model(opts.model, str(torch_device))
    if backend is not None and hasattr(backend, "for_input"):
        backend = backend.for_input(source.metadata)  # its windows in the input's voxels
    if opts.overlap is None:  # the model's own, recorded as given for resume
        overlap = getattr(backend, "default_overlap", DEFAULT_OVERLAP)
        opts = dataclasses.replace(opts, overlap=overlap)
    if fn is not None:
        torch_device = _module_device(fn, opts.device) or torch_device
    _check_window(opts, backend, source)
    class_names = _class_names(opts, backend)
    matches = match_classes(prompts, class_names) if class_names is not None else None
    for note in filter(None, (m.note() for m in matches or ())):
        warnings.warn(note, UserWarning, stacklevel=4)
    if backend is not None:
        backend.check_channels(source.n_channels)
        _warn_about_bands(source, backend.name)
        if class_names is None:
            _warn_about_prompts(backend, prompts)
    shape = source.spatial_shape
    roi = window_shape(opts.roi_size, shape, backend)
    n_lead = len(shape) - len(roi)
    plan = WindowPlan(
        shape,
        roi,
        per_axis(
            "overlap", opts.overlap if opts.overlap is not None else DEFAULT_OVERLAP, len(roi)
        ),
        (1,) * n_lead + _chunk_shape(opts.chunks, shape[n_lead:]),
        blend=opts.blend,
        sigma_scale=per_axis("sigma_scale", opts.sigma_scale, len(roi)),
    )
    check_memory(
        plan, n_channels=source.n_channels, n_outputs=len(prompts),
        batch_size=opts.batch_size, group=plane_group(source, plan, len(prompts)),
        model_outputs=None if class_names is None else max(class_names) + 1,
    )  # fmt: skip
    meta = source.metadata
    post = PostProcess(
        smooth=opts.smooth,
        fill_holes=opts.fill_holes,
        min_size=parse_size(
            opts.min_size, scale=meta.get("scale"), units=meta.get("units"), ndim=len(shape)
        ),
    )
    if backend is not None and backend.gives_instances and opts.instances:
        if opts.scheduler is not None or opts.split or post.smooth or post.fill_holes:
            raise ValueError(
                f"with the instance backend {backend.name!r}, instances=True takes min_size= "
                "only (not split, smooth, fill_holes) and runs on one machine (no scheduler=)"
            )
    attrs = _provenance(source, prompts, opts, model_desc, plan, post)
    attrs["class_names"] = (
        None if class_names is None else {str(k): v for k, v in class_names.items()}
    )
    if matches is not None:
        attrs["prompt_classes"] = {m.prompt: m.to_dict() for m in matches}
    store_path = working_store(opts.out) if opts.out is not None else None
    return RunPlan(source, prompts, opts, backend, fn, torch_device, plan, post, attrs,
                   store_path, class_names=class_names, matches=matches)  # fmt: skip


def _class_names(opts: SegmentOptions, backend: Any) -> dict[int, str] | None:
    """The classes of a model with one output channel per class: ``class_names=``, else the
    backend's own (a MONAI bundle's; ``class_names=`` renames some of them); None for a model
    that takes text prompts itself.

    Raises
    ------
    ValueError
        For ``class_names=`` given to a backend that takes text prompts itself.
    """
    own = getattr(backend, "class_names", None) if backend is not None else None
    if opts.class_names is None:
        if own is not None and not own:
            raise ValueError(
                f"the {backend.name} model names no classes (a MONAI bundle without "
                "channel_def); give them with class_names= (--class-names)"
            )
        return dict(own) if own is not None else None
    if own:  # a bundle's names, some renamed
        from .backends.classes import check_class_names

        return check_class_names({**own, **opts.class_names})
    if backend is not None and own is None:
        raise ValueError(
            f"class_names= names the output channels of a model with fixed classes (a "
            f"callable, a torch module or a MONAI bundle); the {backend.name} backend takes "
            "text prompts itself"
        )
    return dict(opts.class_names)


def _warn_about_prompts(backend: Any, prompts: list[str]) -> None:
    """Warn (now, and in the result) about prompts far from everything a closed-vocabulary
    model knows (:mod:`napari_llmseg.backends.knowledge`)."""
    from .backends.knowledge import prompt_warnings

    for message in prompt_warnings(backend, prompts):
        warnings.warn(message, UserWarning, stacklevel=5)


def _warn_about_bands(source: ImageSource, model: str) -> None:
    """Warn (now, and in the result: warnings while planning are collected) when the three
    bands a true-colour model gets are known not to be red, green, blue
    (:mod:`napari_llmseg.io.bands`)."""
    from .io.bands import true_colour_warning

    note = true_colour_warning(source.metadata, model)
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=5)


def resolve_model(model: Any, device: str) -> tuple[Any, Callable | None, dict]:
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
        f"(a function or torch module) f(batch) or f(batch, prompts) -> logits; got "
        f"{type(model).__name__}"
    )


def _check_window(opts: SegmentOptions, backend: Any, source: ImageSource) -> None:
    if opts.window is None:
        return
    if backend is None:
        raise ValueError(
            "window= sets the intensity range a model backend normalises with; a callable "
            "model gets raw pixels, so apply the window inside it"
        )
    modality = source.metadata.get("modality")
    if modality not in (None, "CT"):
        level, width = opts.window
        warnings.warn(
            f"window= (level {level:g}, width {width:g}) is in Hounsfield units (CT), but the "
            f"input's modality is {modality}",
            UserWarning,
            stacklevel=4,
        )


def window_shape(
    roi_size: int | tuple[int | None, ...] | None, shape: tuple[int, ...], backend: Any
) -> tuple[int, ...]:
    """The window size for an image of spatial ``shape`` -> a tuple of positive ints.

    A backend has its own number of window axes (``spatial_dims``) and default size; a
    callable model takes 2D windows unless ``roi_size`` is a tuple, whose length is then the
    number of window axes (the image's last ones). Entries that are None or <= 0 become the
    image's extent along that axis (MONAI's ``fall_back_tuple``).

    Raises
    ------
    ValueError
        For more window axes than the image has, a backend's ``roi_size`` with another number
        of entries than its ``spatial_dims``, or a backend window under ``MIN_ROI``.
    """
    from .options import MIN_ROI

    given = isinstance(roi_size, tuple)
    if backend is not None:
        dims, default = int(backend.spatial_dims), backend.default_roi
        if given and len(roi_size) != dims:  # type: ignore[arg-type]
            raise ValueError(
                f"roi_size must be an int or {dims} ints for the {backend.name} backend "
                f"({dims}D windows), got {roi_size!r}"
            )
    else:
        dims, default = (len(roi_size) if given else 2), 256  # type: ignore[arg-type]
    if dims > len(shape):
        raise ValueError(
            f"roi_size {roi_size!r} asks for {dims}D windows, but the image has "
            f"{len(shape)} spatial axes {shape}"
        )
    plane = shape[len(shape) - dims :]
    roi = resolve_roi(default if roi_size is None else roi_size, plane)
    if roi_size is None and getattr(backend, "window_within_image", False):
        roi = tuple(max(min(r, s), MIN_ROI) for r, s in zip(roi, plane, strict=True))
    if backend is not None and min(roi) < MIN_ROI:
        raise ValueError(
            f"roi_size {roi_size!r} gives windows of {roi} on an image of shape {shape}; the "
            f"{backend.name} backend needs at least {MIN_ROI} pixels a side"
        )
    return roi


def _chunk_shape(edge: int | None, plane: tuple[int, ...]) -> tuple[int, ...]:
    """Output chunk shape along the window axes: ``edge`` along each, or the default."""
    default = DEFAULT_CHUNKS.get(len(plane), (256,) * len(plane))
    chunks = default if edge is None else (edge,) * len(plane)
    return tuple(min(c, s) for c, s in zip(chunks, plane, strict=True))


def _module_device(fn: Any, device: str) -> Any:
    """A torch module's own device, when the run's device is ``"auto"``; warns about a
    module left in training mode (dropout and batch statistics would change its output)."""
    import torch

    if not isinstance(fn, torch.nn.Module):
        return None
    if fn.training:
        warnings.warn(
            f"the model {type(fn).__name__} is in training mode (dropout, batch statistics); "
            "call model.eval() before segmenting",
            UserWarning,
            stacklevel=5,
        )
    if device != "auto":
        return None
    param = next(fn.parameters(), None)
    return param.device if param is not None else None


def _provenance(
    source: ImageSource,
    prompts: list[str],
    opts: SegmentOptions,
    model_desc: dict,
    plan: WindowPlan,
    post: PostProcess,
) -> dict:
    """What the store records: the run's parameters (those that must match to resume) and
    where the result came from."""
    from .io.write import output_kind

    attrs = {
        "version": __version__,
        "prompts": prompts,
        "label_names": {str(i): p for i, p in label_names_of(prompts).items()},
        "model": model_desc,
        "input": source.name,
        "input_shape": list(plan.shape),
        "input_dtype": str(source.dtype),
        "channel_axis": opts.channel_axis,
        "roi_size": list(plan.roi),
        "overlap": opts.overlap,
        "batch_size": opts.batch_size,
        "blend": opts.blend,
        "sigma_scale": opts.sigma_scale,
        "cval": opts.cval,
        "output_key": opts.output_key,
        "threshold": opts.threshold,
        "chunks": list(plan.chunks),
        "source_metadata": {k: v for k, v in source.metadata.items() if _is_json(v)},
        "bands": source.metadata.get("band_indexes") if opts.bands is not None else None,
        "window": list(opts.window) if opts.window is not None else None,
        "instances": opts.instances,
        "postprocess": {**post.to_dict(), "split": opts.split},
    }
    if opts.out is not None:
        attrs["output"] = {"path": str(opts.out), "format": output_kind(opts.out)}
    return attrs


# --- output store -------------------------------------------------------------------------
def _check_output(job: RunPlan) -> str:
    """Check every output target before anything is written -> "memory", "create",
    "replace" or "resume"."""
    from .io.write import check_targets

    opts = job.options
    inputs = job.source.backing_paths()
    action = "memory"
    if job.store_path is not None:
        action = check_output_path(
            job.store_path, input_paths=inputs, overwrite=opts.overwrite, resume=opts.resume
        )
    check_targets(
        opts.out, vector=opts.vector, probabilities=opts.probability_file, input_paths=inputs,
        overwrite=opts.overwrite, resume_existing=action == "resume",
        spatial_shape=job.plan.shape,
    )  # fmt: skip
    if opts.report and opts.out is not None:
        from .report import check_report_target, report_path

        check_report_target(report_path(opts.out), overwrite=opts.overwrite or action == "resume",
                            input_path=job.source.path)  # fmt: skip
    return action


def _open_store(
    job: RunPlan, action: str, notes: list[str]
) -> tuple[OutputStore | None, np.ndarray | None, IntensityStats | None]:
    """Fingerprints and statistics; a resumed store is opened and its chunks verified ->
    (store, done, stats)."""
    if job.store_path is not None:
        job.attrs["input_fingerprint"] = input_fingerprint(job.source)
        job.attrs["model_fingerprint"] = model_fingerprint(job.model)
    if action != "resume":
        stats = _statistics(job)
        job.attrs["stats"] = stats.to_dict() if stats is not None else None
        return None, None, stats
    assert job.store_path is not None
    store, stored = OutputStore.open_for_resume(job.store_path, job.attrs)
    done, rejected = store.verified_done(job.plan)
    if not done.all():
        store.clear_pyramid()  # full-resolution chunks are about to be written again
    if rejected:
        notes.append(
            f"{rejected} finished chunk(s) of '{job.store_path}' were missing, damaged or "
            "changed since they were written; they were computed again"
        )
        warnings.warn(notes[-1], UserWarning, stacklevel=4)
    stats = IntensityStats.from_dict(stored["stats"]) if stored["stats"] is not None else None
    job.attrs["stats"] = stored["stats"]
    return store, done, stats


def _create_store(job: RunPlan, *, replace: bool) -> OutputStore:
    assert job.store_path is not None
    return OutputStore.create(
        job.store_path,
        probabilities=job.options.stored_probabilities,
        raw_labels=job.post.active,
        shape=job.plan.shape,
        n_outputs=len(job.prompts),
        chunks=job.plan.chunks,
        grid=job.plan.grid,
        n_lead=job.plan.n_lead,
        label_dtype=label_dtype(len(job.prompts)),
        attrs=job.attrs,
        replace=replace,
    )


def _memory_sink(job: RunPlan) -> MemorySink:
    return MemorySink(job.plan.shape, len(job.prompts), label_dtype(len(job.prompts)))


def _statistics(job: RunPlan) -> IntensityStats | None:
    """The intensity range the backend normalises with; None for a plain callable or torch
    module, which gets the pixels as they are (sampling the input for percentiles would be
    time spent for nothing). A backend that normalises by the image's own mean or extremes
    (``needs_moments``, a MONAI bundle's NormalizeIntensityd) also gets exact moments: one
    more pass over the input."""
    if job.given_stats is not None:
        return job.given_stats
    moments = bool(getattr(job.backend, "needs_moments", False))
    window = job.options.window
    if window is not None:
        level, width = window
        stats = IntensityStats.from_window(level, width, n_channels=job.source.n_channels)
        if moments:
            stats = dataclasses.replace(stats, moments=compute_moments(job.source))
        return stats
    if job.backend is None:
        return None
    return compute_stats(job.source, moments=moments)


# --- predict ------------------------------------------------------------------------------
def _stitches(job: RunPlan) -> bool:
    """Whether objects come from an instance backend, matched across windows."""
    return bool(job.options.instances and job.backend is not None and job.backend.gives_instances)


def _stitcher(job: RunPlan, store: OutputStore | None) -> WindowStitcher:
    scratch = (
        store.uint32_array(SCRATCH_ARRAYS[0])
        if store is not None
        else np.zeros(job.plan.shape, np.uint32)
    )
    return WindowStitcher(job.plan, scratch)


def _predict(
    job: RunPlan, predictor: Any, stats: IntensityStats | None, sink: Any, done: Any,
    stitcher: Any, cancel: Any,
) -> Generator[Progress, None, Any]:  # fmt: skip
    """The sliding-window run, in this process or on a Dask cluster."""
    if job.options.scheduler is not None:
        from .distributed import run_on_cluster

        return (yield from run_on_cluster(job, predictor, stats, sink, done, cancel))
    return (
        yield from run(
            job.source,
            predictor,
            job.plan,
            sink,
            weights=job.plan.weights(),
            batch_size=job.options.batch_size,
            threshold=job.options.threshold,
            done=done,
            cancel=cancel,
            stitcher=stitcher,
        )
    )


# --- objects ------------------------------------------------------------------------------
def _objects(
    job: RunPlan, sink: Any, store: OutputStore | None, stitcher: Any, cancel: Any
) -> Generator[Progress, None, tuple[Any, Any] | None]:
    """Post-process and label objects chunk by chunk -> (instances, classes); None if
    cancelled part way. Without ``instances=True`` only the clean-up of the labels is kept,
    and (None, None) returned."""
    shape, opts = job.plan.shape, job.options
    if store is not None:
        store.update_attrs(status="postprocessing")
    array = (lambda name: store.uint32_array(name)) if store is not None else (
        lambda name: np.zeros(shape, np.uint32))  # fmt: skip
    # objects kept (instances=True) get the store's image-label; otherwise a scratch array
    instances = array("instances" if opts.instances else "objects_scratch")
    if stitcher is not None:
        found = yield from _merge_window_instances(stitcher, instances, job.post.min_size, cancel)
    else:
        if store is not None and job.post.active:
            store.clear_pyramid()  # the labels are about to change
        semantic = semantic_source(
            sink.probabilities, sink.labels, threshold=opts.threshold, post=job.post,
            n_lead=job.plan.n_lead,
            raw_labels=store.engine_labels if store is not None else None,
        )  # fmt: skip
        common: dict[str, Any] = {
            "instances": instances,
            "labels_out": (store.final_labels() if store is not None else sink.labels)
            if job.post.active
            else None,
            "min_size": job.post.min_size,
            "scratch": array(SCRATCH_ARRAYS[0]),
        }
        if opts.split:
            gen = split_instances(semantic, shape, job.plan.chunks, seeds=array(SCRATCH_ARRAYS[1]),
                                  **common)  # fmt: skip
        else:
            gen = label_instances(semantic, shape, job.plan.chunks, **common)
        found = yield from relay(gen, "instances: ", cancel)
    if found is None:
        return None
    classes = {i: job.prompts[c - 1] for i, c in found.classes.items()}
    if store is not None:
        store.drop(*SCRATCH_ARRAYS, "objects_scratch")
        store.update_attrs(
            objects={"count": found.n_objects, "removed": found.removed},
            instance_classes={str(i): p for i, p in classes.items()},
        )
    job.attrs["objects"] = {"count": found.n_objects, "removed": found.removed}
    if not opts.instances:  # objects were only needed to clean up the labels
        return None, None
    return instances, classes


def _merge_window_instances(
    stitcher: WindowStitcher, inst_array: Any, min_size: float, cancel: Any
) -> Generator[Progress, None, Any]:
    """Final ids for objects found by an instance backend; None if cancelled part way."""
    merged = yield from relay(stitcher.finish(min_size=min_size), "instances: ", cancel)
    if merged is None:
        return None
    lookup, sizes, classes = merged
    plan = stitcher.plan
    chunks = list(np.ndindex(*plan.grid))
    for k, chunk in enumerate(chunks):
        region = plan.chunk_slices(chunk)
        inst_array[region] = lookup[np.asarray(stitcher.scratch[region]).astype(np.int64)]
        yield Progress(k + 1, len(chunks), stage="instances: relabel")
    n = len(classes)
    return InstanceResult(n, classes, removed=int((sizes > 0).sum()) - n)


# --- finish -------------------------------------------------------------------------------
def _finish(
    job: RunPlan, sink: Any, store: OutputStore | None, complete: bool, info: Any
) -> list[Path]:
    """Write the final files of a complete run and record its status."""
    from .io.write import export

    opts = job.options
    files: list[Path] = []
    if complete and (store is not None or opts.vector is not None):
        if store is not None:
            store.update_attrs(status="exporting")
        files = export(
            sink, opts.out, label_names=job.label_names,
            source_metadata=job.attrs["source_metadata"], probabilities=opts.probability_file,
            vector=opts.vector, simplify=opts.simplify, overwrite=opts.overwrite,
            source=job.source,
        )  # fmt: skip
    if store is not None:
        store.update_attrs(
            status="complete" if complete else "cancelled", batch_size_used=info.batch_size_used
        )
    return files


def _write_report(job: RunPlan, result: SegmentationResult) -> None:
    """Write the report of a complete run beside its output (``report=True``, ``out=``); its
    target was checked before the run (:func:`_open_store`)."""
    opts = job.options
    if not (result.complete and opts.report and opts.out is not None):
        return
    from .report import report_path, write_report

    path = write_report(result, report_path(opts.out), image=job.source, overwrite=True)
    result.files.append(path)


def _is_json(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
