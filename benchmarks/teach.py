"""Teach against ilastik's way and against fine-tuning, side by side; prints one JSON object.

    python benchmarks/teach.py                    # teach and the random forest (~3 min)
    python benchmarks/teach.py --with-finetune    # plus napari-llmseg train --method finetune

Three volumes the shipped model never saw these concepts on, three planes painted in each:

- mri: the cerebellum on a T1 MRI (mricron's ch2, planes 30, 40, 50);
- ct: the intracranial space of the head CT (planes 3, 8, 13 of the slab where the skull ring
  closes; the reference is the space the skull encloses, per plane);
- microscopy: nuclei in the 3D nuclei volume (planes 26, 33, 40).

Two ways of painting: "full" (every pixel of the three planes: 1 inside, 2 outside) and
"strokes" (an eroded part of the true mask as 1, a ring outside it as 2, as a user paints).

Methods, each timed from the painted planes to a mask of the whole volume:

- teach: ``napari_llmseg.teach`` then ``segment`` with the taught model (the engine's windows);
- rf / rf_lcc: ilastik's way: a random forest (100 trees, 2 jobs) over a filter bank
  (intensity; gaussian, gradient magnitude, Laplacian of gaussian, Hessian eigenvalues at
  sigma 1, 2, 4) on each plane, then (rf_lcc) only the largest 3D connected component;
- finetune: ``finetune`` (the decoder and text conditioning of llmseg-tiny, 30 epochs with
  early stopping) then ``segment``.

Dice is over every unpainted plane ("dice_all_other", false positives on planes without the
structure count) and over the unpainted planes that hold the structure ("dice").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

SIGMAS = (1.0, 2.0, 4.0)


@dataclass
class Case:
    name: str
    image: np.ndarray  # (Z, Y, X)
    truth: np.ndarray  # (Z, Y, X) bool
    painted: list[int]
    prompt: str
    ring: tuple[int, int]  # strokes: 2 = dilate(truth, k) - dilate(truth, j)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    return lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)


def _intracranial(bone: np.ndarray, head_tissue: np.ndarray) -> np.ndarray:
    """Per plane, the largest region the skull encloses (a gap in thin bone closed with a
    disk of radius 10 first)."""
    from skimage.morphology import disk

    ref = np.zeros_like(bone)
    for z in range(bone.shape[0]):
        head = ndi.binary_fill_holes(_largest(head_tissue[z]))
        b = bone[z] & head
        inside = ndi.binary_fill_holes(b) & ~b
        if inside.sum() <= 20:
            r = 10
            closed = ndi.binary_closing(np.pad(b, r + 2), disk(r))[r + 2 : -r - 2, r + 2 : -r - 2]
            closed |= b
            inside = ndi.binary_fill_holes(closed) & ~closed
        if inside.sum() > 20:
            ref[z] = _largest(inside)
    return ref


def load_cases() -> list[Case]:
    from napari_llmseg.training.data import cranium, load

    t1, masks = load("t1-mri-cerebellum")
    cases = [Case("mri", t1, masks["cerebellum"].astype(bool), [30, 40, 50], "cerebellum",
                  (3, 8))]  # fmt: skip
    ct, _, bone, tissue = cranium()
    z0 = 82  # the skull ring closes from plane 82 on
    cases.append(Case("ct", np.ascontiguousarray(ct[z0:]), _intracranial(bone, tissue)[z0:],
                      [3, 8, 13], "intracranial space", (3, 8)))  # fmt: skip
    img, masks = load("nuclei-3d")
    cases.append(Case("microscopy", np.ascontiguousarray(img[:, :, 176:]),
                      np.ascontiguousarray(masks["nuclei"][:, :, 176:]).astype(bool),
                      [26, 33, 40], "cell nuclei", (2, 5)))  # fmt: skip
    return cases


def corrections(case: Case, mode: str) -> np.ndarray:
    from skimage.morphology import disk

    out = np.zeros(case.truth.shape, np.uint8)
    for z in case.painted:
        t = case.truth[z]
        if mode == "full":
            out[z] = np.where(t, 1, 2)
            continue
        j, k = case.ring
        out[z][ndi.binary_dilation(t, disk(k)) & ~ndi.binary_dilation(t, disk(j))] = 2
        out[z][ndi.binary_erosion(t, disk(3))] = 1
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return round(float(2 * (a & b).sum() / max(1, a.sum() + b.sum())), 4)


def scores(case: Case, pred: np.ndarray) -> dict:
    other = [z for z in range(case.truth.shape[0]) if z not in case.painted]
    exists = [z for z in other if case.truth[z].any()]
    return {"dice_all_other": dice(pred[other], case.truth[other]),
            "dice": dice(pred[exists], case.truth[exists])}  # fmt: skip


def filter_bank(plane: np.ndarray) -> np.ndarray:
    out = [plane]
    for s in SIGMAS:
        hyy = ndi.gaussian_filter(plane, s, order=(2, 0))
        hxx = ndi.gaussian_filter(plane, s, order=(0, 2))
        hxy = ndi.gaussian_filter(plane, s, order=(1, 1))
        half, spread = (hxx + hyy) / 2, np.sqrt(((hxx - hyy) / 2) ** 2 + hxy**2)
        out += [ndi.gaussian_filter(plane, s), ndi.gaussian_gradient_magnitude(plane, s),
                ndi.gaussian_laplace(plane, s), half + spread, half - spread]  # fmt: skip
    return np.stack(out)


def run_rf(case: Case, painted: np.ndarray) -> tuple[np.ndarray, float, float]:
    """ilastik's pixel classification -> (mask, mask of the largest component, seconds)."""
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    vol = case.image.astype(np.float32)
    lo, hi = np.percentile(vol, (1, 99.8))
    vol = (vol - lo) / max(hi - lo, 1e-6)
    xs, ys = [], []
    for z in case.painted:
        f, m = filter_bank(vol[z]), painted[z] > 0
        xs.append(f[:, m].T)
        ys.append(painted[z][m])
    rf = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0)
    rf.fit(np.concatenate(xs), np.concatenate(ys))
    concept = list(rf.classes_).index(1)
    pred = np.zeros(vol.shape, bool)
    for z in range(vol.shape[0]):
        f = filter_bank(vol[z])
        pred[z] = (rf.predict_proba(f.reshape(len(f), -1).T)[:, concept] > 0.5).reshape(
            vol.shape[1:]
        )
    t_rf = time.perf_counter() - t0
    largest = _largest(pred)
    return pred, largest, t_rf, time.perf_counter() - t0


