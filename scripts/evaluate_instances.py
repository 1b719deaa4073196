"""Object counts on the bundled nuclei volume against its reference instance labels; JSON.

    python scripts/evaluate_instances.py

Runs segment(..., instances=True) with the embedded model (plain connected components, and
with --split), and reports for each: the object count, the reference count, how many
reference nuclei are matched by an object with IoU > 0.5, and the relative count error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from napari_llmseg import get_model, segment

ROOT = Path(__file__).resolve().parents[1]


def matches(pred: np.ndarray, ref: np.ndarray) -> int:
    """Reference objects matched one-to-one by a predicted object with IoU > 0.5."""
    found = 0
    for r in np.unique(ref)[1:]:
        rm = ref == r
        ids, counts = np.unique(pred[rm], return_counts=True)
        best, inter = 0, 0
        for i, c in zip(ids, counts, strict=True):
            if i and c > inter:
                best, inter = i, c
        if best and inter / np.logical_or(rm, pred == best).sum() > 0.5:
            found += 1
    return found


def main() -> None:
    vol = tifffile.imread(ROOT / "sample_data" / "nuclei.tif")
    ref = tifffile.imread(ROOT / "sample_data" / "nuclei_labels.tif")
    model = get_model()
    n_ref = int(len(np.unique(ref)) - 1)
    report = {"reference_objects": n_ref, "runs": {}}
    for name, kw in {
        "components": {},
        "split": {"split": True},
        "split, min_size=1000": {"split": True, "min_size": 1000},
    }.items():
        res = segment(vol, "nuclei", model=model, instances=True, **kw)
        n = int(res.instances.max())
        report["runs"][name] = {
            "objects": n,
            "matched_reference_iou_0.5": matches(res.instances, ref),
            "count_error_percent": round(100 * (n - n_ref) / n_ref, 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
