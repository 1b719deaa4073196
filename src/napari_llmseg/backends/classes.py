"""Prompts for models with named classes: which output channels a prompt means, and merging them.

A model with a fixed set of classes (a MONAI network, a Model Zoo bundle: one output channel
per class, channel 0 usually the background) becomes text-promptable through its class names.
:func:`match_classes` decides which classes each prompt means; :func:`merge_classes` turns the
model's per-class output into one logit per prompt.

Rule for matching a prompt to classes, in order:

1. **Words.** Names and prompts are read as words: lower case, ``_``, ``-``, ``.`` and
   camelCase boundaries as spaces, plurals as singulars ("kidneys" -> "kidney", "arteries" ->
   "artery", "vertebrae" -> "vertebra"), and "the", "a", "an", "of", "and" dropped. A class
   matches when every word of the prompt is one of its words: "kidneys" and "kidney" match
   ``kidney_right`` and ``kidney_left``, "right kidney" matches ``kidney_right`` only,
   "lungs" every lung lobe. When any class matches by words, those are the prompt's classes.
2. **Meaning.** Otherwise the text encoder (MiniLM, :mod:`.text`) compares the prompt with
   each class name (as words, and with a side or position word such as "right" moved first:
   "right kidney"), as :mod:`.knowledge` compares prompts with concepts: cosine similarity to
   the L2-normalised mean of the phrasings' embeddings. The most similar class matches if its
   similarity is at least :data:`~.knowledge.THRESHOLD` (0.544), and so does every other
   class within :data:`MARGIN` of it ("renal": ``kidney_right`` 0.80 and ``kidney_left``
   0.76; "hepatic": ``liver`` 0.81, the next class 0.50).
3. **Nothing.** A prompt matching no class is an error naming the prompt, the nearest class
   names with their similarities, and every class.

A match by meaning is reported as a warning, because it can be wrong. On 17 synonyms of
TotalSegmentator-style class names and 20 unrelated prompts (2026-12-01), the nearest class by
meaning was right for 14 synonyms ("hepatic", "renal", "splenic" 0.66, "windpipe" 0.55...),
wrong for 3 ("intestine" -> ``stomach`` 0.59, "large intestine" -> ``small_bowel`` 0.63) or
too far ("gullet" 0.44); 17 unrelated prompts were refused ("tumor" 0.42, "ribs" 0.51) and 3
matched ("abdomen" -> ``stomach`` 0.84, "organs" -> ``liver`` 0.67, "body" 0.63). No
threshold separates these (a general word is near its parts), so the threshold stays the one
of :mod:`.knowledge`, and the warning says what was matched.

Merging: the model's output is turned into probabilities over all classes (a softmax over
the channel axis; an output that already is one, values in [0, 1] summing to 1 at every
voxel, is used as it is), the probabilities of a prompt's classes are summed, and the sum is
returned as a logit, ``log(p / (1 - p))``, which the engine blends across windows and turns
back into ``p`` with its sigmoid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Classes within this similarity of the best match also match (meaning only, rule 2).
MARGIN = 0.05
#: Words that say where (a class "kidney_right" is also phrased "right kidney").
_SIDES = frozenset(
    "left right upper lower middle anterior posterior superior inferior proximal distal "
    "medial lateral".split()
)
_STOP = frozenset({"the", "a", "an", "of", "and"})
#: Probabilities are clipped to [EPS, 1 - EPS] before the logit (|logit| <= 16.1).
EPS = 1e-7
#: An output counts as probabilities when its channels sum to 1 within this.
SUM_TOLERANCE = 1e-3


def _singular(word: str) -> str:
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("ae"):
        return word[:-1]
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> tuple[str, ...]:
    """A class name or prompt as singular, lower-case words: ``"kidney_right"`` ->
    ``("kidney", "right")``, ``"the Kidneys"`` -> ``("kidney",)``."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    parts = re.split(r"[\s_\-.,/]+", spaced.casefold())
    return tuple(_singular(w) for w in parts if w and w not in _STOP)


