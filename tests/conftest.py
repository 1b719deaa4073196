from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "nuclei.tif"
SAMPLE_LABELS = ROOT / "sample_data" / "nuclei_labels.tif"


def smooth_model(x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """A deterministic, nonlinear, translation-equivariant stand-in for a model.

    One output per prompt: a 5x5 box blur of the first channel (3x3x3 for 3D windows),
    shifted and scaled differently per prompt, plus a nonlinearity, so that blending
    mistakes show.
    """
    if x.ndim == 5:
        k = torch.ones(1, 1, 3, 3, 3, dtype=x.dtype) / 27
        a = torch.nn.functional.conv3d(x[:, :1], k, padding=1)
    else:
        k = torch.ones(1, 1, 5, 5, dtype=x.dtype) / 25
        a = torch.nn.functional.conv2d(x[:, :1], k, padding=2)
    outs = [
        torch.tanh(a * (i + 1)) * 4 - 0.5 * i + torch.sin(x[:, :1] * 3)
        for i in range(len(prompts))
    ]
    return torch.cat(outs, 1)


def paced_model(x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """smooth_model, slowed down by LLMSEG_TEST_PACE seconds per batch (for kill tests)."""
    import os
    import time

    time.sleep(float(os.environ.get("LLMSEG_TEST_PACE", "0")))
    return smooth_model(x, prompts)


def threshold_model(x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Logit = 10 * (x - 0.5) on the first channel for every prompt (a 'bright things' model)."""
    return (x[:, :1] - 0.5).repeat(1, len(prompts), 1, 1) * 10


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def sample_volume() -> np.ndarray:
    import tifffile

    return tifffile.imread(SAMPLE)


@pytest.fixture(scope="session")
def sample_labels() -> np.ndarray:
    import tifffile

    return tifffile.imread(SAMPLE_LABELS)


def write_zarr(path: Path, array: np.ndarray, chunks: tuple[int, ...]):
    import zarr

    z = zarr.create_array(path, shape=array.shape, chunks=chunks, dtype=array.dtype)
    z[...] = array
    return z


def result_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a result store (all pyramid levels of labels, probabilities and
    instances), by path, read whole; the resume bookkeeping left out."""
    import zarr

    group = zarr.open_group(path, mode="r")
    return {name: np.asarray(array[...]) for name, array in group.arrays()} | {
        f"labels/{label}/{name}": np.asarray(array[...])
        for label, sub in group["labels"].groups()
        for name, array in sub.arrays()
    }
