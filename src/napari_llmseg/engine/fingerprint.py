"""Fingerprints of a run's input and model, recorded in its store and checked on resume.

A resumed run must compute exactly what the interrupted one would have: same pixels in, same
model. The store records

* the input's path, shape, dtype and a SHA-256 of a fixed sample of its blocks (the same
  deterministic blocks whatever the machine: for inputs up to 16 M values, all of it);
* the model's description and a SHA-256 of its weight files and config (files over 256 MiB
  are hashed by size, modification time and 16 evenly spaced 1 MiB blocks, which any
  rewrite of the weights changes), of a torch module's parameters, or of a function's code.

Every chunk also gets a CRC-32 of its decoded contents, written with its done-marker
(:mod:`.store`), so that a resumed run trusts no chunk that was deleted or damaged.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..io.source import ImageSource

#: Files up to this size are hashed whole.
FULL_HASH_LIMIT = 256 * 1024**2
#: Inputs up to this many values are hashed whole.
EXACT_VALUES = 1 << 24


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or for a large file of its size, mtime and 16 spread 1 MiB blocks."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f"{size}:{path.stat().st_mtime_ns}".encode())
            for k in range(16):
                f.seek(int(k * (size - (1 << 20)) / 15))
                h.update(f.read(1 << 20))
    return h.hexdigest()


def input_fingerprint(source: ImageSource) -> dict[str, Any]:
    """Path, shape, dtype and a content hash of a fixed sample of ``source``."""
    from .normalize import _sample_blocks

    shape = source.spatial_shape
    h = hashlib.sha256()
    if math.prod(shape) * source.n_channels <= EXACT_VALUES:
        lead = shape[0] if len(shape) == 3 else 1
        regions: list[tuple[slice, ...]] = [
            ((slice(z, z + 1),) if len(shape) == 3 else ()) + (slice(None),) * 2
            for z in range(lead)
        ]
    else:
        regions = _sample_blocks(source, 12)
    for region in regions:
        h.update(np.ascontiguousarray(source.read(region)).tobytes())
    paths = [str(p.resolve()) for p in source.paths]
    return {
        "path": paths[0] if len(paths) == 1 else (paths or None),
        "shape": list(shape),
        "dtype": str(source.dtype),
        "channels": source.n_channels,
        "sample_sha256": h.hexdigest(),
    }


def model_fingerprint(model: Any) -> dict[str, Any]:
    """A hash of what determines a model's output: weight files and config for a backend,
    parameters and buffers for a torch module, code for a plain function."""
    h = hashlib.sha256()
    files = list(getattr(model, "weight_files", lambda: [])())
    if files:
        for f in sorted(files):
            h.update(f.name.encode())
            h.update(file_digest(f).encode())
        kind = "files"
    elif hasattr(model, "state_dict"):
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        kind = "state_dict"
    elif hasattr(model, "encode_prompts"):  # a backend without files (built in memory)
        net = getattr(model, "net", getattr(model, "model", None))
        if net is not None and hasattr(net, "state_dict"):
            return {**model_fingerprint(net), "kind": "backend state_dict"}
        h.update(json.dumps(model.describe(), sort_keys=True, default=str).encode())
        kind = "description"
    else:
        call = type(model).__call__ if not hasattr(model, "__code__") else None
        code = getattr(model, "__code__", None) or getattr(call, "__code__", None)
        if code is not None:
            h.update(code.co_code)
            h.update(repr(code.co_consts).encode())
        h.update(getattr(model, "__qualname__", type(model).__qualname__).encode())
        kind = "code"
    return {"kind": kind, "sha256": h.hexdigest()}


def chunk_checksum(*arrays: np.ndarray) -> int:
    """CRC-32 of the bytes of ``arrays`` (a chunk's labels and probabilities), as uint32."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
    return crc & 0xFFFFFFFF


def describe_change(key: str, old: Any, new: Any) -> str:
    """One phrase naming what differs between a stored fingerprint and this run's."""
    if key == "input":
        for field in ("path", "shape", "dtype", "channels"):
            if old.get(field) != new.get(field):
                return (
                    f"the input's {field} was {old.get(field)!r}, this run's is {new.get(field)!r}"
                )
        return (
            f"the input's contents changed (content hash {str(old.get('sample_sha256'))[:12]} "
            f"then, {str(new.get('sample_sha256'))[:12]} now)"
        )
    return (
        f"the model's weights or code changed (hash {str(old.get('sha256'))[:12]} then, "
        f"{str(new.get('sha256'))[:12]} now)"
    )
