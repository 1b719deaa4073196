"""Evaluate llmseg-tiny on held-out data against classical baselines; print JSON.

    python scripts/evaluate_llmseg_tiny.py [--model FOLDER] [--config configs/llmseg-tiny.json]

For every dataset in the config, the held-out region (never seen in training: whole slabs of
the image, separated from the training slab by a gap) is segmented through the public
``segment()`` API, exactly as a user would, and compared with its reference mask:

* Dice for the canonical prompt and for phrasings that training never saw;
* Dice of the simplest classical baseline on the same data (Otsu's threshold);
* percentage of pixels labelled for prompts naming absent things (held-out negatives);
* speed of the model in 256 x 256 windows per second on this machine.
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

sys.path.insert(0, str(Path(__file__).parent))
from llmseg_data import load, region

from napari_llmseg import get_model, segment

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return float(2 * (a & b).sum() / denom) if denom else 1.0


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
    for ds in cfg["datasets"]:
        image, masks = load(ds["name"])
        held = np.ascontiguousarray(region(image, ds["heldout"]))
        truth = region(masks[ds["concept"]], ds["heldout"])
        concept = cfg["concepts"][ds["concept"]]
        canonical = concept["train"][0]
        phrasings = [canonical, *concept["heldout"]]
        res = segment(held, phrasings, model=model, threshold=0.5)
        prob = np.asarray(res.probabilities)
        entry = {
            "heldout_region": ds["heldout"],
            "shape": list(held.shape),
            "foreground_fraction": float(truth.mean()),
            "dice": {p: dice(prob[i] > 0.5, truth) for i, p in enumerate(phrasings)},
            "otsu_dice": dice(held > threshold_otsu(held), truth),
        }
        unseen = entry["dice"]
        entry["dice_unseen_phrasings_mean"] = float(
            np.mean([unseen[p] for p in concept["heldout"]])
        )
        neg = segment(held, cfg["negatives"]["heldout"], model=model)
        nprob = np.asarray(neg.probabilities)
        entry["absent_prompts_percent_labelled"] = {
            p: float(100 * (nprob[i] > 0.5).mean())
            for i, p in enumerate(cfg["negatives"]["heldout"])
        }
        report["datasets"][ds["name"]] = entry
    # speed: windows per second on the bundled volume, 256 x 256 windows, one prompt
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