def phrasings(name: str) -> list[str]:
    """How a class name is read by the text encoder: its words, and with a side or
    position word moved first (``"kidney_right"`` -> ``["kidney right", "right kidney"]``)."""
    ws = list(words(name)) or [name]
    out = [" ".join(ws)]
    sides = [w for w in ws if w in _SIDES]
    if sides and ws[0] not in _SIDES:
        out.append(" ".join(sides + [w for w in ws if w not in _SIDES]))
    return out


@dataclass(frozen=True)
class ClassMatch:
    """The classes one prompt means.

    Attributes
    ----------
    prompt : str
    channels : tuple of int
        Output channels of the matched classes.
    names : tuple of str
        Their class names, in the same order.
    similarities : tuple of float
        Text similarity of the prompt to each matched class (1.0 for a match by words).
    how : str
        ``"words"`` or ``"meaning"`` (see the module docstring).
    """

    prompt: str
    channels: tuple[int, ...]
    names: tuple[str, ...]
    similarities: tuple[float, ...]
    how: str

    def describe(self) -> str:
        """``"kidneys -> kidney_right, kidney_left"`` (with similarities for meaning)."""
        if self.how == "words":
            return f"{self.prompt} -> {', '.join(self.names)}"
        found = ", ".join(f"{n} ({s:.2f})" for n, s in zip(self.names, self.similarities,
                                                          strict=True))  # fmt: skip
        return f"{self.prompt} -> {found} (by meaning)"

    def note(self) -> str | None:
        """For a match by meaning, a warning that says so (it may be wrong: "abdomen" is
        nearest to ``stomach``); None for a match by words."""
        if self.how == "words":
            return None
        found = ", ".join(f"'{n}' ({s:.2f})" for n, s in zip(self.names, self.similarities,
                                                            strict=True))  # fmt: skip
        return (
            f"'{self.prompt}' is no class name; matched by meaning to {found}. Check that this "
            "is what you meant, or use a class name"
        )

    def to_dict(self) -> dict:
        return {"channels": list(self.channels), "classes": list(self.names), "how": self.how}


def check_class_names(value: Any) -> dict[int, str]:
    """Class names as ``{channel: name}``.

    Accepts a mapping of channel (int, or a string of digits as JSON keys are) to name, or a
    sequence of names (channel i is item i).

    Raises
    ------
    ValueError
        For a negative or non-integer channel, an empty or non-string name, a name given to
        two channels, or no names at all.
    """
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = list(enumerate(value))
    else:
        raise ValueError(
            f"class_names must be a mapping {{channel: name}} or a list of names, got {value!r}"
        )
    if not items:
        raise ValueError("class_names must name at least one class, got none")
    out: dict[int, str] = {}
    for key, name in items:
        channel = key
        if isinstance(key, str) and key.strip().isdigit():
            channel = int(key)
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or channel < 0:
            raise ValueError(
                f"class_names: channel {key!r} must be an integer >= 0 (the model's output "
                "channel)"
            )
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class_names: channel {key} needs a non-empty name, got {name!r}")
        out[int(channel)] = name.strip()
    seen: dict[str, int] = {}
    for channel, name in sorted(out.items()):
        if name.casefold() in seen:
            raise ValueError(
                f"class_names: {name!r} names channels {seen[name.casefold()]} and {channel}; "
                "each class needs its own name"
            )
        seen[name.casefold()] = channel
    return dict(sorted(out.items()))


def parse_class_names(text: str) -> dict[int, str]:
    """``--class-names``: a JSON file (``{"1": "liver"}``, a list of names, or a MONAI
    ``channel_def``), or ``"1=liver,2=kidney_right"``.

    Raises
    ------
    ValueError
        For a missing or unreadable file, or text that is neither form.
    """
    stripped = text.strip()
    if stripped.lower().endswith(".json") or Path(stripped).is_file():
        path = Path(stripped).expanduser()
        if not path.is_file():
            raise ValueError(f"class names file '{path}' does not exist")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"class names file '{path}' is not valid JSON: {err}") from None
        return check_class_names(data)
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in stripped.split(","))):
        channel, sep, name = part.partition("=")
        if not sep:
            raise ValueError(
                f"--class-names: expected a JSON file or CHANNEL=NAME pairs such as "
                f"'1=liver,2=kidney_right', got {text!r}"
            )
        pairs[channel.strip()] = name
    return check_class_names(pairs)


