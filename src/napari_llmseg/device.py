"""Choosing the torch device a model runs on (torch is imported on first use)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a torch device.

    ``"auto"`` (or None) picks CUDA, then Apple's MPS, then the CPU. Asking for a device that
    this machine does not have raises a ValueError that says what is available.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    device = "auto" if device is None else str(device).strip().lower()
    if not _DEVICE_RE.match(device):
        raise ValueError(
            f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was requested but CUDA is not available on this machine "
                f"(available: {', '.join(available_devices())})"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} was requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"device 'mps' was requested but Apple MPS is not available on this machine "
            f"(available: {', '.join(available_devices())})"
        )
    return torch.device(device)


def available_devices() -> list[str]:
    """Devices this machine offers, best first."""
    import torch

    out = []
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return [*out, "cpu"]
