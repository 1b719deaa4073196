"""Writing final files safely: to a temporary name in the same folder, renamed when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it to ``final`` if the block succeeds.

    A reader never sees a half-written ``final``: until the rename it does not exist (or is
    the previous file), and on any error the temporary file is removed.

    Raises
    ------
    FileExistsError
        If ``final`` exists and ``overwrite`` is False, or ``final`` is a folder.
    """
    final = Path(final)
    check_file_target(final, overwrite=overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the real suffix so that format drivers recognise it.
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".gz") else final.suffix
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()  # some writers (GDAL drivers) refuse to write over an existing file
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_file_target(final: Path, *, overwrite: bool) -> None:
    """Refuse to replace a folder, or an existing file without ``overwrite``."""
    if final.is_dir():
        raise FileExistsError(f"output '{final}' is a folder; expected a file name")
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"output '{final}' already exists; pass overwrite=True (--overwrite) to replace it"
        )


def remove_stale_temporaries(final: str | Path) -> list[Path]:
    """Delete temporary files :func:`atomic_path` left next to ``final`` (a run killed while
    writing it); returns them. Call only while holding the output's lock, so that no live
    writer owns them."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".gz") else final.suffix
    stale = [
        p
        for p in final.parent.glob(f".{final.name}.*")
        if p.name.endswith(suffix) and p.is_file() and p != final
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
