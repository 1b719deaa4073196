"""Model folders this package writes, and what ``overwrite`` may replace in them.

Every model folder written by ``napari-llmseg train``, :func:`~.finetune.finetune` or
:func:`napari_llmseg.teach` ends with a marker, :data:`MARKER` (JSON: what wrote it and the
files it wrote). ``overwrite`` may replace a folder only when the marker says this package
wrote it, and then deletes exactly the files listed there: a folder holding anything else (the
user's images, notes, another program's files) is refused, and so is a folder that holds the
run's own inputs. Folders written before the marker existed are recognised by their files
(an llmseg-tiny config.json and weights, nothing else).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARKER = ".napari-llmseg-model.json"
#: What an llmseg-tiny folder written before the marker existed holds.
_LEGACY = {"config.json", "model.safetensors", "llmseg_finetune.json"}


def _written_files(out: Path) -> set[str] | None:
    """Files this package wrote into ``out``, or None if it did not write the folder."""
    marker = out / MARKER
    if marker.is_file():
        try:
            record = json.loads(marker.read_text())
            return {str(f) for f in record["files"]} | {MARKER}
        except (ValueError, KeyError, TypeError, OSError):
            return None
    names = {p.name for p in out.iterdir()}
    if names <= _LEGACY and {"config.json", "model.safetensors"} <= names:
        try:
            config = json.loads((out / "config.json").read_text())
        except (ValueError, OSError):
            return None
        if config.get("model_type") == "llmseg-tiny":
            return names
    return None


def check_output_folder(out: Path, overwrite: bool, inputs: Sequence[Any] = ()) -> None:
    """Refuse a model output folder that would overwrite the user's data: it must be new or
    empty, or, with ``overwrite``, a model folder this package wrote and nothing else; never
    a folder that is, holds or lies inside one of ``inputs`` (paths)."""
    out = Path(out)
    for item in inputs:
        if isinstance(item, (str, Path)) and Path(item).exists():
            a, b = out.resolve(), Path(item).resolve()
            if a == b or a in b.parents or b in a.parents:
                raise ValueError(
                    f"output folder '{out}' overlaps the input '{item}'; the inputs are never "
                    "written to, choose another folder"
                )
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"output '{out}' exists and is a file, not a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"output folder '{out}' already exists and is not empty; choose another folder or "
            "pass overwrite=True (--overwrite)"
        )
    ours = _written_files(out)
    if ours is None:
        raise FileExistsError(
            f"refusing to overwrite '{out}': it is not a model folder written by napari-llmseg "
            f"(no {MARKER}), and replacing it could lose data"
        )
    extra = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if extra:
        raise FileExistsError(
            f"refusing to overwrite '{out}': besides the model it holds "
            f"{', '.join(repr(e) for e in extra[:5])}{' ...' if len(extra) > 5 else ''}, which "
            "napari-llmseg did not write; move them out first"
        )


def clear_model_folder(out: Path) -> None:
    """Delete what this package wrote in ``out`` (after :func:`check_output_folder`)."""
    if not out.is_dir():
        return
    for name in _written_files(out) or set():
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink()


def mark_model_folder(out: Path, kind: str, extra: dict | None = None) -> None:
    """Write the marker listing every file now in ``out`` (call last, after saving)."""
    from .. import __version__

    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MARKER)
    record = {
        "written_by": "napari-llmseg",
        "version": __version__,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": files,
        **(extra or {}),
    }
    (out / MARKER).write_text(json.dumps(record, indent=2))
