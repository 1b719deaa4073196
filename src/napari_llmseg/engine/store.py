"""The result store: an OME-Zarr (NGFF 0.5) with the labels, the probabilities, and which
chunks are complete and intact.

Layout of a store written by :func:`napari_llmseg.segment` with ``out=``::

    out.zarr/
      zarr.json          "ome": the root image's multiscales (NGFF 0.5); "napari_llmseg":
                         prompts, label names, model, parameters, input description,
                         fingerprints of the input and the model, intensity statistics,
                         status, version, layout; "source_metadata" keeps the input's
                         geometry (GeoTIFF: crs_wkt and transform; NIfTI/DICOM: affine)
      0/ 1/ 2/ ...       the root image, a pyramid: probabilities (c = prompt, *spatial) as
                         kept (uint8 = round(p * 255) by default, float16, float32), or with
                         probabilities="none" the class map (a copy of the labels)
      labels/            "ome": {"labels": ["segmentation"(, "instances")]}
        segmentation/    image-label pyramid 0/ 1/ ...: 0 = background, i = prompts[i - 1];
                         colours and each value's prompt in "image-label"
        instances/       with instances=True: object ids (uint32), an image-label pyramid
      napari_llmseg/     bookkeeping: chunks_done (one uint8 per output chunk; 1 once its
                         data is written; markers are written in groups, at most
                         engine.stream.DONE_FLUSH_SECONDS after the data), chunks_crc (CRC-32
                         of each chunk's labels and stored probabilities, written with its
                         marker), pyramid_done_K (one flag per chunk of level K),
                         raw_labels (the engine's labels, when post-processing rewrites them)
      .napari-llmseg.lock   while a run writes (engine/lock.py)

Pyramid levels halve Y and X down to about 256 px (Z where the spacing allows,
:mod:`napari_llmseg.io.pyramid`), each chunk built from the level below once the full
resolution is final, and marked, so that a killed run resumes the pyramid where it stopped.

Zarr's local store writes every chunk file atomically (write to a temporary file, then
rename), and a chunk is marked done only after its data is written, so a run killed at any
moment (even ``kill -9``) leaves a store whose marked chunks are complete and correct. A
resumed run still checks every chunk it is about to trust against its checksum and computes
again any chunk that is missing, undecodable or changed.

What ``overwrite`` may delete: only a store this package made (its attributes carry the
``napari_llmseg`` namespace), holding nothing but the entries listed in :data:`OWNED`, or an
empty folder; never a store that holds anything else, never through a symbolic link, and
never the run's own input.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import shutil
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.labels import names_from_json
from ..io.ome import (
    ATTR_KEY,
    NGFF_VERSION,
    create_pyramid_arrays,
    image_label_metadata,
    multiscales_metadata,
)
from ..io.pyramid import Level, plan_levels, reduce_chunk
from ..io.source import LazyArray
from .fingerprint import chunk_checksum, describe_change
from .lock import LOCK_NAME

#: The package's own group in the store: resume bookkeeping and scratch arrays.
NS = ATTR_KEY
LABELS = "labels"
SEGMENTATION = "segmentation"
INSTANCES = "instances"
DONE_ARRAY = "chunks_done"
CRC_ARRAY = "chunks_crc"
PYRAMID_DONE = "pyramid_done_"
#: Pyramid chunks built between two writes of their markers.
PYRAMID_BATCH = 64
SCRATCH_ARRAYS = ("instances_scratch", "instances_seeds")
#: How probabilities are kept: not at all, quantised to uint8 (p * 255), float16, float32.
PROBABILITY_KINDS = ("none", "uint8", "float16", "float32")
#: The default: a quarter of float32's size, which keeps the engine's writer from slowing a
#: light model down (benchmarks/engine.py, docs/benchmarks.md).
DEFAULT_PROBABILITIES = "uint8"
UINT8_SCALE = 255
#: Top-level entries of a store of ours besides its pyramid levels ("0", "1"...);
#: overwrite refuses a store that holds anything else.
OWNED = frozenset({"zarr.json", LABELS, NS, LOCK_NAME})


def _owned(name: str) -> bool:
    return name in OWNED or name.isdigit()


#: Parameters that must match for a run to resume into an existing store.
RESUME_KEYS = (
    "prompts",
    "input_shape",
    "input_dtype",
    "roi_size",
    "overlap",
    "batch_size",
    "blend",
    "sigma_scale",
    "cval",
    "output_key",
    "threshold",
    "chunks",
    "channel_axis",
    "bands",
    "window",
    "instances",
    "postprocess",
    "class_names",
)
#: Values of resume keys that stores written before the key existed were run with.
RESUME_DEFAULTS = {"sigma_scale": 0.125, "cval": None, "output_key": None, "class_names": None}
#: Fingerprints that must match for a run to resume (engine/fingerprint.py).
FINGERPRINT_KEYS = ("input_fingerprint", "model_fingerprint")


class StoreDamagedError(ValueError):
    """An existing store cannot be resumed: arrays or attributes are missing or unreadable."""


def _is_our_store(path: Path) -> bool:
    import zarr

    try:
        node = zarr.open_group(path, mode="r")
    except Exception:
        return False
    return ATTR_KEY in node.attrs


def strangers(path: Path) -> list[str]:
    """Entries of a store folder that this package does not write there."""
    return sorted(p.name for p in path.iterdir() if not _owned(p.name))


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_output_path(
    out: Path, *, input_paths: Sequence[Path], overwrite: bool, resume: bool
) -> str:
    """Decide what to do with ``out``: 'create', 'resume' or 'replace'; refuse what is unsafe.

    ``input_paths``: files or stores the input is read from (a path input, or the store
    behind a zarr array); the output may neither be nor contain nor sit inside one of them.
    """
    for input_path in input_paths:
        if _overlaps(out, input_path):
            raise ValueError(
                f"output '{out}' overlaps the input '{input_path}'; the input is never written "
                "to, choose an output path outside it"
            )
    if not out.exists() and not out.is_symlink():
        return "create"
    if (
        out.is_dir()
        and not out.is_symlink()
        and not any(p.name != LOCK_NAME for p in out.iterdir())
    ):
        return "create"  # empty, or left by a run killed before it wrote anything but its lock
    if out.is_symlink() and not resume:
        raise FileExistsError(
            f"output '{out}' is a symbolic link (to '{os.readlink(out)}'); refusing to write "
            "through it: give the real path, or another name"
        )
    ours = _is_our_store(out)
    if resume:
        if not ours:
            raise ValueError(
                f"cannot resume into '{out}': it exists but is not a napari-llmseg output store"
                + (
                    " (its attributes are missing or damaged)"
                    if (out / "zarr.json").exists()
                    else ""
                )
            )
        return "resume"
    if not overwrite:
        raise FileExistsError(
            f"output '{out}' already exists; pass overwrite=True (--overwrite) to replace it, "
            "or resume=True (--resume) to complete an interrupted run"
        )
    if not ours:
        raise FileExistsError(
            f"refusing to overwrite '{out}': it is not a napari-llmseg output store (nor an "
            "empty folder), and deleting it could lose data"
        )
    extra = strangers(out)
    if extra:
        raise FileExistsError(
            f"refusing to overwrite '{out}': besides a napari-llmseg result it holds "
            f"{', '.join(repr(e) for e in extra[:5])}{' ...' if len(extra) > 5 else ''}, "
            "which this package did not write; move them out first"
        )
    return "replace"


def _clear_owned(out: Path) -> None:
    """Delete what a previous run of ours wrote in ``out`` (not the lock, nothing else)."""
    for p in out.iterdir():
        if _owned(p.name) and p.name != LOCK_NAME:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def probability_dtype(kind: str) -> np.dtype | None:
    """Storage dtype of probabilities: None, uint8 (quantised: p * 255, rounded), float16 or
    float32."""
    if kind not in PROBABILITY_KINDS:
        raise ValueError(
            f"probabilities must be one of {', '.join(PROBABILITY_KINDS)}, got {kind!r}"
        )
    return None if kind == "none" else np.dtype(kind)


def quantise(prob: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Probabilities (float32, 0..1) as stored: uint8 ``round(p * 255)``, or a float type."""
    if dtype == np.uint8:
        return np.rint(prob * UINT8_SCALE).astype(np.uint8)
    return prob.astype(dtype, copy=False)


