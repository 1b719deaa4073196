"""engine.allocator: large freed buffers stay in the process while a run lasts (glibc only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_llmseg import segment
from napari_llmseg.engine import allocator
from napari_llmseg.engine.allocator import active_runs, run_allocator

glibc = pytest.mark.skipif(
    allocator._LIBC is None or not Path("/proc/self/statm").exists(), reason="glibc malloc only"
)


FAULTS = """
import json, resource, torch
from napari_llmseg import get_model
from napari_llmseg.engine.allocator import run_allocator

torch.set_num_threads(1)
model = get_model("llmseg-tiny")
x, enc = torch.rand(4, 3, 256, 256), model.encode_prompts(["nuclei"])

def faults(n=4):
    model.predict(x, enc)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        model.predict(x, enc)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1024**2

outside = faults()
start = rss_mb()
with run_allocator():
    inside = faults()
    held = rss_mb()
print(json.dumps([outside, inside, start, held, rss_mb()]))
"""


@glibc
def test_run_keeps_the_models_buffers_and_gives_them_back_after():
    """Page faults of llmseg-tiny's forward passes, in a fresh process (malloc's state depends
    on the process's history)."""
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], check=True, capture_output=True, text=True
    ).stdout
    outside, inside, start, held, after = json.loads(out.strip().splitlines()[-1])
    windows = 16
    # with glibc's defaults every batch's large buffers are fresh mmaps, faulted in again
    assert outside / windows > 1000, outside
    # inside a run they stay in the process: a hundred times fewer faults ...
    assert inside * 20 < outside, (inside, outside)
    # ... because the process holds on to them (measured: about 70 MB) ...
    assert held - start > 30, (start, held)
    # ... until the run ends, when they go back to the system
    assert after < start + 5, (start, held, after)


def test_nested_and_concurrent_runs_are_counted():
    assert active_runs() == 0
    with run_allocator():
        assert active_runs() == 1
        with run_allocator():
            assert active_runs() == 2
        assert active_runs() == 1
    assert active_runs() == 0


def test_engine_runs_hold_the_settings_only_while_running(rng):
    seen = []
    res = segment(
        rng.normal(size=(96, 96)).astype(np.float32),
        "x",
        model=lambda w, p: (seen.append(active_runs()), np.zeros((len(w), 1, *w.shape[2:])))[1],
        roi_size=64,
    )
    assert res.labels.shape == (96, 96) and seen and all(n == 1 for n in seen)
    assert active_runs() == 0
