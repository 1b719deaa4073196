"""Model -> the engine's :class:`Predictor`: batches of raw windows in, logits out.

Two kinds of models reach the engine, and the local and the Dask paths adapt both the same way
through :func:`make_predictor`:

* a :class:`~napari_llmseg.backends.base.PromptSegmenter` (llmseg-tiny, CLIPSeg, SAM 3, a
  taught model...): prompts are encoded once, every batch is normalised by the backend with
  the whole-input statistics (on the reader thread) and predicted;
* a plain callable (a function or a torch module) taking a float32 torch tensor of raw
  pixels, as MONAI's ``sliding_window_inference`` takes a network: ``f(batch)`` or
  ``f(batch, prompts)`` (:func:`takes_prompts`), one output channel per prompt; no
  normalisation; pixels outside the image are ``cval`` (MONAI pads with 0 by default); a
  tuple or dict output gives its first item (or ``output_key``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from .normalize import IntensityStats


class Predictor(Protocol):
    """What the engine needs from a model.

    A predictor may also have a ``batch_limit`` attribute (int or None): the most windows its
    model runs at once, which the engine reports as ``RunInfo.batch_size_used``.
    """

    n_outputs: int

    def pad_value(self) -> np.ndarray:
        """Per-channel raw value for pixels outside the image and non-finite pixels."""

    def prepare(self, raw: np.ndarray) -> Any:
        """Turn raw windows (B, C, *roi) float32 into model input; runs on the reader thread."""

    def predict(self, prepared: Any) -> np.ndarray:
        """Logits (B, n_outputs, *roi) float32 for a prepared batch."""


class BackendPredictor:
    """Adapts a PromptSegmenter to the engine's Predictor protocol.

    ``encoded``: prompt encodings computed elsewhere (on the Dask client), to skip encoding.
    ``cval``: raw value for pixels outside the image instead of the backend's own
    (:meth:`PromptSegmenter.pad_value`).
    """

    def __init__(
        self,
        backend: Any,
        prompts: Sequence[str],
        stats: IntensityStats,
        encoded: Any = None,
        cval: float | None = None,
    ) -> None:
        self.backend, self.stats, self.cval = backend, stats, cval
        self.encoded = backend.encode_prompts(list(prompts)) if encoded is None else encoded
        self.n_outputs = len(prompts)

    @property
    def batch_limit(self) -> int | None:
        return self.backend.batch_limit

    def pad_value(self) -> np.ndarray:
        pad = np.asarray(self.backend.pad_value(self.stats), dtype=np.float32)
        return pad if self.cval is None else np.full_like(pad.reshape(-1), self.cval)

    def prepare(self, raw: np.ndarray) -> Any:
        return self.backend.preprocess(raw, self.stats)

    def predict(self, prepared: Any) -> np.ndarray:
        return np.asarray(self.backend.predict(prepared, self.encoded), dtype=np.float32)

    def predict_with_instances(self, prepared: Any) -> tuple[np.ndarray, list]:
        logits, found = self.backend.predict_with_instances(prepared, self.encoded)
        return np.asarray(logits, dtype=np.float32), found


def takes_prompts(fn: Callable) -> bool | str:
    """How a callable model wants its prompts: True for ``f(batch, prompts)``, ``"keyword"``
    for ``f(batch, prompts=prompts)``, False for ``f(batch)``.

    The rule, from the signature (a torch module's ``forward``): two or more positional
    parameters without defaults take the prompts second; otherwise a parameter named
    ``prompts`` takes them by keyword; otherwise the model gets the batch only, as a MONAI
    network (``forward(x)``) or a function ``f(x, *args, **kwargs)`` does. A callable whose
    signature cannot be read gets ``f(batch, prompts)``.
    """
    target = getattr(fn, "forward", fn) if _is_torch_module(fn) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    if len(required) >= 2:
        return True
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.name == "prompts" and p.kind in named for p in params):
        return "keyword"
    return False


def _is_torch_module(fn: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(fn, torch.nn.Module)


def select_output(out: Any, key: int | str | None) -> Any:
    """The output to blend from what a model returned.

    A tensor or array is used as it is. Of a tuple or list, the first item (or item ``key``);
    of a dict, the first value in its order (or the value under ``key``), as MONAI's
    deep-supervision and multi-head networks return their main output first.

    Raises
    ------
    ValueError
        For a ``key`` the output does not have, an empty tuple/dict, or a ``key`` given for a
        model that returns a single tensor.
    """
    if isinstance(out, Mapping):
        if not out:
            raise ValueError("the model returned an empty dict; expected logits")
        if key is None:
            return next(iter(out.values()))
        if key not in out:
            raise ValueError(f"output_key={key!r} is not a key of the model's output {list(out)}")
        return out[key]
    if isinstance(out, (tuple, list)):
        if not out:
            raise ValueError(f"the model returned an empty {type(out).__name__}; expected logits")
        if key is None:
            return out[0]
        if isinstance(key, bool) or not isinstance(key, int) or not -len(out) <= key < len(out):
            raise ValueError(
                f"output_key={key!r}: the model returned a {type(out).__name__} of {len(out)} "
                "outputs; give an index into it"
            )
        return out[key]
    if key is not None:
        raise ValueError(
            f"output_key={key!r} picks one output of a model that returns a tuple or dict; "
            f"this model returned a single {type(out).__name__}"
        )
    return out


class CallablePredictor:
    """A plain callable model: raw float32 input, no normalisation.

    Parameters
    ----------
    fn : callable
        ``f(batch)`` or ``f(batch, prompts)`` (see :func:`takes_prompts`): a float32 torch
        tensor ``(B, C, *roi)`` in, logits ``(B, P, *roi)`` out, one channel per prompt. A
        tuple/list or dict output gives its first item, or the one ``output_key`` names.
    prompts : sequence of str
        The run's prompts; they name the model's output channels, in order.
    n_channels : int
        Input channels.
    device : torch.device or str
        Where batches are sent (a torch module's own device when the run's device is
        ``"auto"``).
    cval : float, optional
        Raw value of pixels outside the image and of non-finite or nodata pixels (MONAI's
        ``cval``); 0 by default, as MONAI pads.
    output_key : int or str, optional
        Which output of a model returning several to blend (:func:`select_output`).
    """

    def __init__(
        self,
        fn: Callable,
        prompts: Sequence[str],
        n_channels: int,
        device: Any = "cpu",
        cval: float | None = None,
        output_key: int | str | None = None,
    ) -> None:
        self.fn, self.prompts, self.device = fn, list(prompts), device
        self.n_outputs = len(prompts)
        self.output_key = output_key
        self.prompt_style = takes_prompts(fn)
        self._pad = np.full(n_channels, 0.0 if cval is None else cval, dtype=np.float32)

    def pad_value(self) -> np.ndarray:
        return self._pad  # MONAI pads with cval, 0 by default

    def prepare(self, raw: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(raw).to(self.device)

    def predict(self, prepared: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            if self.prompt_style == "keyword":
                out = self.fn(prepared, prompts=self.prompts)
            elif self.prompt_style:
                out = self.fn(prepared, self.prompts)
            else:
                out = self.fn(prepared)
        out = select_output(out, self.output_key)
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)


class ClassPredictor:
    """A model with named classes, asked by prompt: the inner predictor gives one output
    channel per class, this one a logit per prompt, the logit of the summed probabilities of
    the prompt's classes (:func:`napari_llmseg.backends.classes.merge_classes`).

    ``groups``: the output channels of each prompt's classes, in prompt order.
    """

    def __init__(self, inner: Any, groups: Sequence[Sequence[int]]) -> None:
        if not groups or any(len(g) == 0 for g in groups):
            raise ValueError(f"every prompt needs at least one class channel, got {groups!r}")
        self.inner = inner
        self.groups = [tuple(int(c) for c in g) for g in groups]
        self.n_outputs = len(self.groups)

    @property
    def batch_limit(self) -> int | None:
        return getattr(self.inner, "batch_limit", None)

    @property
    def encoded(self) -> Any:
        """The inner backend's encodings (sent to Dask workers), if any."""
        return getattr(self.inner, "encoded", None)

    def pad_value(self) -> np.ndarray:
        return self.inner.pad_value()

    def prepare(self, raw: np.ndarray) -> Any:
        return self.inner.prepare(raw)

    def predict(self, prepared: Any) -> np.ndarray:
        from ..backends.classes import merge_classes

        return merge_classes(self.inner.predict(prepared), self.groups)


def is_backend(model: Any) -> bool:
    """Whether ``model`` is a backend (has ``encode_prompts``) rather than a plain callable."""
    return hasattr(model, "encode_prompts") and hasattr(model, "preprocess")


def make_predictor(
    model: Any,
    prompts: Sequence[str],
    *,
    stats: IntensityStats | None,
    n_channels: int,
    device: Any = "cpu",
    encoded: Any = None,
    cval: float | None = None,
    output_key: int | str | None = None,
    classes: Sequence[Sequence[int]] | None = None,
    class_names: Mapping[int, str] | None = None,
) -> BackendPredictor | CallablePredictor | ClassPredictor:
    """The predictor for a loaded backend or a callable model (``output_key``: callables
    only).

    ``classes``: for a model with named classes (``class_names``, by output channel), the
    output channels each prompt means (:func:`napari_llmseg.backends.classes.match_classes`);
    the model is then called for its classes (a callable that takes prompts gets the class
    names, ``"class K"`` for an unnamed channel) and the predictor gives one logit per prompt
    (:class:`ClassPredictor`). ``stats``: the input's intensity range, which a backend
    normalises with (a callable gets the pixels as they are and may be given None).
    """
    if classes is not None:
        known = dict(class_names or {})
        top = max([max(g) for g in classes] + list(known))
        names = [known.get(c, f"class {c}") for c in range(top + 1)]
        inner = make_predictor(model, names, stats=stats, n_channels=n_channels, device=device,
                               encoded=encoded, cval=cval, output_key=output_key)  # fmt: skip
        return ClassPredictor(inner, classes)
    if is_backend(model):
        if stats is None:
            raise ValueError("a backend needs the input's intensity statistics (stats=)")
        return BackendPredictor(model, prompts, stats, encoded=encoded, cval=cval)
    return CallablePredictor(model, prompts, n_channels, device, cval, output_key)
