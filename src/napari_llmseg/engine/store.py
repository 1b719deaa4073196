"""The zarr output store: labels, probabilities, and which chunks are complete and intact.

Layout of a store written by :func:`napari_llmseg.segment` with ``out=``::

    out.zarr/
      zarr.json          group attributes under "napari_llmseg": prompts, label names, model,
                         parameters, input description, fingerprints of the input and the
                         model, intensity statistics, status, version; "source_metadata" keeps
                         the input's geometry (GeoTIFF: crs_wkt and transform; NIfTI/DICOM:
                         affine and spacing)
      labels/            (*spatial) uint8/uint16, 0 = background, i = prompts[i - 1]
      probabilities/     (P, *spatial) float32
      _chunks_done/      one uint8 per output chunk; 1 once that chunk's labels and
                         probabilities are written (markers are written in groups, at
                         most engine.stream.DONE_FLUSH_SECONDS after the data)
      _chunks_crc/       one uint32 per output chunk: CRC-32 of its decoded labels and
                         probabilities, written with its done-marker
      instances/         (*spatial) uint32 object ids, with instances=True (ids 1..N in raster
                         order of each object's first voxel); attributes list each id's prompt
      .napari-llmseg.lock   while a run writes (engine/lock.py)

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
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.labels import names_from_json
from ..io.ome import ATTR_KEY
from .fingerprint import chunk_checksum, describe_change
from .lock import LOCK_NAME

DONE_ARRAY = "_chunks_done"
CRC_ARRAY = "_chunks_crc"
SCRATCH_ARRAYS = ("_instances_scratch", "_instances_seeds")
#: Everything a store of ours may hold; overwrite refuses a store that holds anything else.
OWNED = frozenset(
    {"zarr.json", "labels", "probabilities", DONE_ARRAY, CRC_ARRAY, "instances", LOCK_NAME,
     "report.html", *SCRATCH_ARRAYS}
)  # fmt: skip

#: Parameters that must match for a run to resume into an existing store.
RESUME_KEYS = (
    "prompts",
    "input_shape",
    "input_dtype",
    "roi_size",
    "overlap",
    "batch_size",
    "blend",
    "threshold",
    "chunks",
    "channel_axis",
    "bands",
    "window",
    "instances",
    "postprocess",
)
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
    return sorted(p.name for p in path.iterdir() if p.name not in OWNED)


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
        if p.name in OWNED and p.name != LOCK_NAME:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


class OutputStore:
    """Writes finished chunks, their checksums and done-markers into a zarr v3 group."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.labels = group["labels"]
        self.probabilities = group["probabilities"]
        self.done = group[DONE_ARRAY]
        self.crc = group[CRC_ARRAY] if CRC_ARRAY in group else None
        self._pending_crc: dict[tuple[int, ...], int] = {}

    @property
    def path(self) -> Path:
        return Path(str(self.group.store.root))

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
    ) -> OutputStore:
        """Create the store (replacing what a previous run of ours left, with ``replace``);
        if creating fails half way, nothing is left behind but the folder and its lock."""
        import zarr
        from zarr.codecs import ZstdCodec

        if replace:
            _clear_owned(out)
        try:
            group = zarr.open_group(out, mode="a", zarr_format=3)
            # zstd level 1 instead of zarr's default level: on llmseg-tiny's probabilities it
            # compresses as well (1.40x) at twice the speed, and labels compress better
            compressors = ZstdCodec(level=1)
            names = _dim_names(len(shape))
            group.create_array(
                "labels", shape=shape, chunks=chunks, dtype=label_dtype, fill_value=0,
                compressors=compressors, dimension_names=names,
            )  # fmt: skip
            group.create_array(
                "probabilities", shape=(n_outputs, *shape), chunks=(1, *chunks),
                dtype=np.float32, fill_value=0.0, compressors=compressors,
                dimension_names=("prompt", *names),
            )  # fmt: skip
            # One marker chunk never spans two entries of the first grid axis, along which
            # distributed tasks split the work: no two tasks update the same marker chunk.
            marker_chunks = tuple(
                1 if i == 0 or i < n_lead else min(g, 64) for i, g in enumerate(grid)
            )
            group.create_array(
                DONE_ARRAY, shape=grid, chunks=marker_chunks, dtype=np.uint8, fill_value=0
            )
            group.create_array(
                CRC_ARRAY, shape=grid, chunks=marker_chunks, dtype=np.uint32, fill_value=0
            )
            group.attrs[ATTR_KEY] = {**attrs, "status": "running"}
        except BaseException:
            _clear_owned(out)
            raise
        return cls(group)

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
        missing = [n for n in ("labels", "probabilities", DONE_ARRAY, CRC_ARRAY) if n not in group]
        if missing or "stats" not in stored:
            what = ", ".join(missing) if missing else "the intensity statistics"
            raise StoreDamagedError(
                f"cannot resume into '{out}': the store is damaged ({what} missing); start "
                "again with overwrite=True (--overwrite)"
            )
        for key in RESUME_KEYS:
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
        try:
            return cls(group), stored
        except Exception as err:  # an array's metadata is unreadable
            raise StoreDamagedError(
                f"cannot resume into '{out}': the store is damaged ({err}); start again with "
                "overwrite=True (--overwrite)"
            ) from err

    def uint32_array(self, name: str) -> Any:
        """A uint32 array shaped and chunked like ``labels`` (``instances`` or a scratch array),
        created on first use."""
        if name in self.group:
            return self.group[name]
        return self.group.create_array(
            name, shape=self.labels.shape, chunks=self.labels.chunks, dtype=np.uint32,
            fill_value=0, dimension_names=_dim_names(len(self.labels.shape)),
        )  # fmt: skip

    def drop(self, *names: str) -> None:
        for name in names:
            if name in self.group:
                del self.group[name]

    def done_grid(self) -> np.ndarray:
        return np.asarray(self.done[...], dtype=bool)

    def write(
        self,
        chunk: tuple[int, ...],
        region: tuple[slice, ...],
        prob: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        self.probabilities[(slice(None), *region)] = prob
        self.labels[region] = labels
        self._pending_crc[chunk] = chunk_checksum(labels, prob)

    def mark_done(self, chunks: list[tuple[int, ...]]) -> None:
        """Record the chunks' checksums, then mark them done; the engine calls this only
        after their data is written, so a kill in between costs a recomputation, never a
        chunk marked done with missing data."""
        if not chunks:
            return
        index = tuple(np.asarray(chunks).T)
        if self.crc is not None:
            self.crc.vindex[index] = np.asarray(
                [self._pending_crc.pop(c) for c in chunks], dtype=np.uint32
            )
        self.done.vindex[index] = 1

    def verified_done(self, plan: Any, workers: int = 4) -> tuple[np.ndarray, int]:
        """The done grid, keeping only chunks whose data is present, decodable and matches
        its checksum -> (done, number of chunks rejected)."""
        done = self.done_grid()
        if self.crc is None or not done.any():
            return done, 0
        sums = np.asarray(self.crc[...], dtype=np.uint32)
        chunks = [tuple(int(i) for i in c) for c in np.argwhere(done)]

        def intact(chunk: tuple[int, ...]) -> bool:
            region = plan.chunk_slices(chunk)
            try:
                labels = np.asarray(self.labels[region])
                prob = np.asarray(self.probabilities[(slice(None), *region)])
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

    def update_attrs(self, **changes: Any) -> None:
        attrs = dict(self.group.attrs[ATTR_KEY])
        attrs.update(changes)
        self.group.attrs[ATTR_KEY] = attrs

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs[ATTR_KEY])


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
    """Where a result store keeps what: array paths, label names and the input's geometry."""

    labels: str
    probabilities: str | None
    label_names: dict[int, str]
    scale: tuple[float, ...] | None
    translate: tuple[float, ...] | None
    units: tuple[str, ...] | None
    attrs: dict


def result_layout(group: Any) -> ResultLayout | None:
    """The layout of a napari-llmseg result store, or None for any other zarr group."""
    attrs = dict(group.attrs)
    if ATTR_KEY not in attrs or "labels" not in group:
        return None
    meta = dict(attrs[ATTR_KEY])
    source = meta.get("source_metadata", {}) or {}

    def axes(key: str) -> tuple | None:
        value = source.get(key)
        return tuple(value) if value else None

    return ResultLayout(
        labels="labels",
        probabilities="probabilities" if "probabilities" in group else None,
        label_names=names_from_json(meta.get("label_names", {})),
        scale=axes("scale"),
        translate=axes("translate"),
        units=axes("units"),
        attrs=meta,
    )
