"""Evaluate llmseg-tiny on held-out data against classical baselines; print JSON.

    python scripts/evaluate_llmseg_tiny.py [--model FOLDER] [--config configs/llmseg-tiny.json]

For every dataset in the config, the held-out slab (never seen in training: whole planes or
whole rows of the image, separated from the training part by a gap) is segmented through the
public ``segment()`` API with default settings, exactly as a user would, and compared with its
reference masks:

* Dice for each concept's first training phrasing, and for phrasings training never saw;
* Dice of the simplest classical baseline on the same data (Otsu for nuclei and brain, a
  Hounsfield threshold for bone and soft tissue, NDWI/NDVI for water/vegetation). Where the
  reference itself is defined by that threshold (CT masks, NDWI, NDVI), the baseline is
  perfect by construction; the model sees only the RGB composite or the windowed CT;
* percentage of pixels labelled for prompts naming absent things (held-out negatives, and
  the concepts of other domains);
* speed in 256 x 256 windows per second on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.filters import threshold_otsu

from napari_llmseg import get_model, segment
from napari_llmseg.training.data import landsat_bands, load, region

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return round(float(2 * (a & b).sum() / denom), 4) if denom else 1.0


def baseline(name: str, concept: str, image: np.ndarray) -> tuple[str, np.ndarray]:
    """The classical baseline for a concept on a held-out image (raw values)."""
    if concept in ("nuclei", "brain"):
        return "Otsu threshold", image > threshold_otsu(image)
    if concept == "bone":
        return "HU >= 226 (the reference's own definition)", image >= 226
    if concept == "soft tissue":
        return "-142 <= HU < 226 (the reference's own definition)", (image >= -142) & (image < 226)
    bands = region(landsat_bands(), HELD[name], channels=True).astype(np.float32)
    b2, b3, b4 = bands[..., 1], bands[..., 2], bands[..., 3]
    if concept == "water":
        return "NDWI > 0.3 (uses near infrared; the reference's definition)", (
            b2 - b4
        ) / np.maximum(b2 + b4, 1e-6) > 0.3
    return "NDVI > 0.3 (uses near infrared; the reference's definition)", (b4 - b3) / np.maximum(
        b4 + b3, 1e-6
    ) > 0.3


HELD: dict[str, dict] = {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "llmseg-tiny.json")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded one)")
    args = parser.parse_args()
    cfg = json.loads(args.config.read_text())
    model = get_model(args.model, device="cpu")
    report: dict = {
        "model": model.describe(),
        "torch_threads": torch.get_num_threads(),
        "datasets": {},
    }
    all_concepts = list(cfg["concepts"])
    for ds in cfg["datasets"]:
        name, rgb = ds["name"], bool(ds.get("rgb", False))
        HELD[name] = ds["heldout"]
        image, masks = load(name)
        held = np.ascontiguousarray(region(image, ds["heldout"], channels=rgb))
        channel_axis = -1 if rgb else None
        entry: dict = {"heldout_region": ds["heldout"], "shape": list(held.shape), "concepts": {}}
        for concept, mask in masks.items():
            truth = region(mask, ds["heldout"])
            phrasings = [
                cfg["concepts"][concept]["train"][0],
                *cfg["concepts"][concept]["heldout"],
            ]
            res = segment(held, phrasings, model=model, channel_axis=channel_axis)
            prob = np.asarray(res.probabilities)
            what, base = baseline(name, concept, held)
            scores = {p: dice(prob[i] > 0.5, truth) for i, p in enumerate(phrasings)}
            entry["concepts"][concept] = {
                "foreground_fraction": round(float(truth.mean()), 4),
                "dice": scores[phrasings[0]],
                "dice_unseen_phrasings": {p: scores[p] for p in phrasings[1:]},
                "baseline": what,
                "baseline_dice": dice(base, truth),
            }
        absent = cfg["negatives"]["heldout"] + [
            c for c in ds.get("absent", []) if c in all_concepts
        ]
        neg = segment(held, absent, model=model, channel_axis=channel_axis)
        nprob = np.asarray(neg.probabilities)
        entry["absent_prompts_percent_labelled"] = {
            p: round(float(100 * (nprob[i] > 0.5).mean()), 3) for i, p in enumerate(absent)
        }
        report["datasets"][name] = entry
        print(f"{name} done", file=sys.stderr, flush=True)
    volume = load("nuclei-3d")[0]
    segment(volume[:4], "nuclei", model=model)  # warm-up
    t0 = time.perf_counter()
    res = segment(volume, "nuclei", model=model, roi_size=256, batch_size=4)
    seconds = time.perf_counter() - t0
    report["speed"] = {
        "windows": res.info.windows,
        "window": [256, 256],
        "seconds": round(seconds, 2),
        "windows_per_second": round(res.info.windows / seconds, 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
