"""What a model knows, and how far a prompt is from it.

A model with a closed vocabulary (llmseg-tiny, a model taught a concept) lists its concepts
and the phrasings each was trained with (:meth:`PromptSegmenter.concept_phrasings`). A prompt
far from all of them gets an empty or, more often, a wrong mask (usually the nearest concept's:
"nucleoli" gives nuclei, "teeth" bone). :func:`nearest_concepts` says which concept a prompt is
nearest to, how similar the texts are, and whether that is close enough to count as known; it
looks only at the text (MiniLM sentence embeddings), never at an image, and is a warning,
never a refusal.

Rule: the similarity of a prompt to a concept is the cosine similarity between the prompt's
embedding and the concept's centroid (the L2-normalised mean of its phrasings' embeddings);
the nearest concept is the most similar; the prompt is known when that similarity is at least
:data:`THRESHOLD`. A prompt that is exactly a trained phrasing is known, a trained negative is
not (case and spacing ignored).

The threshold was chosen on 188 labelled prompts (118 known: llmseg-tiny's held-out
phrasings, its training phrasings each scored with itself left out, and 60 new paraphrases;
70 unknown: its negatives and 44 in-domain prompts such as organs, organelles and map
features): 110 of 118 known prompts pass and 68 of 70 unknown ones are flagged. Rule (b),
centroids, was compared with the best single phrasing and with margins over the negatives:
its threshold hardly moves when a whole domain (microscopy, radiology, GIS) is left out
(0.544-0.553, 11 errors of 175), the others' move a lot. 0.544 is the middle of the widest
gap between the best cut-offs ("sand beach", unknown, 0.536; "reservoirs and ponds", known,
0.553). Parts of a known concept pass ("cerebellum" 0.65, "brain tumor" 0.59), and so do
negations ("not water"): the sentence encoder barely reads "not".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

#: Centroid similarity from which a prompt counts as known (see the module docstring).
THRESHOLD = 0.544


@dataclass(frozen=True)
class Match:
    """The nearest known concept of one prompt.

    Attributes
    ----------
    prompt : str
    concept : str
        The nearest concept; for a trained phrasing, its own concept.
    similarity : float
        Cosine similarity between the prompt and the concept's centroid, in [-1, 1].
    known : bool
        Whether the prompt is close enough to what the model knows.
    reason : str
        What decided ``known``: "centroid" (the threshold), "trained phrasing" or
        "trained negative".
    """

    prompt: str
    concept: str
    similarity: float
    known: bool
    reason: str = "centroid"


def prompt_key(text: str) -> str:
    """A prompt as compared with others: case and runs of white space ignored."""
    return " ".join(text.casefold().split())


@lru_cache(maxsize=64)
def _embed(texts: tuple[str, ...]) -> np.ndarray:
    from .text import encode_texts

    return np.asarray(encode_texts(list(texts)), np.float64)


def nearest_concepts(
    prompts: Sequence[str],
    concepts: Mapping[str, Sequence[str]],
    negatives: Sequence[str] = (),
) -> list[Match]:
    """For each prompt, the nearest known concept and whether it is close enough.

    Parameters
    ----------
    prompts : sequence of str
    concepts : mapping of str to sequence of str
        Each concept and the phrasings it was trained with (at least one each).
    negatives : sequence of str
        Phrasings the model was trained to answer with empty masks.

    Raises
    ------
    ValueError
        If ``concepts`` is empty or a concept has no phrasing.
    """
    if not concepts or any(len(v) == 0 for v in concepts.values()):
        raise ValueError("every concept needs at least one phrasing")
    if not prompts:
        return []
    names = list(concepts)
    phrasings = tuple(dict.fromkeys(p for v in concepts.values() for p in v))
    table = dict(zip(phrasings, _embed(phrasings), strict=True))
    centroids = np.stack([np.mean([table[p] for p in concepts[c]], axis=0) for c in names])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sims = _embed(tuple(prompts)) @ centroids.T
    trained = {prompt_key(p): c for c, v in concepts.items() for p in v}
    trained_negative = {prompt_key(n) for n in negatives}
    out = []
    for prompt, row in zip(prompts, sims, strict=True):
        key = prompt_key(prompt)
        concept = trained.get(key) or names[int(np.argmax(row))]
        similarity = float(row[names.index(concept)])
        if key in trained_negative:
            out.append(Match(prompt, concept, similarity, False, "trained negative"))
        elif key in trained:
            out.append(Match(prompt, concept, similarity, True, "trained phrasing"))
        else:
            out.append(Match(prompt, concept, similarity, similarity >= THRESHOLD))
    return out


def prompt_warnings(model: Any, prompts: Sequence[str]) -> list[str]:
    """One message per prompt far from everything ``model`` knows; none for a model with an
    open vocabulary (or a plain callable)."""
    vocabulary = getattr(model, "concept_phrasings", lambda: None)()
    if not vocabulary:
        return []
    concepts, negatives = vocabulary
    name = getattr(model, "name", "the model")
    known = ", ".join(sorted(concepts))
    messages = []
    for m in nearest_concepts(prompts, concepts, negatives):
        if m.known:
            continue
        why = (
            "it was trained to find nothing for it"
            if m.reason == "trained negative"
            else f"the nearest is '{m.concept}', text similarity {m.similarity:.2f} (known "
            f"from {THRESHOLD})"
        )
        messages.append(
            f"'{m.prompt}' is far from what {name} knows ({known}): {why}; expect an empty or "
            f"a wrong mask. Teach it the concept (the widget's Teach, napari-llmseg train), "
            f"or use a foundation model (--model clipseg or sam3)"
        )
    return messages
