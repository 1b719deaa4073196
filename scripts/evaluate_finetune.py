"""Teach a model a concept it does not know from five painted slices; print JSON.

    python scripts/evaluate_finetune.py [--base llmseg-tiny] [--epochs 30]

The concept is the cerebellum in the ch2 T1 MRI (Debian mricron-data), whose reference mask
comes from the AAL atlas on the same grid (labels 91-116: cerebellar hemispheres and vermis).
Five axial planes (z = 24, 32, 40, 48, 56) are "painted" with the reference; the model is
fine-tuned on them through the public `finetune()` and then evaluated, through the public
`segment()`, on the other 40 planes from z = 18 to 62 (every one of them shows cerebellum).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_llmseg import segment
from napari_llmseg.training.data import load
from napari_llmseg.training.finetune import finetune

PAINTED = [24, 32, 40, 48, 56]
EVALUATED = [z for z in range(18, 63) if z not in PAINTED]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    return round(float(2 * (a & b).sum() / max(1, a.sum() + b.sum())), 4)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="llmseg-tiny")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    t1, masks = load("t1-mri-cerebellum")
    truth = masks["cerebellum"]
    labels = np.zeros(truth.shape, np.uint8)
    labels[PAINTED] = truth[PAINTED]
    before = segment(t1[EVALUATED], "cerebellum", model=args.base).labels
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = finetune(t1, labels, "cerebellum", base=args.base, out=Path(tmp) / "m",
                          epochs=args.epochs)  # fmt: skip
        seconds = time.perf_counter() - t0
        after = segment(t1[EVALUATED], "cerebellum", model=Path(tmp) / "m").labels
        brain = segment(t1[EVALUATED], "brain", model=Path(tmp) / "m").labels
        brain_base = segment(t1[EVALUATED], "brain", model=args.base).labels
    print(json.dumps({
        "base": args.base,
        "painted_planes": PAINTED,
        "evaluated_planes": [EVALUATED[0], EVALUATED[-1], len(EVALUATED)],
        "dice_before": dice(before, truth[EVALUATED]),
        "dice_after": dice(after, truth[EVALUATED]),
        "val_dice_before": result.val_dice_before,
        "val_dice": result.val_dice,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "brain_agreement_with_base": dice(brain, brain_base),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
