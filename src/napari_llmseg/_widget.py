"""The napari widget: gather parameters, run the core on a worker thread, show the results.

All computation happens in the headless core (:func:`napari_llmseg.api.iter_segment`,
:mod:`napari_llmseg.measure`); this module only translates between the GUI and the core.
The run is the engine's generator driven by napari's worker thread: every yielded
:class:`~napari_llmseg.engine.stream.Progress` advances a progress bar in the activity dock,
Cancel sets the engine's cancel event (honoured within one batch), and errors from the core
become notifications with the core's own message.
"""

from __future__ import annotations

import math
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
    Table,
    TextEdit,
    create_widget,
)

from .options import SegmentOptions

if TYPE_CHECKING:
    import napari

#: Inputs larger than this are segmented into a zarr store on disk instead of memory.
DISK_THRESHOLD_BYTES = 512 * 1024**2

OUTPUTS = ("labels", "instances", "probabilities", "uncertainty")


class SegmentWidget(Container):
    """Text-prompted segmentation of the chosen image layer.

    Sub-widgets are attributes so that scripts and tests can drive them: ``image_layer``,
    ``prompts`` (one prompt per line), ``model``, ``roi_size``, ``overlap``, ``threshold``,
    ``device``, ``output`` (labels, instances, probabilities, uncertainty), ``split``,
    ``min_size``, ``fill_holes``, ``smooth``, ``save_to``, ``run_button``, ``cancel_button``,
    ``measurements`` (per prompt, or per object when instances are made), ``csv_path``,
    ``export_button`` and ``report_button`` (opens the HTML report of the last result in the
    web browser: the one written beside ``save_to``, or one written to the temporary folder).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from .backends.registry import DEFAULT_MODEL, list_models

        super().__init__(labels=True)
        self._viewer = viewer
        self.image_layer = create_widget(annotation="napari.layers.Image", label="image")
        self.prompts = TextEdit(value="nuclei", label="prompts\n(one per line)")
        self.model = ComboBox(choices=list_models(), value=DEFAULT_MODEL, label="model")
        self.model_folder = FileEdit(mode="d", label="or model folder", value="")
        self.roi_size = SpinBox(value=256, min=16, max=4096, step=16, label="window (px)")
        self.overlap = FloatSpinBox(value=0.25, min=0.0, max=0.95, step=0.05, label="overlap")
        self.threshold = FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, label="threshold")
        self.device = ComboBox(
            choices=["auto", "cpu", "cuda", "mps"], value="auto", label="device"
        )
        self.output = Select(choices=list(OUTPUTS), value=["labels"], label="output")
        self.split = CheckBox(value=False, text="split touching objects")
        self.min_size = LineEdit(value="0", label="min object size")
        self.min_size.tooltip = "pixels (voxels), or with a unit: '20 um^3', '0.5 mL'"
        self.fill_holes = CheckBox(value=False, text="fill holes")
        self.smooth = SpinBox(value=0, min=0, max=32, label="smoothing (px)")
        self.save_to = FileEdit(mode="w", filter="*.zarr", label="save to (optional)", value="")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.measurements = Table(value=[], label="measurements")
        self.csv_path = FileEdit(mode="w", filter="*.csv", label="CSV file", value="")
        self.export_button = PushButton(text="Export measurements (CSV)", enabled=False)
        self.report_button = PushButton(text="Open report", enabled=False)
        self.extend(
            [
                self.image_layer, self.prompts, self.model, self.model_folder, self.roi_size,
                self.overlap, self.threshold, self.device, self.output, self.split,
                self.min_size, self.fill_holes, self.smooth, self.save_to,
                self.run_button, self.cancel_button, self.status, self.measurements,
                self.csv_path, self.export_button, self.report_button,
            ]
        )  # fmt: skip
        # Keep the dock compact so that the canvas keeps most of the window.
        self.prompts.native.setMaximumHeight(72)
        self.output.native.setMaximumHeight(64)
        self.measurements.native.setMaximumHeight(140)
        self.status.native.setWordWrap(True)
        self.max_width = 460
        self.run_button.changed.connect(self._on_run)
        self.cancel_button.changed.connect(self._on_cancel)
        self.export_button.changed.connect(self._on_export)
        self.report_button.changed.connect(self._on_report)
        self._models: dict[tuple[str, str], Any] = {}
        self._cancel: threading.Event | None = None
        self._worker: Any = None
        self._progress: Any = None
        self._last_measurements: list = []
        self._last_image: Any = None
        self._report: Path | None = None
        self.last_result: Any = None

    # --- parameters -----------------------------------------------------------------------
    def _model_spec(self) -> str:
        folder = str(self.model_folder.value or "").strip()
        return folder if folder not in ("", ".") else str(self.model.value)

    def _prompt_list(self) -> list[str]:
        return [line.strip() for line in str(self.prompts.value).splitlines() if line.strip()]

    def _backend(self, spec: Any, device: str) -> Any:
        """Load a model once per (model, device) and keep it for later runs."""
        from .backends.registry import get_model

        key = (spec, device)
        if key not in self._models:
            self._models[key] = get_model(spec, device=device)
        return self._models[key]

    # --- run / cancel ---------------------------------------------------------------------
    def _on_run(self) -> None:
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if self._worker is not None:
            return  # one run at a time; Cancel stops the current one
        layer = self.image_layer.value
        if layer is None:
            show_error("napari-llmseg: choose an image layer to segment")
            return
        data = layer.data[0] if layer.multiscale else layer.data
        channel_axis = -1 if layer.rgb else None
        spatial = data.ndim - (1 if layer.rgb else 0)
        out = str(self.save_to.value or "").strip()
        out_path = Path(out) if out not in ("", ".") else None
        nbytes = math.prod(data.shape) * np.dtype(data.dtype).itemsize
        if out_path is None and nbytes > DISK_THRESHOLD_BYTES:
            folder = Path(tempfile.gettempdir()) / "napari-llmseg"
            folder.mkdir(exist_ok=True)
            out_path = folder / f"{layer.name}-{time.strftime('%Y%m%d-%H%M%S')}.zarr"
        try:
            options = SegmentOptions(
                model=self._model_spec(),
                roi_size=int(self.roi_size.value),
                overlap=float(self.overlap.value),
                threshold=float(self.threshold.value),
                device=str(self.device.value),
                channel_axis=channel_axis,
                out=out_path,
                instances="instances" in self.output.value,
                split=bool(self.split.value),
                min_size=_size_value(str(self.min_size.value)),
                fill_holes=bool(self.fill_holes.value),
                smooth=int(self.smooth.value),
            )
        except (TypeError, ValueError) as err:
            show_error(f"napari-llmseg: {err}")
            return
        units = tuple(str(u) for u in getattr(layer, "units", ())[-spatial:]) or None
        params = {
            "prompts": self._prompt_list(),
            "options": options,
            "scale": tuple(float(s) for s in layer.scale[-spatial:]),
            "units": units,
            "name": layer.name,
        }
        self._cancel = threading.Event()
        worker = create_worker(
            self._work,
            data,
            params,
            self._cancel,
            _connect={
                "yielded": self._on_progress,
                "returned": lambda r: self._on_done(r, layer),
                "errored": self._on_error,
                "finished": self._on_finished,
            },
            _start_thread=False,
        )
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "loading model..."
        worker.start()

    def _work(self, data: Any, params: dict, cancel: threading.Event):
        """Runs on the worker thread: the core generator, then measurements."""
        import dataclasses

        from .api import iter_segment
        from .io.source import ImageSource
        from .measure import report

        options = params["options"]
        physical = {"scale": params["scale"]}
        if params["units"] and not any(u in ("pixel", "px", "") for u in params["units"]):
            physical["units"] = params["units"]
        source = ImageSource(
            data, options.channel_axis, name=params["name"], metadata=physical
        )
        backend = self._backend(options.model, options.device)
        options = dataclasses.replace(options, model=backend)
        result = yield from iter_segment(source, params["prompts"], options=options,
                                         cancel=cancel)  # fmt: skip
        if not result.complete:
            return result, [], ""
        objects = result.object_measurements(image=data)
        found = result.measurements(image=data, objects=objects)
        text = report(found, ndim=len(result.labels.shape))
        return result, objects if objects is not None else found, text

    def _on_progress(self, step: Any) -> None:
        from napari.utils import progress

        if self._progress is None:
            self._progress = progress(total=step.total, desc="napari-llmseg")
        self._progress.update(step.done - self._progress.n)
        self.status.value = f"{step.done} / {step.total} windows"

    def _on_cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.status.value = "cancelling (finishing the current batch)..."

    def _on_error(self, err: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status.value = f"error: {err}"
        show_error(f"napari-llmseg: {err}")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self._worker = None

    # --- results --------------------------------------------------------------------------
    def _on_done(self, payload: tuple, layer: Any) -> None:
        from napari.utils.notifications import show_info

        result, found, text = payload
        self.last_result = result
        self._report = None
        self.report_button.enabled = result.complete
        if not result.complete:
            where = (
                f"; finished chunks are in {result.out} (resume from Python)" if result.out else ""
            )
            msg = f"cancelled after {result.info.windows} of {result.info.total} windows{where}"
            self.status.value = msg
            show_info(f"napari-llmseg: {msg}")
            return
        self._add_layers(result, layer)
        self._last_measurements = found
        self._last_image = layer.data[0] if layer.multiscale else layer.data
        self.measurements.value = _table(found)
        self.export_button.enabled = bool(found)
        where = f" (saved to {result.out})" if result.out else ""
        self.status.value = text + where
        show_info(f"napari-llmseg: {text}{where}")

    def _add_layers(self, result: Any, layer: Any) -> None:
        from napari.layers import Layer

        from ._layers import result_layers

        spatial = len(result.labels.shape)
        wanted = set(self.output.value) or {"labels"}
        units = getattr(layer, "units", None)
        layers = result_layers(
            result, name=layer.name, outputs=wanted,
            scale=tuple(layer.scale[-spatial:]), translate=tuple(layer.translate[-spatial:]),
            units=tuple(str(u) for u in units[-spatial:]) if units is not None else None,
            uncertainty=uncertainty(result.probabilities) if "uncertainty" in wanted else None,
        )  # fmt: skip
        for data, kwargs, kind in layers:
            self._viewer.add_layer(Layer.create(data, kwargs, kind))

    def _on_export(self) -> None:
        from napari.utils.notifications import show_error, show_info

        from .measure import to_csv

        target = str(self.csv_path.value or "").strip()
        if target in ("", ".") or not self._last_measurements:
            show_error("napari-llmseg: choose a CSV file name (and run a segmentation) first")
            return
        path = to_csv(self._last_measurements, target)
        show_info(f"napari-llmseg: measurements written to {path}")


    def _on_report(self) -> None:
        import webbrowser

        from napari.utils.notifications import show_error, show_info

        result = self.last_result
        if result is None or not result.complete:
            show_error("napari-llmseg: run a segmentation first")
            return
        if self._report is None or not self._report.exists():
            try:
                self._report = _report_file(result, self._last_image)
            except (OSError, ValueError) as err:
                show_error(f"napari-llmseg: {err}")
                return
        webbrowser.open(self._report.as_uri())
        show_info(f"napari-llmseg: report {self._report}")


def _report_file(result: Any, image: Any) -> Path:
    """The report the run wrote beside its output, or a new one in the temporary folder."""
    from .report import report_path

    out = (result.metadata.get("output") or {}).get("path")
    if out is not None and report_path(out) in result.files:
        return report_path(out)
    folder = Path(tempfile.gettempdir()) / "napari-llmseg"
    folder.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", str(result.metadata.get("input", "result")))
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}_report.html"
    return result.write_report(path, image=image, overwrite=True)


def _size_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip()


def _table(found: list) -> dict[str, list]:
    """Columns for the measurements table: per object (instances) or per prompt."""

    def fmt(v: float | None) -> float | None:
        return None if v is None else float(f"{v:.4g}")

    if found and hasattr(found[0], "centroid"):
        return {
            "id": [o.id for o in found],
            "prompt": [o.prompt for o in found],
            "size": [fmt(o.size) for o in found],
            "unit": [o.unit for o in found],
            "centroid": [", ".join(f"{c:.4g}" for c in o.centroid) for o in found],
            "mean intensity": [fmt(o.mean_intensity) for o in found],
        }
    return {
        "prompt": [m.prompt for m in found],
        "objects": [m.objects if m.objects is not None else "n/a" for m in found],
        "size": [fmt(m.size) for m in found],
        "unit": [m.unit for m in found],
        "% of image": [round(100 * m.fraction, 2) for m in found],
        "mean intensity": [fmt(m.mean_intensity) for m in found],
    }


def uncertainty(probabilities: Any) -> Any:
    """Pixel-wise binary entropy (bits, 0..1) of the least certain prompt.

    1 where some prompt's probability is 0.5, 0 where every prompt is sure; lazy (dask) for
    zarr-backed results.
    """

    def entropy(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-7, 1 - 1e-7)
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        return h.max(axis=0).astype(np.float32)

    if isinstance(probabilities, np.ndarray):
        return entropy(probabilities)
    import dask.array as da

    lazy = da.from_array(probabilities, chunks=probabilities.chunks).rechunk({0: -1})
    return lazy.map_blocks(entropy, drop_axis=0, dtype=np.float32)
