"""The napari widget: the interactive loop (preview, correct, teach) and full runs.

All computation happens in the headless core (:mod:`napari_llmseg.interactive` for previews
and the most uncertain region, :func:`napari_llmseg.teach`, :func:`napari_llmseg.api.iter_segment`
for full runs, :mod:`napari_llmseg.measure`); this module turns viewer state into calls of the
core, runs them on worker threads (napari's ``create_worker``: the GUI never waits) and shows
what comes back. Cancel sets the core's cancel event (honoured within one batch); errors
become notifications with the core's own message.

The loop, as in ilastik and micro-sam: type a prompt with *Live preview* on and the part of
the image on screen is segmented as you pan, zoom, change plane or edit the prompt; *Paint
corrections* opens a ``corrections`` Labels layer (1 = this is the concept, 2 = it is not);
*Click points* opens a ``correction points`` layer instead (X switches between the
concept and not the concept); *Teach* adapts the model to them in seconds and the preview
follows; *Most uncertain* shows where a correction helps most; *Run* then segments the
whole image into a store whose labels appear at once and fill in as chunks finish.
"""

from __future__ import annotations

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
    SpinBox,
    Table,
    TextEdit,
    create_widget,
)

from .options import SegmentOptions

if TYPE_CHECKING:
    import napari

OUTPUTS = ("labels", "instances", "probabilities", "uncertainty")
#: The overlap spin box's lowest value, shown as "model's": no overlap chosen (the model's).
_MODEL_OVERLAP = -0.05
#: Milliseconds of quiet (no typing, panning, zooming, plane change) before a preview starts.
PREVIEW_DELAY_MS = 250
#: Seconds between refreshes of a result layer that fills in during a run.
REFRESH_SECONDS = 0.5
#: Name of the layer the user paints corrections on.
CORRECTIONS = "corrections"
#: Corrections: 1 = this is the concept (green), 2 = it is not (magenta).
CORRECTION_COLORS = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (0.1, 0.9, 0.2, 1.0),
                     2: (0.95, 0.2, 0.8, 1.0)}  # fmt: skip
#: Voxels beyond which a volume's corrections layer is held plane by plane (a zarr array in
#: memory, chunks of one plane's tiles, stored only where painted) instead of one numpy array:
#: a 2000 x 4096 x 4096 stack would need 33 GB for corrections nobody paints most of.
CORRECTIONS_IN_MEMORY = 2**27
CORRECTION_TILE = 1024
#: Name of the points layer the user clicks corrections on (each point: a small disk).
CORRECTION_POINTS = "correction points"
POINT_KINDS = ("concept", "not concept")
#: Key that switches what the next click on the points layer marks.
POINT_TOGGLE_KEY = "x"


class _Choices(Container):
    """Check boxes for a set of choices; ``value`` is the list of checked ones (so that
    scripts set ``widget.output.value = ["labels", "instances"]``)."""

    def __init__(self, choices: tuple[str, ...], value: list[str], label: str) -> None:
        self.boxes = {c: CheckBox(value=c in value, text=c) for c in choices}
        super().__init__(widgets=list(self.boxes.values()), layout="horizontal", label=label,
                         labels=False)  # fmt: skip

    @property
    def value(self) -> list[str]:  # type: ignore[override]
        return [c for c, box in self.boxes.items() if box.value]

    @value.setter
    def value(self, chosen: list[str]) -> None:
        for c, box in self.boxes.items():
            box.value = c in chosen


