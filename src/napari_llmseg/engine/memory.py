"""How much memory a run needs, checked against what the machine has before it starts.

The engine holds two things whose size the user chooses: a batch of windows (raw input and
logits, ``batch * (channels + outputs) * prod(roi) * 4`` bytes) and the blending accumulators
of the output chunks, open (:meth:`WindowPlan.open_voxels`) or waiting to be written. A 3D
window of 256 voxels a side is 64 MiB per channel, so a batch of them can ask for more than
the machine has; that is refused before any window is read or any output written, with the
numbers. As in MONAI, an image smaller than the window is padded up to it, so a huge
``roi_size`` costs its memory however small the image.
"""

from __future__ import annotations

import math
from pathlib import Path

from .stream import chunk_bytes, write_queue_length
from .windows import WindowPlan


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Room left under a cgroup v2 memory limit (containers, batch schedulers), if any.

    The cgroup's usage counts the page cache too; its inactive part is given back on demand,
    so it counts as available (as Kubernetes' working set does).
    """
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    cache = 0
    try:
        for line in (root / "memory.stat").read_text().splitlines():
            if line.startswith("inactive_file "):
                cache = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return max(int(limit) - used + cache, 0)


def available_memory() -> int | None:
    """Bytes of memory this process can still use, or None when the system does not say.

    Linux's ``MemAvailable`` (what can be allocated without swapping), lowered to the room
    left under a cgroup limit; elsewhere ``psutil`` when installed, else the free physical
    pages.
    """
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if found:
        return min(found)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:  # free physical pages (other Unixes)
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    """``n`` bytes in the largest binary unit below it (a window of 10^9 pixels a side asks
    for exbibytes)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} EiB"


def run_memory(
    plan: WindowPlan,
    *,
    n_channels: int,
    n_outputs: int,
    batch_size: int,
    group: int = 1,
    model_outputs: int | None = None,
) -> tuple[int, int]:
    """Bytes the engine needs -> (one batch of windows, the output chunks it holds).

    A batch is ``batch_size * (n_channels + n_outputs) * prod(roi) * 4`` bytes (float32 raw
    windows and logits; ``model_outputs`` instead of ``n_outputs`` for a model with named
    classes, which returns one channel per class). Each voxel of an open output chunk holds
    ``n_outputs + 1`` float32 sums and a flag; finished chunks waiting for the writer thread
    hold as much.
    """
    per_window = n_outputs if model_outputs is None else max(model_outputs, n_outputs)
    window = batch_size * (n_channels + per_window) * math.prod(plan.roi) * 4
    per_voxel = (n_outputs + 1) * 4 + 1
    held = plan.open_voxels(group) * per_voxel
    held += write_queue_length(plan, n_outputs) * chunk_bytes(plan, n_outputs)
    return window, min(held, math.prod(plan.shape) * per_voxel)  # never more than all chunks


def check_memory(
    plan: WindowPlan,
    *,
    n_channels: int,
    n_outputs: int,
    batch_size: int,
    group: int = 1,
    available: int | None = None,
    model_outputs: int | None = None,
) -> None:
    """Refuse a run whose windows and open chunks need more memory than is available.

    Parameters
    ----------
    plan : WindowPlan
        The run's windows and output chunks.
    n_channels, n_outputs : int
        Input channels and model outputs (prompts).
    model_outputs : int, optional
        Channels the model returns per window, when more than ``n_outputs`` (classes).
    batch_size : int
        Windows per model call.
    group : int
        Planes blended together (``engine.stream.plane_group``).
    available : int, optional
        Bytes available; :func:`available_memory` when not given (no check if unknown).

    Raises
    ------
    ValueError
        One line with both figures and what to lower.
    """
    available = available_memory() if available is None else available
    if available is None:
        return
    window, chunks = run_memory(
        plan, n_channels=n_channels, n_outputs=n_outputs, batch_size=batch_size, group=group,
        model_outputs=model_outputs,
    )  # fmt: skip
    per_window = n_outputs if model_outputs is None else max(model_outputs, n_outputs)
    if window + chunks <= available:
        return
    roi = " x ".join(str(r) for r in plan.roi)
    raise ValueError(
        f"not enough memory for these windows: a batch of {batch_size} windows of {roi} with "
        f"{n_channels} input channel(s) and {per_window} output(s) needs {batch_size} x "
        f"({n_channels} + {per_window}) x {math.prod(plan.roi):,} x 4 bytes = {_size(window)}, "
        f"and the open output chunks about {_size(chunks)}, but {_size(available)} is "
        "available; lower roi_size, batch_size or chunks"
    )