def run_teach(case: Case, painted: np.ndarray) -> tuple[np.ndarray, float, float]:
    from napari_llmseg import segment, teach

    t0 = time.perf_counter()
    model = teach(case.image, painted, case.prompt)
    t_teach = time.perf_counter() - t0
    labels = segment(case.image, case.prompt, model=model).labels
    return labels > 0, t_teach, time.perf_counter() - t0


def run_finetune(case: Case, mode: str) -> tuple[np.ndarray, float] | None:
    """Fine-tuning takes labels (1 = concept, 0 = background) on whole planes, so only the
    "full" painting applies."""
    from napari_llmseg import segment
    from napari_llmseg.training.finetune import finetune

    if mode != "full":
        return None
    labels = np.zeros(case.truth.shape, np.uint8)
    labels[case.painted] = case.truth[case.painted]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        finetune(case.image, labels, case.prompt, out=f"{tmp}/m", epochs=30)
        pred = segment(case.image, case.prompt, model=f"{tmp}/m").labels > 0
    return pred, time.perf_counter() - t0


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-finetune", action="store_true")
    parser.add_argument("--cases", default="mri,ct,microscopy")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for case in load_cases():
        if case.name not in args.cases.split(","):
            continue
        for mode in ("full", "strokes"):
            painted = corrections(case, mode)
            rf, rf_lcc, t_rf, t_rf_lcc = run_rf(case, painted)
            taught, t_teach, t_total = run_teach(case, painted)
            row = {
                "case": case.name, "painting": mode, "prompt": case.prompt,
                "painted_planes": case.painted,
                "teach": {**scores(case, taught), "teach_s": round(t_teach, 1),
                          "seconds": round(t_total, 1)},
                "rf": {**scores(case, rf), "seconds": round(t_rf, 1)},
                "rf_lcc": {**scores(case, rf_lcc), "seconds": round(t_rf_lcc, 1)},
            }  # fmt: skip
            best_rf = max(row["rf"]["dice_all_other"], row["rf_lcc"]["dice_all_other"])
            row["teach_beats_rf"] = row["teach"]["dice_all_other"] > best_rf
            row["time_ratio_teach_rf"] = round(t_total / t_rf, 2)
            if args.with_finetune:
                ft = run_finetune(case, mode)
                if ft is not None:
                    row["finetune"] = {**scores(case, ft[0]), "seconds": round(ft[1], 1)}
            rows.append(row)
            print(json.dumps(row), flush=True, file=__import__("sys").stderr)
    print(json.dumps({"benchmark": "teach", "torch_threads": torch.get_num_threads(),
                      "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