class ProbabilityView(LazyArray):
    """The stored probabilities read back as float32 in [0, 1] (uint8 divided by 255)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(np.float32)
        self.chunks = tuple(int(c) for c in array.chunks)

    def read(self, key: tuple[Any, ...]) -> np.ndarray:
        data = np.asarray(self.array[key])
        if data.dtype == np.uint8:
            return data.astype(np.float32) / np.float32(UINT8_SCALE)
        return data.astype(np.float32, copy=False)


class _Tee:
    """Writes go to every array, reads come from the first (final labels, and the class-map
    image that stands in for probabilities when none are kept)."""

    def __init__(self, *arrays: Any) -> None:
        self.arrays = arrays
        self.shape, self.dtype, self.chunks = arrays[0].shape, arrays[0].dtype, arrays[0].chunks

    def __getitem__(self, key: Any) -> Any:
        return self.arrays[0][key]

    def __setitem__(self, key: Any, value: Any) -> None:
        for a in self.arrays:
            a[key] = value


class OutputStore:
    """An OME-Zarr result store: writes finished chunks, their checksums and done-markers,
    then the pyramid levels. See the module docstring for the layout."""

    def __init__(self, group: Any) -> None:
        self.group = group
        meta = dict(group.attrs[ATTR_KEY])
        layout = meta.get("layout") or {}
        self.kind = str(layout.get("probabilities", "float32"))
        self.n_levels = int(layout.get("levels", 1))
        self.image_levels = [group[str(k)] for k in range(self.n_levels)]
        seg = group[f"{LABELS}/{SEGMENTATION}"]
        self.label_levels = [seg[str(k)] for k in range(self.n_levels)]
        self.labels = self.label_levels[0]
        self.kept = self.kind != "none"
        self._dtype = probability_dtype(self.kind) if self.kept else None
        self.probabilities = ProbabilityView(self.image_levels[0]) if self.kept else None
        ns = group[NS]
        self.engine_labels = ns["raw_labels"] if "raw_labels" in ns else self.labels
        self.done = ns[DONE_ARRAY]
        self.crc = ns[CRC_ARRAY]
        self._pending_crc: dict[tuple[int, ...], int] = {}

    @property
    def path(self) -> Path:
        return Path(str(self.group.store.root))

    @property
    def levels(self) -> list[Level]:
        return _levels_of(self.group)

    @classmethod
    def create(
        cls,
        out: Path,
        *,
        shape: tuple[int, ...],
        n_outputs: int,
        chunks: tuple[int, ...],
        grid: tuple[int, ...],
        n_lead: int,
        label_dtype: np.dtype,
        attrs: dict,
        replace: bool = False,
        probabilities: str = DEFAULT_PROBABILITIES,
        raw_labels: bool = False,
    ) -> OutputStore:
        """Create the store (replacing what a previous run of ours left, with ``replace``);
        if creating fails half way, nothing is left behind but the folder and its lock.

        ``probabilities``: how they are kept (see :data:`PROBABILITY_KINDS`). ``raw_labels``:
        keep the engine's labels apart from the final ones (post-processing reads the former
        and writes the latter, so it gives the same result however often it runs).
        """
        import zarr
        from zarr.codecs import ZstdCodec

        dtype = probability_dtype(probabilities)
        if replace:
            _clear_owned(out)
        source = attrs.get("source_metadata") or {}
        geometry: dict[str, Any] = {k: source.get(k) for k in ("scale", "translate", "units")}
        levels = plan_levels(shape, chunks, geometry["scale"])
        names = {int(k): str(v) for k, v in attrs["label_names"].items()}
        try:
            root = zarr.open_group(out, mode="a", zarr_format=3)
            # zstd level 1 instead of zarr's default level: on llmseg-tiny's probabilities it
            # compresses as well (1.40x) at twice the speed, and labels compress better
            compressors = ZstdCodec(level=1)
            if dtype is not None:  # the root image: probabilities, one channel per prompt
                create_pyramid_arrays(root, levels, dtype=dtype, lead=(n_outputs,),
                                      compressors=compressors)  # fmt: skip
            else:  # no probabilities kept: the root image is the class map (the labels)
                create_pyramid_arrays(root, levels, dtype=label_dtype, compressors=compressors)
            labels_group = root.create_group(LABELS)
            seg = labels_group.create_group(SEGMENTATION)
            create_pyramid_arrays(seg, levels, dtype=label_dtype, compressors=compressors)
            ns = root.create_group(NS)
            if raw_labels:
                ns.create_array(
                    "raw_labels", shape=shape, chunks=levels[0].chunks, dtype=label_dtype,
                    fill_value=0, compressors=compressors, dimension_names=_dim_names(len(shape)),
                )  # fmt: skip
            # One marker chunk never spans two entries of the first grid axis, along which
            # distributed tasks split the work: no two tasks update the same marker chunk.
            marker_chunks = tuple(
                1 if i == 0 or i < n_lead else min(g, 64) for i, g in enumerate(grid)
            )
            for name, mdtype in ((DONE_ARRAY, np.uint8), (CRC_ARRAY, np.uint32)):
                ns.create_array(name, shape=grid, chunks=marker_chunks, dtype=mdtype,
                                fill_value=0)  # fmt: skip
            for k, level in enumerate(levels[1:], start=1):
                ns.create_array(f"{PYRAMID_DONE}{k}", shape=level.grid, dtype=np.uint8,
                                fill_value=0)  # fmt: skip
            layout: dict[str, Any] = {
                "probabilities": probabilities,
                "probability_scale": 1 / UINT8_SCALE if probabilities == "uint8" else 1.0,
                "image": "probabilities" if dtype is not None else "classes",
                "levels": len(levels),
                "level_shapes": [list(lv.shape) for lv in levels],
                "level_factors": [list(lv.factor) for lv in levels],
                "level_steps": [list(lv.step) for lv in levels],
                "level_chunks": [list(lv.chunks) for lv in levels],
            }
            image_name = "probabilities" if dtype is not None else "classes"
            root.attrs["ome"] = {
                "version": NGFF_VERSION,
                "multiscales": [
                    multiscales_metadata(image_name, levels, channel=dtype is not None, **geometry)
                ],
            }
            labels_group.attrs["ome"] = {"version": NGFF_VERSION, "labels": [SEGMENTATION]}
            seg_meta: dict[str, Any] = {
                "version": NGFF_VERSION,
                "multiscales": [multiscales_metadata(SEGMENTATION, levels, **geometry)],
                "image-label": image_label_metadata(names),
            }
            seg.attrs["ome"] = seg_meta
            record: dict[str, Any] = {**attrs, "status": "running", "layout": layout}
            root.attrs[ATTR_KEY] = record
        except BaseException:
            _clear_owned(out)
            raise
        return cls(root)

    @classmethod
    def open_for_resume(cls, out: Path, attrs: dict) -> tuple[OutputStore, dict]:
        """Open an interrupted (or complete) run's store; its parameters and the fingerprints
        of its input and model must match ``attrs``.

        Raises
        ------
        ValueError
            Naming the first parameter or fingerprint that differs.
        StoreDamagedError
            When arrays the run needs are missing or unreadable.
        """
        import zarr

        group = zarr.open_group(out, mode="r+")
        stored: dict[str, Any] = dict(group.attrs[ATTR_KEY])  # type: ignore[arg-type]
        try:
            store = cls(group)
        except Exception as err:  # an array, or its metadata, is missing or unreadable
            raise StoreDamagedError(
                f"cannot resume into '{out}': the store is damaged ({type(err).__name__}: "
                f"{err}); start again with overwrite=True (--overwrite)"
            ) from err
        if "stats" not in stored:
            raise StoreDamagedError(
                f"cannot resume into '{out}': the store is damaged (the intensity statistics "
                "are missing); start again with overwrite=True (--overwrite)"
            )
        for key in RESUME_KEYS:
            if key not in stored and key in RESUME_DEFAULTS:
                stored[key] = RESUME_DEFAULTS[key]
            if _jsonish(stored.get(key)) != _jsonish(attrs.get(key)):
                raise ValueError(
                    f"cannot resume into '{out}': it was started with {key}="
                    f"{stored.get(key)!r}, this run has {key}={attrs.get(key)!r}; use the same "
                    "settings, or overwrite=True to start again"
                )
        for key in FINGERPRINT_KEYS:
            old, new = stored.get(key), attrs.get(key)
            if old is None or _jsonish(old) != _jsonish(new):
                what = key.split("_")[0]
                change = (
                    f"it records no {what} fingerprint (made by an older version)"
                    if old is None
                    else describe_change(what, old, new)
                )
                raise ValueError(
                    f"cannot resume into '{out}': {change}; resume with the same {what}, or "
                    "overwrite=True (--overwrite) to start again"
                )
        return store, stored

    # --- arrays besides the labels and probabilities ---------------------------------------
    def uint32_array(self, name: str) -> Any:
        """A uint32 array shaped and chunked like ``labels``: ``"instances"`` (an image-label
        pyramid of object ids, ``labels/instances``) or a scratch array (in ``napari_llmseg/``),
        created on first use."""
        from zarr.codecs import ZstdCodec

        if name != INSTANCES:
            ns = self.group[NS]
            if name in ns:
                return ns[name]
            return ns.create_array(
                name, shape=self.labels.shape, chunks=self.labels.chunks, dtype=np.uint32,
                fill_value=0, dimension_names=_dim_names(len(self.labels.shape)),
            )  # fmt: skip
        labels_group = self.group[LABELS]
        if INSTANCES not in labels_group:
            levels = self.levels
            group = labels_group.create_group(INSTANCES)
            create_pyramid_arrays(group, levels, dtype=np.uint32,
                                  compressors=ZstdCodec(level=1))  # fmt: skip
            geometry = self._geometry()
            group.attrs["ome"] = {
                "version": NGFF_VERSION,
                "multiscales": [multiscales_metadata(INSTANCES, levels, **geometry)],
                "image-label": {"version": NGFF_VERSION},
            }
            labels_group.attrs["ome"] = {
                "version": NGFF_VERSION, "labels": [SEGMENTATION, INSTANCES],
            }  # fmt: skip
        return labels_group[f"{INSTANCES}/0"]

    def drop(self, *names: str) -> None:
        for name in names:
            if name == INSTANCES:
                labels_group = self.group[LABELS]
                if INSTANCES in labels_group:
                    del labels_group[INSTANCES]
                labels_group.attrs["ome"] = {"version": NGFF_VERSION, "labels": [SEGMENTATION]}
            elif name in self.group[NS]:
                del self.group[NS][name]

    def final_labels(self) -> Any:
        """Where post-processing writes the final labels (and, when no probabilities are
        kept, the class-map image that mirrors them)."""
        return self.labels if self.kept else _Tee(self.labels, self.image_levels[0])

    def _geometry(self) -> dict:
        source = self.attrs.get("source_metadata") or {}
        return {k: source.get(k) for k in ("scale", "translate", "units")}

    # --- the engine's sink -----------------------------------------------------------------
    def done_grid(self) -> np.ndarray:
        return np.asarray(self.done[...], dtype=bool)

    def write(
        self,
        chunk: tuple[int, ...],
        region: tuple[slice, ...],
        prob: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        if self._dtype is not None:
            stored = quantise(prob, self._dtype)
            self.image_levels[0][(slice(None), *region)] = stored
            self._pending_crc[chunk] = chunk_checksum(labels, stored)
        else:
            self.image_levels[0][region] = labels
            self._pending_crc[chunk] = chunk_checksum(labels)
        self.engine_labels[region] = labels
        if self.engine_labels is not self.labels:
            self.labels[region] = labels  # final labels until post-processing replaces them

    def mark_done(self, chunks: list[tuple[int, ...]]) -> None:
        """Record the chunks' checksums, then mark them done; the engine calls this only
        after their data is written, so a kill in between costs a recomputation, never a
        chunk marked done with missing data."""
        if not chunks:
            return
        index = tuple(np.asarray(chunks).T)
        self.crc.vindex[index] = np.asarray(
            [self._pending_crc.pop(c) for c in chunks], dtype=np.uint32
        )
        self.done.vindex[index] = 1

    def verified_done(self, plan: Any, workers: int = 4) -> tuple[np.ndarray, int]:
        """The done grid, keeping only chunks whose data is present, decodable and matches
        its checksum -> (done, number of chunks rejected)."""
        done = self.done_grid()
        if not done.any():
            return done, 0
        sums = np.asarray(self.crc[...], dtype=np.uint32)
        chunks = [tuple(int(i) for i in c) for c in np.argwhere(done)]

        def intact(chunk: tuple[int, ...]) -> bool:
            region = plan.chunk_slices(chunk)
            try:
                labels = np.asarray(self.engine_labels[region])
                if self._dtype is None:
                    return chunk_checksum(labels) == int(sums[chunk])
                prob = np.asarray(self.image_levels[0][(slice(None), *region)])
            except Exception:  # a damaged chunk file: compute it again
                return False
            return chunk_checksum(labels, prob) == int(sums[chunk])

        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(intact, chunks))
        rejected = 0
        for chunk, ok in zip(chunks, results, strict=True):
            if not ok:
                done[chunk] = False
                rejected += 1
        return done, rejected

    # --- pyramid ---------------------------------------------------------------------------
    def clear_pyramid(self) -> None:
        """Forget built pyramid levels (the full-resolution data is about to change)."""
        ns = self.group[NS]
        for k in range(1, self.n_levels):
            ns[f"{PYRAMID_DONE}{k}"][...] = 0

    def _pyramid_jobs(self) -> list[tuple[list[Any], str, int, list[Any] | None]]:
        """(levels, reduction, leading axes, levels that mirror them) of every pyramid: without
        probabilities the root image is the class map, a copy of the labels, reduced once for
        both."""
        jobs: list[tuple[list[Any], str, int, list[Any] | None]] = [
            (self.label_levels, "labels", 0, None if self.kept else self.image_levels)
        ]
        if self.kept:
            jobs.append((self.image_levels, "mean", 1, None))
        labels_group = self.group[LABELS]
        if INSTANCES in labels_group:
            inst = labels_group[INSTANCES]
            jobs.append(([inst[str(k)] for k in range(self.n_levels)], "nearest", 0, None))
        return jobs

    def build_pyramid(self, workers: int = 4) -> Generator[tuple[str, int, int], None, int]:
        """Build every level from the one below, chunk by chunk, skipping chunks already
        built (resumable); yields ``("pyramid", done, total)``.

        Chunks of a level are independent: a few threads reduce them at once (zarr's codecs
        and numpy release the GIL), and their markers are written together after each batch,
        from this thread only (markers share zarr chunks).
        """
        levels = self.levels
        ns = self.group[NS]
        jobs = self._pyramid_jobs()
        total = sum(math.prod(lv.grid) for lv in levels[1:])
        built = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for k in range(1, len(levels)):
                level, marker = levels[k], ns[f"{PYRAMID_DONE}{k}"]
                finished = np.asarray(marker[...], dtype=bool)
                todo = [i for i in np.ndindex(*level.grid) if not finished[i]]
                built += math.prod(level.grid) - len(todo)

                def one(index: tuple[int, ...], k: int = k, level: Level = level) -> None:
                    for arrays, how, lead, mirror in jobs:
                        copies = (mirror[k],) if mirror is not None else ()
                        reduce_chunk(arrays[k - 1], arrays[k], level, index, how, lead=lead,
                                     copies=copies)  # fmt: skip

                for start in range(0, len(todo), PYRAMID_BATCH):
                    batch = todo[start : start + PYRAMID_BATCH]
                    list(pool.map(one, batch))
                    marker.vindex[tuple(np.asarray(batch).T)] = 1
                    built += len(batch)
                    yield ("pyramid", built, total)
        return built

    # --- attributes ------------------------------------------------------------------------
    def update_attrs(self, **changes: Any) -> None:
        attrs = dict(self.group.attrs[ATTR_KEY])
        attrs.update(changes)
        self.group.attrs[ATTR_KEY] = attrs

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs[ATTR_KEY])


def _levels_of(group: Any) -> list[Level]:
    layout = dict(group.attrs[ATTR_KEY])["layout"]
    return [
        Level(tuple(s), tuple(st), tuple(f), tuple(c))
        for s, st, f, c in zip(
            layout["level_shapes"],
            layout["level_steps"],
            layout["level_factors"],
            layout["level_chunks"],
            strict=True,
        )
    ]


def _dim_names(ndim: int) -> tuple[str, ...]:
    return ("z", "y", "x")[3 - ndim :] if ndim <= 3 else tuple(f"dim_{i}" for i in range(ndim))


def _jsonish(value: Any) -> Any:
    """Normalise tuples/lists so that values read back from JSON compare equal."""
    if isinstance(value, (list, tuple)):
        return [_jsonish(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonish(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ResultLayout:
    """What a result store holds, for readers: the pyramids (full resolution first), label
    names, the input's geometry, and the run record."""

    labels: list[Any]
    probabilities: list[Any] | None  # (P, *spatial) levels as stored
    probability_scale: float  # multiply stored values by this for probabilities
    instances: list[Any] | None
    label_names: dict[int, str]
    scale: tuple[float, ...] | None
    translate: tuple[float, ...] | None
    units: tuple[str, ...] | None
    attrs: dict


def result_layout(group: Any) -> ResultLayout | None:
    """The layout of a napari-llmseg result store, or None for any other zarr group."""
    attrs = dict(group.attrs)
    meta = attrs.get(ATTR_KEY)
    if not isinstance(meta, dict) or "layout" not in meta or LABELS not in group:
        return None
    layout = meta["layout"]
    n = int(layout["levels"])
    source = meta.get("source_metadata", {}) or {}

    def axes(key: str) -> tuple | None:
        value = source.get(key)
        return tuple(value) if value else None

    labels_group = group[LABELS]
    instances = None
    if INSTANCES in labels_group:
        instances = [labels_group[INSTANCES][str(k)] for k in range(n)]
    kept = layout.get("probabilities") != "none"
    return ResultLayout(
        labels=[labels_group[SEGMENTATION][str(k)] for k in range(n)],
        probabilities=[group[str(k)] for k in range(n)] if kept else None,
        probability_scale=float(layout.get("probability_scale", 1.0)),
        instances=instances,
        label_names=names_from_json(meta.get("label_names", {})),
        scale=axes("scale"),
        translate=axes("translate"),
        units=axes("units"),
        attrs=meta,
    )
