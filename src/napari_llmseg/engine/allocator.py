"""Keep glibc's malloc from handing the model's large buffers back to the kernel while a run lasts.

Every forward pass of a segmentation model allocates and frees tens of megabytes of
activations and convolution buffers. With glibc's defaults on Linux, blocks above 32 MiB (the
ceiling of its adaptive mmap threshold) are fresh mmaps, and free memory at the top of the heap
is trimmed, so the next batch faults the same pages in again and the kernel zeroes them: for
llmseg-tiny (batch 4, 256 px windows, one torch thread) about 3,600 page faults per window.
Raising the mmap and trim thresholds for the duration of a run keeps those pages in the
process: next to no faults, and 13.4 instead of 21.3 ms per window
(``python benchmarks/tiny_inference.py``, figures in docs/benchmarks.md). Dask's nanny makes it
worse by exporting MALLOC_TRIM_THRESHOLD_=65536 to its workers; this overrides that too while a
task runs. (Thread arenas are another matter: see ``distributed.ARENAS``.)

This is our own code rather than a library's because no allocator setting of torch or numpy
covers it; it is a no-op on anything but glibc. Settings are process-wide, so they are
reference-counted across concurrent runs and restored when the last run ends, after which
``malloc_trim`` returns the freed memory to the system (nothing stays resident after a run).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
Y = TypeVar("Y")
S = TypeVar("S")
R = TypeVar("R")

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: While a run lasts: blocks up to this size come from the heap, not from fresh mmaps ...
RUN_MMAP_THRESHOLD = 256 * 1024**2
#: ... and up to this much free memory at the top of the heap is kept for the next batch.
RUN_TRIM_THRESHOLD = 512 * 1024**2

#: Restored after a run unless the environment set others: where glibc's adaptive thresholds
#: settle once large blocks have been freed (the mmap threshold at its ceiling,
#: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, and the trim threshold at twice that). Setting them
#: switches adaptation off for good, so this is the state a process that ran a model would be
#: in anyway.
_DEFAULT_MMAP_THRESHOLD = 32 * 1024**2
_DEFAULT_TRIM_THRESHOLD = 2 * _DEFAULT_MMAP_THRESHOLD

_lock = threading.Lock()
_active = 0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # absent in musl
    except (OSError, AttributeError):
        return None
    gnu_get_libc_version.restype = ctypes.c_char_p
    return libc


_LIBC = _glibc()


def _from_env(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def _set(trim: int, mmap: int) -> None:
    assert _LIBC is not None
    _LIBC.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim))
    _LIBC.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap))


@contextmanager
def run_allocator() -> Iterator[None]:
    """Hold large freed blocks in the process for the duration of the ``with`` block.

    Nested and concurrent uses are counted; the process's settings come back when the last one
    ends (its environment's MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ if set, else
    glibc's defaults) and the freed memory is returned to the system.
    """
    global _active
    if _LIBC is None:
        yield
        return
    with _lock:
        if _active == 0:
            _set(RUN_TRIM_THRESHOLD, RUN_MMAP_THRESHOLD)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _set(
                    _from_env("MALLOC_TRIM_THRESHOLD_", _DEFAULT_TRIM_THRESHOLD),
                    _from_env("MALLOC_MMAP_THRESHOLD_", _DEFAULT_MMAP_THRESHOLD),
                )
                _LIBC.malloc_trim(ctypes.c_size_t(0))


def holds_run_allocator(
    gen: Callable[P, Generator[Y, S, R]],
) -> Callable[P, Generator[Y, S, R]]:
    """Decorate a generator function so that :func:`run_allocator` is held while it runs."""

    @functools.wraps(gen)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[Y, S, R]:
        with run_allocator():
            return (yield from gen(*args, **kwargs))

    return wrapper


def active_runs() -> int:
    """How many runs currently hold the run settings (for tests)."""
    return _active