def class_similarities(prompts: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """(P, K) cosine similarity of each prompt to each class name's centroid (the
    L2-normalised mean of its :func:`phrasings`' embeddings)."""
    from .knowledge import _embed

    reads = [phrasings(n) for n in names]
    flat = tuple(dict.fromkeys(p for r in reads for p in r))
    table = dict(zip(flat, _embed(flat), strict=True))
    centroids = np.stack([np.mean([table[p] for p in r], axis=0) for r in reads])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    asked = tuple(" ".join(words(p)) or p for p in prompts)
    return _embed(asked) @ centroids.T


def match_classes(prompts: Sequence[str], class_names: Mapping[int, str]) -> list[ClassMatch]:
    """The classes each prompt means (see the module docstring for the rule).

    Raises
    ------
    ValueError
        For a prompt that matches no class: names the prompt, the three nearest class names
        with their similarities, and every class.
    """
    from .knowledge import THRESHOLD

    channels = list(class_names)
    names = [class_names[c] for c in channels]
    name_words = [set(words(n)) for n in names]
    out: list[ClassMatch] = []
    sims: np.ndarray | None = None
    for i, prompt in enumerate(prompts):
        asked = set(words(prompt))
        hits = [k for k, ws in enumerate(name_words) if asked and asked <= ws]
        if hits:
            found = tuple(names[k] for k in hits)
            out.append(ClassMatch(prompt, tuple(channels[k] for k in hits), found,
                                  (1.0,) * len(hits), "words"))  # fmt: skip
            continue
        if sims is None:
            sims = class_similarities(prompts, names)
        row = sims[i]
        best = float(row.max())
        if best < THRESHOLD:
            order = np.argsort(-row)[:3]
            nearest = ", ".join(f"'{names[k]}' ({row[k]:.2f})" for k in order)
            raise ValueError(
                f"the prompt '{prompt}' matches none of the model's classes: the nearest are "
                f"{nearest}, and a class needs a text similarity of at least {THRESHOLD} (or "
                f"all the prompt's words in its name); classes: {', '.join(names)}"
            )
        hits = [k for k in np.argsort(-row) if row[k] >= max(THRESHOLD, best - MARGIN)]
        similar = tuple(round(float(row[k]), 4) for k in hits)
        out.append(ClassMatch(prompt, tuple(channels[k] for k in hits),
                              tuple(names[k] for k in hits), similar, "meaning"))  # fmt: skip
    return out


def is_probability(out: np.ndarray, axis: int = 1) -> bool:
    """Whether ``out`` already holds class probabilities along ``axis``: every value in
    [0, 1] and the channels summing to 1 (within :data:`SUM_TOLERANCE`) at every voxel."""
    if out.size == 0 or out.min() < 0 or out.max() > 1:
        return False
    return bool(np.all(np.abs(out.sum(axis=axis) - 1) <= SUM_TOLERANCE))


def class_probabilities(out: np.ndarray) -> np.ndarray:
    """(B, K, *roi) model output -> class probabilities: a softmax over axis 1, unless the
    output already is one (:func:`is_probability`)."""
    out = np.asarray(out, dtype=np.float32)
    if is_probability(out):
        return out
    shifted = out - out.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def merge_classes(out: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """(B, K, *roi) per-class output -> (B, P, *roi) logits, one per prompt: the logit of the
    summed probabilities of the prompt's classes.

    Raises
    ------
    ValueError
        When the output has fewer channels than a matched class needs.
    """
    out = np.asarray(out)
    need = max(max(g) for g in groups) + 1
    if out.ndim < 3 or out.shape[1] < need:
        raise ValueError(
            f"the model returned an output of shape {tuple(out.shape)}, but its class names "
            f"go up to channel {need - 1}: it must give (batch, {need} or more classes, "
            "*window)"
        )
    prob = class_probabilities(out)
    merged = np.stack([prob[:, list(g)].sum(axis=1) for g in groups], axis=1)
    np.clip(merged, EPS, 1 - EPS, out=merged)
    return np.log(merged / (1 - merged)).astype(np.float32)
