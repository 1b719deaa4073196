"""What a segmentation run returns: :class:`SegmentationResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from .engine.normalize import IntensityStats
from .engine.stream import RunInfo


@dataclass
class SegmentationResult:
    """Output of :func:`napari_llmseg.segment`.

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
    stats : IntensityStats or None
        The whole-input intensity statistics the model saw; None for a callable model or torch
        module (it gets the pixels as they are).
    metadata : dict
        Parameters and provenance, as recorded in the store.
    instances : (*spatial) uint32 array or None
        With ``instances=True``: one id per object across the whole input (0: background).
    instance_classes : dict of int to str or None
        ``{id: prompt}`` for every object.
    files : list of Path
        Final files written (a TIFF or NIfTI ``out=``, probabilities, vector polygons, the
        report ``{stem}_report.html``).
    warnings : list of str
        Things the user should know about the result (e.g. a prompt far from anything the
        model knows, or bands that are not the true colour the model expects), also issued
        as ``UserWarning`` when found.
    """

    probabilities: Any
    labels: Any
    label_names: dict[int, str]
    prompts: list[str]
    out: Path | None
    complete: bool
    info: RunInfo
    stats: IntensityStats | None
    metadata: dict = field(default_factory=dict)
    instances: Any = None
    instance_classes: dict[int, str] | None = None
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        return not self.complete

    def measurements(self, image: Any = None, objects: list | None = None) -> list:
        """Per-prompt measurements (:func:`napari_llmseg.measure.measure`) in the input's
        physical units, with object counts from ``instances`` when they were made.

        ``image`` adds mean intensities; ``objects`` (from :meth:`object_measurements`) saves
        measuring the objects again."""
        from .measure import measure

        if objects is None and self.instances is not None:
            objects = self.object_measurements()  # sizes only: no intensities needed
        return measure(self.labels, self.label_names, objects=objects, **self._where(image))

    def object_measurements(self, image: Any = None) -> list | None:
        """Per-object measurements (:func:`napari_llmseg.measure.measure_objects`), or None
        without ``instances``."""
        from .measure import measure_objects

        if self.instances is None or self.instance_classes is None:
            return None
        return measure_objects(self.instances, self.instance_classes, **self._where(image))

    def _where(self, image: Any) -> dict:
        source = self.metadata.get("source_metadata", {}) or {}
        return {"image": image, "scale": source.get("scale"), "units": source.get("units")}

    def summary(self) -> list[str]:
        """One line per prompt: objects, size in physical units (mL for volumes in mm^3),
        fraction of the image; the same report the napari widget shows."""
        from .measure import report

        return report(self.measurements(), ndim=len(self.labels.shape)).splitlines()

    def write_report(
        self, path: str | PathLike, image: Any = None, *, overwrite: bool = False
    ) -> Path:
        """Write the HTML report of this result to ``path`` (:mod:`napari_llmseg.report`).

        A run with ``out=`` writes it beside the output by itself (``{stem}_report.html``);
        this writes one anywhere, for example for an in-memory result.

        Parameters
        ----------
        path : str or PathLike
            An ``.html`` file.
        image : ImageSource, array-like, str or PathLike, optional
            The segmented image (or its path), drawn under the labels in the thumbnail.
        overwrite : bool
            Replace an existing report written by napari-llmseg (never another file).

        Returns
        -------
        Path
        """
        from .report import write_report

        return write_report(self, path, image=image, overwrite=overwrite)