class SegmentWidget(Container):
    """Text-prompted segmentation of the chosen image layer, live and in full.

    Sub-widgets are attributes so that scripts and tests can drive them: ``image_layer``,
    ``prompts`` (one prompt per line), ``model``, ``model_folder``, ``knows`` (what the model
    knows) and ``prompt_notes`` (prompts far from it), ``preview_checkbox``,
    ``corrections_button``, ``points_button``, ``teach_button``, ``most_uncertain_button``,
    ``roi_size``, ``overlap``, ``threshold``, ``device``, ``output`` (labels, instances,
    probabilities, uncertainty), ``split``, ``min_size``, ``fill_holes``, ``smooth``, ``save_to``,
    ``resume_checkbox``, ``overwrite_checkbox``, ``run_button``, ``cancel_button``,
    ``status``, ``measurements``, ``csv_path``, ``export_button`` and ``report_button``.
    ``last_result`` is the last full run's result, ``taught`` the model taught last,
    ``last_preview`` the last preview and ``last_uncertain`` where *Most uncertain* went.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from .backends.registry import DEFAULT_MODEL, list_models

        super().__init__(labels=True)
        self._viewer = viewer
        self.image_layer = create_widget(annotation="napari.layers.Image", label="image")
        self.prompts = TextEdit(value="nuclei", label="prompts\n(one per line)")
        # a taught model comes from Teach or a folder, not from this list
        names = [n for n in list_models() if n != "llmseg-taught"]
        self.taught: Any = None
        # choices are a function: napari resets a dock widget's choices whenever a layer is
        # added, and a fixed list would drop the taught model and fall back to the first name
        self.model = ComboBox(
            choices=lambda _: [*names, *([self.taught.name] if self.taught is not None else [])],
            value=DEFAULT_MODEL,
            label="model",
        )
        self.model_folder = FileEdit(mode="d", label="or model folder", value="")
        self.knows = Label(value="", label="knows")
        self.prompt_notes = Label(value="")
        self.preview_checkbox = CheckBox(value=False, text="Live preview (what is on screen)")
        self.corrections_button = PushButton(text="Paint corrections")
        self.points_button = PushButton(text="Click points")
        self.teach_button = PushButton(text="Teach")
        self.most_uncertain_button = PushButton(text="Most uncertain")
        # 0 and -0.05 (shown as "model's") leave the window and overlap to the model: 256 px
        # for the 2D backends, a MONAI bundle's roi at its voxel size and its inferer's overlap
        # a float box showing no decimals: superqt's int spin box shows no special value text
        self.roi_size = FloatSpinBox(value=0, min=0, max=4096, step=16, label="window (px)")
        self.roi_size.native.setDecimals(0)
        self.overlap = FloatSpinBox(value=_MODEL_OVERLAP, min=_MODEL_OVERLAP, max=0.95,
                                    step=0.05, label="overlap")  # fmt: skip
        for spin in (self.roi_size, self.overlap):
            spin.native.setSpecialValueText("model's")
        self.roi_size.tooltip = "window edge in image pixels; model's: the model's own window"
        self.overlap.tooltip = (
            "fraction of a window shared with its neighbours; model's: the model's"
        )
        self.threshold = FloatSlider(value=0.5, min=0.0, max=1.0, step=0.01, label="threshold")
        self.device = ComboBox(choices=["auto", "cpu", "cuda", "mps"], value="auto",
                               label="device")  # fmt: skip
        self.output = _Choices(OUTPUTS, ["labels"], label="output")
        self.split = CheckBox(value=False, text="split touching objects (needs instances)")
        self.min_size = LineEdit(value="0", label="min object size")
        self.min_size.tooltip = "pixels (voxels), or with a unit: '20 um^3', '0.5 mL'"
        self.fill_holes = CheckBox(value=False, text="fill holes")
        self.smooth = SpinBox(value=0, min=0, max=32, label="smoothing (px)")
        self.save_to = FileEdit(mode="w", filter="*.zarr", label="save to (optional)", value="")
        self.resume_checkbox = CheckBox(value=False, text="resume an interrupted run there")
        self.overwrite_checkbox = CheckBox(value=False, text="overwrite a result there")
        self.run_button = PushButton(text="Run on whole image")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.measurements = Table(value=[], label="measurements")
        self.csv_path = FileEdit(mode="w", filter="*.csv", label="CSV file", value="")
        self.export_button = PushButton(text="Export measurements (CSV)", enabled=False)
        self.report_button = PushButton(text="Open report", enabled=False)
        # two rows: four buttons in one row are cut off in a dock of the default width
        mark = Container(widgets=[self.corrections_button, self.points_button],
                         layout="horizontal", labels=False, label="correct")  # fmt: skip
        learn = Container(widgets=[self.teach_button, self.most_uncertain_button],
                          layout="horizontal", labels=False, label="then")  # fmt: skip
        self.extend(
            [
                self.image_layer, self.prompts, self.model, self.model_folder, self.knows,
                self.prompt_notes, self.preview_checkbox, mark, learn, self.roi_size, self.overlap,
                self.threshold, self.device, self.output, self.split, self.min_size,
                self.fill_holes, self.smooth, self.save_to, self.resume_checkbox,
                self.overwrite_checkbox, self.run_button, self.cancel_button, self.status,
                self.measurements, self.csv_path, self.export_button, self.report_button,
            ]
        )  # fmt: skip
        # Keep the dock compact so that the canvas keeps most of the window.
        self.prompts.native.setMaximumHeight(64)
        self.measurements.native.setMaximumHeight(140)
        for label in (self.status, self.knows, self.prompt_notes):
            label.native.setWordWrap(True)
        self.max_width = 480
        self.run_button.changed.connect(self._on_run)
        self.cancel_button.changed.connect(self._on_cancel)
        self.export_button.changed.connect(self._on_export)
        self.report_button.changed.connect(self._on_report)
        self.preview_checkbox.changed.connect(self._on_preview_toggled)
        self.corrections_button.changed.connect(self._on_corrections)
        self.points_button.changed.connect(self._on_points)
        self.teach_button.changed.connect(self._on_teach)
        self.most_uncertain_button.changed.connect(self._on_most_uncertain)
        for w in (self.threshold, self.roi_size, self.overlap):
            w.changed.connect(self._schedule_preview)
        # magicgui's TextEdit never emits ``changed`` (Qt's textChanged carries no value, which
        # magicgui drops as null): listen to the Qt signal itself
        self.prompts.native.textChanged.connect(self._on_prompts_edited)
        for w in (self.model, self.model_folder):
            w.changed.connect(self._on_model_changed)
        self.image_layer.changed.connect(self._schedule_preview)
        self._models: dict[tuple[Any, str], Any] = {}
        self._models_lock = threading.Lock()
        self._stats: dict[tuple[int, bool], Any] = {}
        self._cancel: threading.Event | None = None
        self._worker: Any = None
        self._progress: Any = None
        self._running = False
        self._live: Any = None  # the labels layer a running store fills
        self._last_refresh = 0.0
        self._preview_worker: Any = None
        self._preview_cancel: threading.Event | None = None
        self._preview_pending = False
        self._preview_timer = _single_shot(PREVIEW_DELAY_MS, self._start_preview, self.native)
        self._prompt_timer = _single_shot(PREVIEW_DELAY_MS, self._check_prompts, self.native)
        self._busy: Any = None  # a teach or most-uncertain worker
        self._last_measurements: list = []
        self._last_image: Any = None
        self._report: Path | None = None
        self.last_result: Any = None
        self.last_preview: Any = None
        self.last_uncertain: Any = None  # where Most uncertain went last
        self._correction_chunks: tuple[Any, dict] | None = None  # a plane-wise layer's
        self._on_model_changed()

    # --- model ----------------------------------------------------------------------------
    def _model_spec(self) -> Any:
        if self.taught is not None and self.model.value == self.taught.name:
            return self.taught
        folder = str(self.model_folder.value or "").strip()
        return folder if folder not in ("", ".") else str(self.model.value)

    def _prompt_list(self) -> list[str]:
        return [line.strip() for line in str(self.prompts.value).splitlines() if line.strip()]

    def _backend(self, spec: Any, device: str) -> Any:
        """Load a model once per (model, device) and keep it for later runs."""
        from .backends.registry import get_model

        if not isinstance(spec, (str, Path)):
            return spec  # a taught model, already loaded
        key = (spec, device)
        with self._models_lock:  # the GUI thread and workers ask for models
            if key not in self._models:
                self._models[key] = get_model(spec, device=device)
            return self._models[key]

    def _on_model_changed(self, *_: Any) -> None:
        from .backends.registry import list_models, model_info

        spec = self._model_spec()
        if not isinstance(spec, (str, Path)):
            self.knows.value = ", ".join(spec.concepts()) or "open vocabulary"
        elif str(spec) in list_models():
            concepts = model_info(str(spec)).concepts
            self.knows.value = ", ".join(concepts) if concepts else "open vocabulary (any text)"
        else:
            self.knows.value = "(loading the model folder...)"
        self._schedule_prompt_check()
        self._schedule_preview()

    def _on_prompts_edited(self) -> None:
        self._schedule_prompt_check()
        self._schedule_preview()

    def _schedule_prompt_check(self, *_: Any) -> None:
        self._prompt_timer.start()

    def _check_prompts(self) -> None:
        """Say, below the prompts, which are far from what the model knows (the model loads
        and the prompts are encoded on a worker thread)."""
        from napari.qt.threading import create_worker

        create_worker(
            self._prompt_notes_work, self._model_spec(), str(self.device.value),
            self._prompt_list(), _connect={"returned": self._show_prompt_notes},
        )  # fmt: skip

    def _prompt_notes_work(
        self, spec: Any, device: str, prompts: list[str]
    ) -> tuple[list[str], str | None]:
        """The prompts' warnings, and for a model folder what the loaded model knows (its
        concepts or classes)."""
        from .backends.knowledge import prompt_warnings

        try:
            model = self._backend(spec, device)
            knows = None
            if isinstance(spec, (str, Path)) and Path(spec).is_dir():
                knows = ", ".join(model.concepts()) or "open vocabulary (any text)"
            return prompt_warnings(model, prompts), knows
        except (ValueError, OSError, TypeError) as err:
            return [str(err)], None

    def _show_prompt_notes(self, found: tuple[list[str], str | None]) -> None:
        notes, knows = found
        self.prompt_notes.value = "\n".join(f"⚠ {n}" for n in notes)
        if knows is not None:
            self.knows.value = knows

    # --- live preview ---------------------------------------------------------------------
    def _on_preview_toggled(self, on: bool) -> None:
        events = (_camera(self._viewer).events.zoom, _camera(self._viewer).events.center,
                  self._viewer.dims.events.current_step)  # fmt: skip
        for event in events:
            (event.connect if on else event.disconnect)(self._schedule_preview)
        if on:
            self._schedule_preview()
        elif self._preview_cancel is not None:
            self._preview_cancel.set()

    def _schedule_preview(self, *_: Any) -> None:
        if self.preview_checkbox.value and not self._running:
            self._preview_timer.start()  # restarts: the preview waits for a quiet moment

    def _start_preview(self) -> None:
        from napari.qt.threading import create_worker

        if not self.preview_checkbox.value or self._running:
            return
        if self._preview_worker is not None:  # one at a time: stop it, start again after
            self._preview_pending = True
            if self._preview_cancel is not None:
                self._preview_cancel.set()
            return
        request = self._view_request()
        if request is None:
            return
        self._preview_cancel = threading.Event()
        self._preview_worker = create_worker(
            self._preview_work, request, self._preview_cancel,
            _connect={"returned": self._show_preview, "errored": self._on_error,
                      "finished": self._preview_finished},
        )  # fmt: skip

    def _roi(self) -> int | None:
        """The window edge the user chose, or None for the model's own window."""
        return int(self.roi_size.value) or None

    def _overlap(self) -> float | None:
        """The overlap the user chose, or None for the model's."""
        value = float(self.overlap.value)
        return None if value < 0 else value

    def _view_request(self) -> dict | None:
        """What the viewer shows of the chosen image: which data, plane and region."""
        from .interactive import View

        layer = self.image_layer.value
        prompts = self._prompt_list()
        if layer is None or not prompts or self._viewer.dims.ndisplay != 2:
            return None
        level = int(layer.data_level) if layer.multiscale else 0
        data = layer.data[level] if layer.multiscale else layer.data
        factor = (
            np.asarray(layer.downsample_factors[level])[-2:] if layer.multiscale else np.ones(2)
        )
        spatial = data.ndim - (1 if layer.rgb else 0)
        corners = np.asarray(layer.corner_pixels, dtype=float)[:, spatial - 2 : spatial]
        plane = None
        if spatial == 3:
            point = layer.world_to_data(self._viewer.dims.point)
            plane = round(float(point[0]))
            if layer.multiscale:
                plane = int(plane // np.asarray(layer.downsample_factors[level])[0])
        view = View(plane, (int(corners[0, 0]), int(corners[1, 0]) + 1),
                    (int(corners[0, 1]), int(corners[1, 1]) + 1))  # fmt: skip
        return {
            "layer": layer, "data": data, "level": level, "factor": factor, "view": view,
            "prompts": prompts, "rgb": bool(layer.rgb), "model": self._model_spec(),
            "device": str(self.device.value), "metadata": _physical(layer, level),
            "options": {"roi_size": self._roi(), "overlap": self._overlap(),
                        "threshold": float(self.threshold.value)},
        }  # fmt: skip

    def _image_stats(self, layer: Any, model: Any = None) -> Any:
        """The whole image's intensity statistics, once per image (every preview uses them);
        with exact moments when ``model`` needs them (a MONAI bundle's NormalizeIntensityd)."""
        from .interactive import image_stats

        moments = bool(getattr(model, "needs_moments", False))
        key = (id(layer.data), moments)
        if key not in self._stats:
            base = _full_resolution(layer)
            self._stats[key] = image_stats(base, -1 if layer.rgb else None, moments=moments)
        return self._stats[key]

    def _preview_work(self, request: dict, cancel: threading.Event) -> Any:
        """Worker thread: the preview of one view."""
        from .interactive import preview
        from .io.source import ImageSource

        backend = self._backend(request["model"], request["device"])
        stats = self._image_stats(request["layer"], backend)
        source = ImageSource(request["data"], -1 if request["rgb"] else None)
        t0 = time.perf_counter()
        result = preview(source, request["prompts"], request["view"], model=backend,
                         stats=stats, cancel=cancel, metadata=request["metadata"],
                         **request["options"])  # fmt: skip
        return (request, result, time.perf_counter() - t0)

    def _preview_finished(self) -> None:
        self._preview_worker = None
        if self._preview_pending:
            self._preview_pending = False
            self._start_preview()

    def _show_preview(self, payload: tuple) -> None:
        """Put the preview in its layer, on top of the view it was computed for."""
        from napari.layers import Layer

        from ._layers import labels_layer

        request, result, seconds = payload
        if result is None:  # cancelled by a newer view
            return
        self.last_preview = result
        image = request["layer"]
        prompts = request["prompts"]
        spatial = image.ndim - (1 if image.rgb else 0)
        factor = request["factor"]
        image_scale = np.asarray(image.scale[-2:], dtype=float)
        pixel = image_scale * factor * result.stride
        # the view's first pixel centre, in world coordinates
        first = np.asarray(result.translate) * factor + (factor - 1) / 2
        translate = np.asarray(image.translate[-2:], dtype=float) + first * image_scale
        labels = result.labels
        lead_scale, lead_translate = (), ()
        if spatial == 3:  # one plane, placed at its Z
            labels = labels[None]
            z = image.data_to_world((result.view.plane,) + (0,) * (image.ndim - 1))[0]
            if image.multiscale:
                z = image.data_to_world(
                    (result.view.plane * float(image.downsample_factors[request["level"]][0]),)
                    + (0,) * (image.ndim - 1)
                )[0]
            lead_scale, lead_translate = (float(image.scale[0]),), (float(z),)
        name = f"{' + '.join(prompts)} preview"
        names = {i + 1: p for i, p in enumerate(prompts)}
        data, kwargs, kind = labels_layer(labels, name=name, label_names=names)
        kwargs.update(scale=(*lead_scale, *pixel), translate=(*lead_translate, *translate),
                      opacity=0.6, units=_units(image, labels.ndim))  # fmt: skip
        old = [lyr for lyr in self._viewer.layers if lyr.name.endswith(" preview")]
        if old and old[0].name == name and old[0].data.shape == data.shape:
            layer = old[0]
            layer.data = data
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
        else:
            for lyr in old:
                self._viewer.layers.remove(lyr)
            self._viewer.add_layer(Layer.create(data, kwargs, kind))
            self._viewer.layers.selection.active = image
        where = f"plane {result.view.plane}, " if result.view.plane is not None else ""
        self.status.value = (
            f"preview of {where}{labels.shape[-2]} x {labels.shape[-1]} px "
            f"(1 px = {result.stride * int(factor[0])} image px) in {seconds:.2f} s"
        )

    # --- corrections, teach, most uncertain -----------------------------------------------
    def _on_corrections(self) -> None:
        """Open (or select) the corrections layer and start painting 1 = the concept."""
        layer = self.image_layer.value
        if layer is None:
            _error("choose an image layer first")
            return
        corrections = self._corrections_layer(create=True)
        self._viewer.layers.selection.active = corrections
        corrections.mode = "paint"
        corrections.selected_label = 1
        self.status.value = (
            "paint 1 (green) on what the prompt means and 2 (magenta) on what it does not, on "
            "any planes; then Teach"
        )

    def _named_layer(self, name: str, kind: type) -> Any:
        """The viewer's layer called ``name`` if it is a ``kind`` layer, else None."""
        found = next((lyr for lyr in self._viewer.layers if lyr.name == name), None)
        return found if isinstance(found, kind) else None

    def _corrections_layer(self, create: bool = False) -> Any:
        from napari.layers import Labels

        found = self._named_layer(CORRECTIONS, Labels)
        if found is not None or not create:
            return found
        image = self.image_layer.value
        base = _full_resolution(image)
        shape = tuple(int(n) for n in (base.shape[:-1] if image.rgb else base.shape))
        data: Any = np.zeros(shape, np.uint8)
        if _plane_wise(shape):
            self._correction_chunks = _lazy_planes(shape)
            data = self._correction_chunks[0]
        layer = self._viewer.add_labels(
            data, name=CORRECTIONS, scale=image.scale[-len(shape):],
            translate=image.translate[-len(shape):], opacity=0.8, colormap=CORRECTION_COLORS,
            units=_units(image, len(shape)),
            features={"index": [0, 1, 2], "correction": ["unknown", "concept", "not concept"]},
        )  # fmt: skip
        return layer

    def _on_points(self) -> None:
        """Open (or select) the correction points layer: a click marks the concept, X switches
        to marking what is not the concept (and back)."""
        layer = self.image_layer.value
        if layer is None:
            _error("choose an image layer first")
            return
        points = self._points_layer(create=True)
        self._viewer.layers.selection.active = points
        points.mode = "add"
        self.status.value = (
            f"click on what the prompt means; press {POINT_TOGGLE_KEY.upper()} to switch to "
            "clicking what it does not mean (magenta), on any planes; then Teach"
        )

    def _points_layer(self, create: bool = False) -> Any:
        import pandas as pd
        from napari.layers import Points

        found = self._named_layer(CORRECTION_POINTS, Points)
        if found is not None or not create:
            return found
        image = self.image_layer.value
        ndim = image.ndim - (1 if image.rgb else 0)
        colors = dict(zip(POINT_KINDS, (CORRECTION_COLORS[1], CORRECTION_COLORS[2]), strict=True))
        points = self._viewer.add_points(
            np.zeros((0, ndim)), ndim=ndim, name=CORRECTION_POINTS,
            scale=image.scale[-ndim:], translate=image.translate[-ndim:],
            units=_units(image, ndim), size=8, border_width=0,
            features=pd.DataFrame({"correction": pd.Categorical([], categories=POINT_KINDS)}),
            face_color="correction", face_color_cycle=colors,
        )  # fmt: skip
        points.feature_defaults["correction"] = POINT_KINDS[0]
        points.bind_key(POINT_TOGGLE_KEY, lambda _: self.toggle_point_kind(), overwrite=True)
        return points

    def toggle_point_kind(self) -> str:
        """Switch what the next click on the points layer marks (the X key); returns it."""
        points = self._points_layer()
        if points is None:
            return POINT_KINDS[0]
        now = str(points.feature_defaults["correction"].iloc[0])
        kind = POINT_KINDS[1 - POINT_KINDS.index(now)]
        points.feature_defaults["correction"] = kind
        self.status.value = f"a click marks: {kind}"
        return kind

    def _corrections_snapshot(self, shape: tuple[int, ...]) -> Any:
        """The painted corrections with the clicked points drawn in (a copy: the user may go
        on painting while the worker teaches), or None when there are neither."""
        from .training.teach import PlaneCorrections, points_to_corrections

        labels, points = self._corrections_layer(), self._points_layer()
        if labels is None and (points is None or not len(points.data)):
            return None
        out: Any = None
        if labels is not None:
            out = _painted_planes(labels.data, shape, self._correction_chunks)
        elif _plane_wise(shape):
            out = PlaneCorrections(shape)
        if points is not None and len(points.data):
            kinds = [str(k) for k in points.features["correction"]]
            out = points_to_corrections(points.data, kinds, shape, corrections=out)
        return out

    def _on_teach(self) -> None:
        """Adapt the model to the painted corrections and clicked points (worker thread),
        then preview."""
        from napari.qt.threading import create_worker

        from .training.teach import CONCEPT, _painted

        layer, prompts = self.image_layer.value, self._prompt_list()
        if layer is None or not prompts:
            _error("choose an image and type the prompt first")
            return
        if self._busy is not None:
            return
        base = _full_resolution(layer)
        try:
            corrections = self._corrections_snapshot(base.shape[:-1] if layer.rgb else base.shape)
            # teach's own check of the painted values (planes of a volume), here so that a
            # mistake shows at once
            planes = (
                corrections if corrections is None or corrections.ndim == 3 else corrections[None]
            )
            painted = set() if planes is None else _painted(planes)[1]
        except ValueError as err:
            _error(str(err))
            return
        if CONCEPT not in painted:
            _error("paint or click some pixels of the concept (1, green) first")
            return
        self._cancel = threading.Event()
        request = {
            "image": base, "prompt": prompts[0], "corrections": corrections,
            "rgb": bool(layer.rgb), "model": self._model_spec(), "device": str(self.device.value),
            "layer": layer, "roi": self._roi(),
        }  # fmt: skip
        self._busy = create_worker(
            self._teach_work, request, self._cancel,
            _connect={"yielded": self._on_teach_progress, "returned": self._on_taught,
                      "errored": self._on_error, "finished": self._busy_finished},
        )  # fmt: skip
        self.teach_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "teaching..."

    def _teach_work(self, request: dict, cancel: threading.Event) -> Any:
        from .training.teach import iter_teach

        base = self._backend(request["model"], request["device"])
        taught = yield from iter_teach(
            request["image"], request["corrections"], request["prompt"], base=base,
            channel_axis=-1 if request["rgb"] else None, cancel=cancel,
            stats=self._image_stats(request["layer"]),
            roi_size=request["roi"], previous=self.taught,
        )  # fmt: skip
        return taught

    def _on_teach_progress(self, step: Any) -> None:
        self.status.value = f"teaching: {step.stage} {step.done} / {step.total}"

    def _on_taught(self, taught: Any) -> None:
        if taught is None:
            self.status.value = "teaching cancelled"
            return
        self.taught = taught
        self.model.reset_choices()
        self.model.value = taught.name
        self.status.value = f"taught '{taught.prompt}': {taught.summary()}"
        self._schedule_preview()

    def _busy_finished(self) -> None:
        self._busy = None
        self.teach_button.enabled = True
        self.most_uncertain_button.enabled = True
        self.cancel_button.enabled = self._worker is not None

    def _on_most_uncertain(self) -> None:
        """Move the view to the plane and region where the model is least sure."""
        from napari.qt.threading import create_worker

        layer = self.image_layer.value
        if layer is None or not self._prompt_list() or self._busy is not None:
            return
        request = self._view_request() or {}
        request.update(model=self._model_spec(), device=str(self.device.value),
                       prompts=self._prompt_list(), layer=layer)  # fmt: skip
        self._busy = create_worker(
            self._uncertain_work, request,
            _connect={"returned": self._go_to, "errored": self._on_error,
                      "finished": self._busy_finished},
        )  # fmt: skip
        self.most_uncertain_button.enabled = False
        self.status.value = "looking for the most uncertain region..."

    def _uncertain_work(self, request: dict) -> Any:
        from .interactive import scan_uncertainty
        from .io.source import ImageSource

        layer = request["layer"]
        base = _full_resolution(layer)
        backend = self._backend(request["model"], request["device"])
        source = ImageSource(base, -1 if layer.rgb else None)
        return scan_uncertainty(source, request["prompts"], model=backend,
                                stats=self._image_stats(layer, backend),
                                metadata=_physical(layer, 0))  # fmt: skip

    def _go_to(self, where: Any) -> None:
        layer = self.image_layer.value
        if where is None or layer is None:
            return
        spatial = layer.ndim - (1 if layer.rgb else 0)
        centre = ((where.rows[0] + where.rows[1]) / 2, (where.cols[0] + where.cols[1]) / 2)
        point = ((where.plane,) if spatial == 3 else ()) + centre
        world = layer.data_to_world(point + (0,) * (layer.ndim - len(point)))
        if spatial == 3:
            self._viewer.dims.set_point(0, float(world[0]))
        _camera(self._viewer).center = tuple(float(w) for w in world[-2:])
        edge = (where.rows[1] - where.rows[0]) * float(layer.scale[-1])
        canvas = min(self._viewer.window._qt_viewer.canvas.size)
        _camera(self._viewer).zoom = canvas / max(edge * 1.5, 1e-9)
        self.last_uncertain = where
        plane = f"plane {where.plane}, " if where.plane is not None else ""
        self.status.value = (
            f"most uncertain: {plane}rows {where.rows[0]}-{where.rows[1]}, columns "
            f"{where.cols[0]}-{where.cols[1]} (mean entropy {where.entropy:.2f}); correct here"
        )

    # --- full runs ------------------------------------------------------------------------
    def _on_run(self) -> None:
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return  # one run at a time; Cancel stops the current one
        layer = self.image_layer.value
        if layer is None:
            _error("choose an image layer to segment")
            return
        data = _full_resolution(layer)
        out = str(self.save_to.value or "").strip()
        out_path = Path(out) if out not in ("", ".") else _temporary_store(layer.name)
        try:
            options = SegmentOptions(
                model=self._model_spec(),
                roi_size=self._roi(),
                overlap=self._overlap(),
                threshold=float(self.threshold.value),
                device=str(self.device.value),
                channel_axis=-1 if layer.rgb else None,
                out=out_path,
                resume=bool(self.resume_checkbox.value),
                overwrite=bool(self.overwrite_checkbox.value),
                instances="instances" in self.output.value,
                split=bool(self.split.value),
                min_size=_size_value(str(self.min_size.value)),
                fill_holes=bool(self.fill_holes.value),
                smooth=int(self.smooth.value),
                probabilities="uint8"
                if {"probabilities", "uncertainty"} & set(self.output.value)
                else "none",
            )
        except (TypeError, ValueError) as err:
            _error(str(err))
            return
        params = {
            "prompts": self._prompt_list(),
            "options": options,
            "metadata": _physical(layer),
            "name": layer.name,
        }
        if self._preview_cancel is not None:
            self._preview_cancel.set()  # a full run takes the machine
        self._cancel = threading.Event()
        self._running = True
        self._live = None
        self.measurements.value = []
        self.export_button.enabled = self.report_button.enabled = False
        worker = create_worker(
            self._work, data, params, self._cancel,
            _connect={
                "yielded": lambda step: self._on_progress(step, layer, options),
                "returned": lambda r: self._on_done(r, layer),
                "errored": self._on_error,
                "finished": self._on_finished,
            },
            _start_thread=False,
        )  # fmt: skip
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"loading the model; writing to {out_path}"
        worker.start()

    def _work(self, data: Any, params: dict, cancel: threading.Event):
        """Runs on the worker thread: the core generator, then measurements."""
        import dataclasses

        from .api import iter_segment
        from .io.source import ImageSource
        from .measure import report

        options = params["options"]
        source = ImageSource(data, options.channel_axis, name=params["name"],
                             metadata=params["metadata"])  # fmt: skip
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

    def _on_progress(self, step: Any, layer: Any, options: SegmentOptions) -> None:
        from napari.utils import progress

        if not self._running:
            return  # a step queued before the run ended
        what = "windows" if step.stage == "segment" else "chunks"
        self.status.value = (
            f"{step.stage}: {step.done} / {step.total} {what}; writing to {options.out}"
        )
        if self._progress is None or self._progress.desc != step.stage:
            if self._progress is not None:
                self._progress.close()
            self._progress = progress(total=step.total, desc=step.stage)
        # updating napari's progress bar processes Qt events: the run's end may be handled
        # in it, after which this step is stale (its status must not replace the end's)
        self._progress.update(step.done - self._progress.n)
        if not self._running:
            return
        if step.stage == "segment":
            self._show_live(layer, options)

    def _show_live(self, layer: Any, options: SegmentOptions) -> None:
        """The store's labels as a layer that fills in while the run goes on."""
        import zarr
        from napari.layers import Layer

        from ._layers import labels_layer

        now = time.monotonic()
        if self._live is None and options.out is not None:
            try:
                labels = zarr.open_group(options.out, mode="r")["labels/segmentation/0"]
            except (KeyError, FileNotFoundError, ValueError):
                return  # not created yet
            spatial = len(labels.shape)
            names = {i + 1: p for i, p in enumerate(self._prompt_list())}
            data, kwargs, kind = labels_layer(
                labels, name=f"{layer.name} labels (running)", label_names=names,
                scale=tuple(layer.scale[-spatial:]), translate=tuple(layer.translate[-spatial:]),
                units=_units(layer, spatial),
            )  # fmt: skip
            self._live = self._viewer.add_layer(Layer.create(data, kwargs, kind))
            self._last_refresh = now
        elif self._live is not None and now - self._last_refresh >= REFRESH_SECONDS:
            self._live.refresh()
            self._last_refresh = now

    def _on_cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.status.value = "cancelling (finishing the current batch)..."

    def _on_error(self, err: Exception) -> None:
        self.status.value = f"error: {err}"
        _error(str(err))

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._running = False
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self._worker = None

    # --- results --------------------------------------------------------------------------
    def _on_done(self, payload: tuple, layer: Any) -> None:
        from napari.utils.notifications import show_info

        result, found, text = payload
        self._running = False
        self.last_result = result
        self._report = None
        self.report_button.enabled = result.complete
        if self._live is not None:  # the final layers (with their pyramids) replace it
            if self._live in self._viewer.layers:
                self._viewer.layers.remove(self._live)
            self._live = None
        if not result.complete:
            msg = (
                f"cancelled after {result.info.windows} of {result.info.total} windows; "
                f"finished chunks are in {result.out}: tick 'resume' and Run to complete them"
            )
            self.status.value = msg
            self.measurements.value = []
            show_info(f"napari-llmseg: {msg}")
            return
        self._add_layers(result, layer)
        self._last_measurements = found
        self._last_image = _full_resolution(layer)
        self.measurements.value = _table(found)
        self.export_button.enabled = bool(found)
        notes = "".join(f"\n⚠ {w}" for w in result.warnings)
        self.status.value = f"{text}\nsaved to {result.out}{notes}"
        show_info(f"napari-llmseg: {text} (saved to {result.out})")

    def _add_layers(self, result: Any, layer: Any) -> None:
        from napari.layers import Layer

        from ._layers import result_layers

        spatial = len(result.labels.shape)
        wanted = set(self.output.value) or {"labels"}
        uncertain = None
        if "uncertainty" in wanted and result.probabilities is not None:
            uncertain = uncertainty(result.probabilities)
        layers = result_layers(
            result, name=layer.name, outputs=wanted,
            scale=tuple(layer.scale[-spatial:]), translate=tuple(layer.translate[-spatial:]),
            units=_units(layer, spatial),
            uncertainty=uncertain,
        )  # fmt: skip
        for data, kwargs, kind in layers:
            self._viewer.add_layer(Layer.create(data, kwargs, kind))

    def _on_export(self) -> None:
        from napari.utils.notifications import show_info

        from .measure import to_csv

        target = str(self.csv_path.value or "").strip()
        if target in ("", ".") or not self._last_measurements:
            _error("choose a CSV file name (and run a segmentation) first")
            return
        path = to_csv(self._last_measurements, target)
        show_info(f"napari-llmseg: measurements written to {path}")

    def _on_report(self) -> None:
        import webbrowser

        from napari.utils.notifications import show_info

        result = self.last_result
        if result is None or not result.complete:
            _error("run a segmentation first")
            return
        if self._report is None or not self._report.exists():
            try:
                self._report = _report_file(result, self._last_image)
            except (OSError, ValueError) as err:
                _error(str(err))
                return
        webbrowser.open(self._report.as_uri())
        show_info(f"napari-llmseg: report {self._report}")


def _full_resolution(layer: Any) -> Any:
    """A layer's data at full resolution (level 0 of a multiscale layer)."""
    return layer.data[0] if layer.multiscale else layer.data


def _units(layer: Any, ndim: int) -> tuple[str, ...] | None:
    """The last ``ndim`` units of ``layer`` (a layer made beside it must share them, or
    napari warns "Inconsistent units across layers")."""
    units = getattr(layer, "units", None)
    return tuple(str(u) for u in units[-ndim:]) if units is not None else None


def _physical(layer: Any, level: int = 0) -> dict:
    """The physical metadata of ``layer``'s data at pyramid ``level``, as the core reads it
    (:attr:`ImageSource.metadata`); what a MONAI bundle resamples and reorients with.

    ``scale`` (the layer's, times the level's downsample factors); ``units`` in the short
    names the core expects (napari's pint units read "millimeter": "mm"), left out when any
    axis has none ("pixel"); ``affine`` (4 x 4, NIfTI convention, columns scaled by the
    level's factors) when the plugin's NIfTI or DICOM reader put one in the layer's metadata
    and the layer's data still has the shape it was read with.
    """
    from ._layers import NO_UNITS
    from .measure import short_unit

    base = _full_resolution(layer)
    spatial = base.ndim - (1 if layer.rgb else 0)
    factor = np.ones(spatial)
    if layer.multiscale:
        factor = np.asarray(layer.downsample_factors[level], dtype=float)[-spatial:]
    scale = [float(s) * float(f) for s, f in zip(layer.scale[-spatial:], factor, strict=True)]
    meta: dict[str, Any] = {"scale": scale}
    units = _units(layer, spatial)
    if units and not any(u in NO_UNITS for u in units):
        meta["units"] = [short_unit(u) for u in units]
    found = (getattr(layer, "metadata", None) or {}).get("napari_llmseg_source") or {}
    affine = found.get("affine")
    if affine is not None and spatial == 3 and _read_shape(found, base.shape[:spatial]):
        zyx = np.asarray(affine, dtype=float)
        if zyx.shape == (4, 4):
            meta["affine"] = (zyx @ np.diag([*factor[::-1], 1.0])).tolist()
    return meta


def _read_shape(found: dict, shape: tuple[int, ...]) -> bool:
    """Whether a volume of ``shape`` (Z, Y, X) is the one a reader described in ``found``
    (NIfTI: ``shape_ijk``; DICOM: ``n_slices``), and not data replaced since."""
    if "shape_ijk" in found:
        return tuple(int(n) for n in reversed(found["shape_ijk"])) == tuple(shape)
    if "n_slices" in found:
        return int(found["n_slices"]) == int(shape[0])
    return False


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _single_shot(ms: int, slot: Any, parent: Any) -> Any:
    """A restartable one-shot timer (the debounce of previews and prompt checks), owned by
    ``parent`` so that it goes with the widget."""
    from qtpy.QtCore import QTimer

    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(slot)
    return timer


def _error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(f"napari-llmseg: {message}")


def _temporary_store(name: str) -> Path:
    """Where a run without *save to* writes (shown when the run starts)."""
    folder = Path(tempfile.gettempdir()) / "napari-llmseg"
    folder.mkdir(exist_ok=True)
    safe = re.sub(r"[^\w.-]+", "_", name)
    return folder / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}.zarr"


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
    """Columns for the measurements table: per object (instances) or per prompt, sizes in
    the units users read (mL, ha, km^2...), never in scientific notation."""
    from .measure import format_number, format_size

    def size(value: float | None, unit: str) -> str:
        if value is None:
            return ""
        if unit in ("px", "voxel"):  # no physical units: a count
            return f"{format_number(value)} {unit}{'s' if value != 1 else ''}"
        return format_size(value, unit)

    if found and hasattr(found[0], "centroid"):
        return {
            "id": [o.id for o in found],
            "prompt": [o.prompt for o in found],
            "size": [size(o.size, o.unit) for o in found],
            "centroid": [", ".join(format_number(c) for c in o.centroid) for o in found],
            "mean intensity": [
                "" if o.mean_intensity is None else format_number(o.mean_intensity) for o in found
            ],
        }
    return {
        "prompt": [m.prompt for m in found],
        "size": [size(m.size, m.unit) for m in found],
        "% of image": [f"{100 * m.fraction:.2f} %" for m in found],  # text: the table keeps it
        "objects": [m.objects if m.objects is not None else "not counted" for m in found],
        "mean intensity": [
            "" if m.mean_intensity is None else format_number(m.mean_intensity) for m in found
        ],
    }


