"""Tiny foundation models, built once per test session and saved like the real ones."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from napari_llmseg.engine.normalize import IntensityStats

from .tiny_models import build_clipseg, build_grounded_sam, build_sam3


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one torch thread, then restore the thread count.

    Their operations take microseconds: extra intra-op threads only add synchronisation, which
    becomes very slow when the machine's cores are busy with other work.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def clipseg_dir(tmp_path_factory) -> Path:
    return build_clipseg(tmp_path_factory.mktemp("models") / "clipseg")


@pytest.fixture(scope="session")
def sam3_dir(tmp_path_factory) -> Path:
    return build_sam3(tmp_path_factory.mktemp("models") / "sam3")


@pytest.fixture(scope="session")
def grounded_dir(tmp_path_factory) -> Path:
    return build_grounded_sam(tmp_path_factory.mktemp("models") / "grounded-sam")


@pytest.fixture(scope="session")
def nuclei_plane(sample_volume) -> np.ndarray:
    """A real (160, 150) uint16 fluorescence plane."""
    return np.ascontiguousarray(sample_volume[30, :160, :150])


@pytest.fixture
def stats() -> IntensityStats:
    return IntensityStats(low=(100.0,), high=(1100.0,))


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache for this test (whatever the machine's cache holds)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def put_in_cache(
    cache: Path, model_id: str, commit: str = "0" * 40, *, folder: Path, ref: str = "main"
) -> Path:
    """Lay ``folder`` out in ``cache`` as the Hub client stores a snapshot of ``ref``."""
    repo = cache / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


class CallCounter:
    """Wraps a module's ``forward`` and records the batch size of every call."""

    def __init__(self, monkeypatch, module, batch_of: Callable | None = None) -> None:
        self.sizes: list[int] = []
        original = module.forward
        batch_of = batch_of or (lambda args, kwargs: next(iter([*args, *kwargs.values()])))

        def forward(*args, **kwargs):
            self.sizes.append(int(batch_of(args, kwargs).shape[0]))
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "forward", forward)

    @property
    def calls(self) -> int:
        return len(self.sizes)

    @property
    def rows(self) -> int:
        return sum(self.sizes)