def uncertainty(probabilities: Any) -> Any:
    """Pixel-wise binary entropy (bits, 0..1) of the least certain prompt.

    1 where some prompt's probability is 0.5, 0 where every prompt is sure; lazy (dask) for
    zarr-backed results.
    """
    from .interactive import entropy

    if isinstance(probabilities, np.ndarray):
        return entropy(probabilities)
    import dask.array as da

    lazy = da.from_array(probabilities, chunks=probabilities.chunks).rechunk({0: -1})
    return lazy.map_blocks(entropy, drop_axis=0, dtype=np.float32)


__all__ = ["SegmentWidget", "uncertainty"]


def _plane_wise(shape: tuple[int, ...]) -> bool:
    """Whether corrections of this shape are held plane by plane (see CORRECTIONS_IN_MEMORY)."""
    return len(shape) == 3 and int(np.prod(shape, dtype=np.int64)) > CORRECTIONS_IN_MEMORY


def _lazy_planes(shape: tuple[int, ...]) -> tuple[Any, dict]:
    """A zeros zarr array in memory that stores only the chunks painted (napari's Labels paint
    into it as into numpy), chunked one plane deep, and the dict its store keeps them in (so
    that the painted planes are found from the chunk keys, ``c/<z>/<y>/<x>``)."""
    import zarr
    from zarr.storage import MemoryStore

    tile = min(CORRECTION_TILE, max(shape[1:]))
    chunks: dict = {}
    array = zarr.create_array(
        MemoryStore(store_dict=chunks), shape=shape, chunks=(1, tile, tile), dtype="uint8",
        fill_value=0, compressors=None, chunk_key_encoding={"name": "default", "separator": "/"},
    )  # fmt: skip
    return array, chunks


def _painted_planes(data: Any, shape: tuple[int, ...], ours: tuple[Any, dict] | None) -> Any:
    """A copy of the corrections layer's data for Teach: the whole array when it is small, or
    a PlaneCorrections of the planes that hold a stored chunk when it is the volume's array
    from :func:`_lazy_planes` (``ours``: it and its chunk dict)."""
    from .training.teach import PlaneCorrections

    if not _plane_wise(shape):
        return np.array(data, np.uint8)
    if ours is None or data is not ours[0]:  # another array put there: read every plane
        planes: Any = range(shape[0])
    else:
        planes = sorted({int(k.split("/")[1]) for k in list(ours[1]) if k.startswith("c/")})
    stored = {z: np.array(data[z], np.uint8) for z in planes}
    return PlaneCorrections(shape, {z: p for z, p in stored.items() if p.any()})
